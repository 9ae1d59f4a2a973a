"""Bad configs given to `jaxcnn train` as a user types them: each ends in one line on stderr, exit
status 2, no traceback, and every file already there (a finished run's workdir included) unchanged.

One table, CASES (id, argv, a fragment of the error line), so it folds into a larger table of bad
inputs. Every command runs in a folder holding the config files of CONFIG_FILES and a finished
run's workdir `run/`, with `--workdir run` added; `{run}` in an argument is that workdir.
"""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import REPO

CONFIG_FILES = {
    "raises.py": "from jaxcnn.config import base_config\n\n\ndef get_config():\n    config = base_config()\n"
                 "    config.num_epochs = 1 // 0\n    return config.lock()\n",
    "bad_import.py": "import not_a_module_of_jaxcnn\n",
    "bad_syntax.py": '"""A config with a syntax error on line 3."""\n\ndef get_config(:\n',
    "bad_model.py": 'from jaxcnn.config import base_config\n\n\ndef get_config():\n    return base_config(model="nope")\n',
    "typo.py": "from jaxcnn.config import base_config\n\n\ndef get_config():\n    config = base_config().lock()\n"
               "    config.optimizer.learnig_rate = 0.1\n    return config\n",
    "no_get_config.py": "from jaxcnn.config import base_config\n",
    "returns_dict.py": "def get_config():\n    return {'num_epochs': 1}\n",
    "my_local.py": "from jaxcnn.config import base_config\n\n\ndef get_config():\n    return base_config().lock()\n",
    "settings.txt": "num_epochs = 1\n",
    "noext": "num_epochs = 1\n",
    "broken.json": "{not json",
    "list.json": "[1, 2]\n",
    "no_model.json": '{"dataset": {"name": "digits"}}\n',
    "unknown_key.json": '{"model": {"name": "cnn"}, "dataset": {"name": "digits"}, "optimizer": {"learnig_rate": 0.1}}\n',
    "nan.json": '{"model": {"name": "cnn"}, "dataset": {"name": "digits"}, "optimizer": {"learning_rate": NaN}}\n',
    "inf_in_tuple.json": '{"model": {"name": "cnn"}, "dataset": {"name": "digits", "mean": [0.5, Infinity]}}\n',
}

SYNTHETIC_4X4 = ["--config.dataset.name=synthetic", "--config.dataset.image_shape=(4, 4, 1)"]
DILATED_VALID = ["--config.model.padding=VALID", "--config.model.dilation=3"]

CASES = [
    # Config paths and names.
    ("config-path-missing", ["--config", "nowhere/missing.py"], "config file 'nowhere/missing.py' not found"),
    ("config-path-missing-names-the-preset", ["--config", "configs/mnist_cnn.py"], "--config mnist_cnn"),
    ("config-path-not-py-or-json", ["--config", "settings.txt"], "expected a Python config file (.py)"),
    ("config-path-without-suffix", ["--config", "./noext"], "expected a Python config file (.py)"),
    ("config-run-folder-as-a-name", ["--config", "{run}"], "pass --config ./run/config.json"),
    ("config-path-is-a-folder", ["--config", "./{run}"], "is a folder; pass a config file"),
    ("config-unknown-preset", ["--config", "mnist_cn"], "did you mean 'mnist_cnn'"),
    ("config-local-file-is-not-a-preset", ["--config", "my_local"], "pass --config ./my_local.py"),
    # Python config files: the file, the line and the message.
    ("config-raises-in-get-config", ["--config", "raises.py"],
     "raises.py:6: get_config() raised ZeroDivisionError: integer division or modulo by zero"),
    ("config-raises-at-import", ["--config", "bad_import.py"],
     "bad_import.py:1: loading it raised ModuleNotFoundError: No module named 'not_a_module_of_jaxcnn'"),
    ("config-syntax-error", ["--config", "bad_syntax.py"], "bad_syntax.py:3: loading it raised SyntaxError"),
    ("config-jaxcnn-error-in-get-config", ["--config", "bad_model.py"], "bad_model.py:5: unknown model 'nope'"),
    ("config-typo-in-locked-config", ["--config", "typo.py"], "typo.py:6: get_config() raised AttributeError"),
    ("config-without-get-config", ["--config", "no_get_config.py"], "has no get_config()"),
    ("config-get-config-returns-a-dict", ["--config", "returns_dict.py"], "must return an ml_collections.ConfigDict"),
    # JSON configs (a run's config.json).
    ("config-json-invalid", ["--config", "broken.json"], "broken.json: cannot be read as a JSON config"),
    ("config-json-not-an-object", ["--config", "list.json"], "must be an object, got a JSON list"),
    ("config-json-without-model", ["--config", "no_model.json"], "no 'model' section"),
    ("config-json-unknown-key", ["--config", "unknown_key.json"], "did you mean 'optimizer.learning_rate'"),
    ("config-json-nan", ["--config", "nan.json"], "config key 'optimizer.learning_rate' is nan"),
    ("config-json-infinity-in-a-tuple", ["--config", "inf_in_tuple.json"], "config key 'dataset.mean' is inf"),
    ("config-json-of-the-finished-run-is-that-run", ["--config", "{run}/config.json"], "holds a finished run"),
    ("config-json-of-a-run-with-a-bad-override",
     ["--config", "{run}/config.json", "--config.optimizer.learning_rate=1e999"], "is inf"),
    # Non-finite numbers.
    ("nonfinite-learning-rate", ["--config.optimizer.learning_rate=1e999"],
     "config key 'optimizer.learning_rate' is inf; every number in a config must be finite"),
    ("nonfinite-negative-infinity", ["--config.optimizer.weight_decay=-1e999"], "'optimizer.weight_decay' is -inf"),
    ("nonfinite-dataset-mean", ["--config.dataset.mean=1e999"], "'dataset.mean' is inf"),
    # Shapes: a kernel, dilated kernel or pool window larger than its layer's input (every conv_impl:
    # tests/test_models.py; "auto" is "shift" for this 1-channel layer on CPU, where it crashed).
    *[(f"shape-dilated-kernel-larger-than-input-{impl}", [*SYNTHETIC_4X4, *DILATED_VALID, f"--config.model.conv_impl={impl}"],
       "input shape 4x4x1: model layer Conv_0: input spatial size 4x4 is smaller than its 3x3 kernel dilated to 7x7")
      for impl in ("auto", "im2col")],
    ("shape-kernel-larger-than-a-later-layer", ["--config.model.name=lenet5"],
     "input shape 8x8x1: model layer Conv_1: input spatial size 4x4 is smaller than its 5x5 kernel"),
    ("shape-kernel-larger-than-padded-input", [*SYNTHETIC_4X4, "--config.model.kernel_size=7", "--config.model.padding=1"],
     "model layer Conv_0: input spatial size 4x4 (padded to 6x6) is smaller than its 7x7 kernel"),
    ("shape-pool-window-larger-than-input", [*SYNTHETIC_4X4, "--config.model.pool_window=8"],
     "model layer pool of block 1 (after Conv_0): input spatial size 4x4 is smaller than its avg pool window 8x8"),
]


def tree_hashes(folder: pathlib.Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path (folders listed too, as "dir")."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def jaxcnn(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    """The `jaxcnn` command of this checkout, run in `cwd`."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "jaxcnn.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": path})


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> pathlib.Path:
    """A folder with the config files and a finished run (`run/`, synthetic data, one epoch)."""
    folder = tmp_path_factory.mktemp("bad_configs")
    for name, text in CONFIG_FILES.items():
        (folder / name).write_text(text)
    result = jaxcnn("train", "--quiet", "--workdir", "run", "--config.model.name=tiny_cnn",
                    "--config.dataset.name=synthetic", "--config.dataset.image_shape=(8, 8, 1)",
                    "--config.dataset.num_train=64", "--config.dataset.num_test=32", "--config.batch_size=32",
                    "--config.num_epochs=1", "--config.schedule.name=constant", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder


@pytest.mark.parametrize("argv, fragment", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_bad_config_is_one_line_and_changes_nothing(folder, argv, fragment):
    before = tree_hashes(folder)
    argv = [arg.replace("{run}", "run") for arg in argv]
    result = jaxcnn("train", *argv, "--workdir", "run", cwd=folder)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("jaxcnn: error: ") and fragment in lines[0], lines[0]
    assert tree_hashes(folder) == before


def test_the_finished_run_of_the_table_is_a_real_run(folder):
    """The table's `{run}` cases mean something only if the workdir holds a run to protect."""
    summary = json.loads((folder / "run" / "summary.json").read_text())
    assert summary["epochs_run"] == 1
    assert (folder / "run" / "checkpoints").is_dir()

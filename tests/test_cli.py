"""The `jaxcnn` command end to end, in subprocesses, as a user runs it."""

import gzip
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


def jaxcnn(*args, cwd=REPO, env=None):
    return subprocess.run([sys.executable, "-m", "jaxcnn.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_default_train_reaches_97_percent_on_digits(tmp_path):
    result = jaxcnn("train", "--workdir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_accuracy"] >= 0.97
    assert f"test_accuracy {summary['test_accuracy']:.4f}" in result.stdout
    # not a terminal: one plain line per epoch, no progress bar
    assert sum(line.startswith("epoch ") for line in result.stdout.splitlines()) == 30


def test_scripts_train_is_the_same_command(tmp_path):
    result = subprocess.run([sys.executable, "scripts/train.py", "--workdir", str(tmp_path / "run"),
                             "--quiet", "--config.num_epochs=1", "--config.schedule.name=constant"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("test_accuracy ")
    assert (tmp_path / "run" / "metrics.jsonl").exists()


def test_models_lists_every_preset_with_its_parameter_count():
    result = jaxcnn("models")
    assert result.returncode == 0, result.stderr
    assert "824,458" in result.stdout  # the Flax-example CNN
    assert "407,050" in result.stdout  # the seed MLP
    for name in ("mlp", "tiny_cnn", "lenet5", "cnn", "vgg", "resnet20", "resnet18"):
        assert f"\n{name} " in result.stdout


def test_help_documents_the_options():
    result = jaxcnn("train", "--help")
    for option in ("--config", "--workdir", "--data-dir", "--config.KEY=VALUE", "--quiet"):
        assert option in result.stdout


def test_show_config_prints_the_overridden_config():
    result = jaxcnn("train", "--show-config", "--config", "mnist_mlp", "--config.batch_size", "64")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["batch_size"] == 64 and config["model"]["name"] == "mlp"


@pytest.mark.parametrize("args, fragments", [
    (["--config.optimizer.learnig_rate=0.1"], ["optimizer.learnig_rate", "optimizer.learning_rate"]),
    (["--config.optimizer.learning_rate=-1"], ["optimizer.learning_rate", "> 0"]),
    (["--config.batch_size=0"], ["batch_size"]),
    (["--config.num_epochs=0"], ["num_epochs"]),
    (["--config.batch_size=4096"], ["batch_size 4096", "training split"]),
    (["--config.model.name=alexnet"], ["alexnet", "model.name"]),
    (["--config.model.activation=swish"], ["swish"]),
    (["--config.optimizer.name=adagrad"], ["adagrad", "optimizer.name"]),
    (["--config.schedule.name=cyclic"], ["cyclic", "schedule.name"]),
    (["--config.dataset.name=cifar"], ["cifar", "dataset.name"]),
    (["--config", "nonexistent.py"], ["nonexistent.py", "not found"]),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, fragments):
    assert_one_line_error(jaxcnn("train", "--workdir", str(tmp_path / "w"), *args), *fragments)


def test_workdir_that_is_a_file_is_one_line_exit_2(tmp_path):
    (tmp_path / "w").write_text("")
    assert_one_line_error(jaxcnn("train", "--workdir", str(tmp_path / "w")), "is a file")


def test_missing_data_dir_says_how_to_give_one(tmp_path):
    env = {"JAXCNN_DATA_DIR": ""}
    result = jaxcnn("train", "--config", "mnist_mlp", "--workdir", str(tmp_path / "w"), env=env)
    assert_one_line_error(result, "--data-dir", "JAXCNN_DATA_DIR")


def test_data_dir_missing_a_file_names_it(tmp_path):
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    result = jaxcnn("train", "--config", "mnist_mlp", "--data-dir", str(tmp_path / "data"),
                    "--workdir", str(tmp_path / "w"))
    assert_one_line_error(result, "train-images-idx3-ubyte.gz")


def test_truncated_idx_file_is_one_line_exit_2(tmp_path):
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    header_only = (2051).to_bytes(4, "big") + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (folder / name).write_bytes(gzip.compress(header_only + b"\0" * 100))
    for name in ("train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (folder / name).write_bytes(gzip.compress((2049).to_bytes(4, "big") + (10).to_bytes(4, "big") + b"\0" * 10))
    result = jaxcnn("train", "--config", "mnist_mlp", "--data-dir", str(tmp_path / "data"),
                    "--workdir", str(tmp_path / "w"))
    assert_one_line_error(result, "images-idx3-ubyte.gz", "truncated")


def test_unrecognised_argument_is_a_usage_error():
    result = jaxcnn("train", "--epochs", "3")
    assert result.returncode == 2 and "unrecognized argument: --epochs" in result.stderr


def test_the_quick_exit_waits_for_a_thread_still_working():
    """`exit_now` skips the interpreter's teardown only when nothing else runs: a non-daemon thread
    still working gets the usual exit, which waits for it."""
    import threading

    from jaxcnn.cli import exit_now

    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        with pytest.raises(SystemExit) as exited:
            exit_now(3)
        assert exited.value.code == 3
    finally:
        release.set()
        worker.join()


def test_the_executable_freezes_what_its_libraries_built_and_collects_again_after():
    script = ("import gc, json\n"
              "from jaxcnn import cli\n"
              "cli._Process.executable = True\n"
              "with cli.libraries_loading():\n"
              "    held = not gc.isenabled()\n"
              "    import jaxcnn.training.loop\n"
              "print(json.dumps([held, gc.isenabled(), gc.get_freeze_count()]))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    held, enabled_after, frozen = json.loads(result.stdout)
    assert held and enabled_after and frozen > 10_000


def test_called_from_python_the_train_command_leaves_the_collector_as_it_was():
    import gc

    from jaxcnn import cli

    before = gc.get_freeze_count()
    with cli.libraries_loading():
        assert gc.isenabled()
    assert gc.isenabled() and gc.get_freeze_count() == before


def test_the_command_ends_with_its_output_whole_and_its_exit_handlers_run(tmp_path):
    script = tmp_path / "handlers.py"
    script.write_text("import atexit, sys\n"
                      "marker = sys.argv[1]\n"
                      "atexit.register(lambda: open(marker, 'w').write('ran'))\n"
                      "from jaxcnn.cli import console\n"
                      "sys.argv = ['jaxcnn', 'models']\n"
                      "console()\n")
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "ran.txt")], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "\nresnet18 " in result.stdout and result.stdout.endswith("\n")
    assert (tmp_path / "ran.txt").read_text() == "ran"

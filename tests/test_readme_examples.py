"""The README's examples, run as written by a newcomer: from a fresh folder, with a fresh home, with
`JAXCNN_DATA_DIR` unset and nothing else of the developer's environment (PATH holds a `jaxcnn`
command and this Python; PYTHONPATH the checkout, as an install would). The examples are read from
README.md (tests/readme_examples.py), section by section, in the README's order, in one folder: a
later section may use what an earlier one made, as a reader's folder would hold it.

Commands that read MNIST get the data directory the README tells the user to pass
(`../shared/data`), replaced by the value of `JAXCNN_DATA_DIR` when the tests started; without it
those sections are skipped with the reason. Sections that need no data directory never get one.
"""

import os
import pathlib
import subprocess
import sys
import time

import pytest

from conftest import REPO, real_data_dir
from readme_examples import needs_data_dir, sections, steps_of

SECTIONS = ["From Python", "Exported models", "Your own model", "Your own data",
            "Reproducibility: certificates, `jaxcnn verify`, `deterministic`", "Seeds and sweeps",
            "Experiment trackers", "mixup, cutmix and test-time augmentation", "ONNX"]
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory):
    """(folder, environment) of a newcomer: an empty folder, a fresh home, a minimal environment."""
    root = tmp_path_factory.mktemp("newcomer")
    bin_dir, home, folder = root / "bin", root / "home", root / "work"
    for path in (bin_dir, home, folder):
        path.mkdir()
    shim = bin_dir / "jaxcnn"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m jaxcnn.cli "$@"\n')
    shim.chmod(0o755)
    env = {"PATH": os.pathsep.join([str(bin_dir), str(pathlib.Path(sys.executable).parent), "/usr/bin", "/bin"]),
           "HOME": str(home), "PYTHONPATH": str(REPO), "LANG": "C.UTF-8",
           "XDG_CACHE_HOME": os.environ.get("XDG_CACHE_HOME", str(home / ".cache"))}
    return folder, env


def run_step(step, folder, env):
    """Writes or runs one step; a failure shows the command's output."""
    if step.kind == "file":
        (folder / step.name).write_text(step.text)
        return
    if step.kind == "python":
        script = folder / f"readme_{abs(hash(step.text)) % 10**8}.py"
        script.write_text(step.text)
        argv = [sys.executable, script.name]
    else:
        argv = ["bash", "-e", "-x", "-c", step.text]
    started = time.monotonic()
    result = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    output = f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert result.returncode == 0, f"README example of {step.section!r} failed:\n{step.text}\n{output}"
    assert "Traceback" not in result.stderr, output
    print(f"{step.section}: {step.kind} step in {time.monotonic() - started:.1f} s")


def run_section(title, newcomer):
    folder, env = newcomer
    data_dir = real_data_dir() and real_data_dir().resolve()  # CI's is relative; the steps run elsewhere
    steps = steps_of(title, sections((REPO / "README.md").read_text())[title], str(data_dir or "../shared/data"))
    assert steps, f"README section {title!r} has no examples"
    if any(needs_data_dir(step) for step in steps) and (data_dir is None or not (data_dir / "mnist").is_dir()):
        pytest.skip(f"README section {title!r} reads MNIST: set JAXCNN_DATA_DIR to a folder with mnist/")
    for step in steps:
        run_step(step, folder, env)
    return folder


def test_the_python_api_example_trains_and_predicts(newcomer):
    run_section("From Python", newcomer)


def test_the_export_examples_export_a_run_and_serve_it_with_jax_alone(newcomer):
    folder = run_section("Exported models", newcomer)
    assert (folder / "runs/digits/export/model.jaxexport.json").is_file()


def test_the_onnx_examples_export_the_exported_run_and_serve_it_with_onnxruntime(newcomer):
    pytest.importorskip("jax2onnx", reason="the onnx extra is not installed")
    folder = run_section("ONNX", newcomer)
    assert (folder / "m.onnx.json").is_file()


def test_the_tracker_examples_fill_an_mlflow_file_store_and_a_wandb_offline_run(newcomer):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    folder = run_section("Experiment trackers", newcomer)
    assert (folder / "mlruns").is_dir() and (folder / "runs/tracked/metrics.csv").is_file()
    assert (folder / "runs/tracked-wandb/wandb").is_dir()


def test_the_mixing_examples_train_with_mixup_cutmix_and_flip_tta(newcomer):
    folder = run_section("mixup, cutmix and test-time augmentation", newcomer)
    assert (folder / "runs/mixed/summary.json").is_file() and (folder / "runs/mixed-tta/summary.json").is_file()


def test_the_own_model_examples_train_a_linen_and_an_nnx_model_from_mynets(newcomer):
    folder = run_section("Your own model", newcomer)
    assert (folder / "runs/nnx/summary.json").is_file()


def test_the_own_data_examples_train_on_images_and_arrays_without_a_data_directory(newcomer):
    folder = run_section("Your own data", newcomer)
    assert not (folder / "runs/shapes/config.json").read_text().count('"data_dir": "/')


def test_the_reproducibility_examples_verify_a_run_bitwise(newcomer):
    run_section(SECTIONS[4], newcomer)


def test_the_seeds_examples_train_members_compare_them_and_report_them(newcomer):
    folder = run_section("Seeds and sweeps", newcomer)
    assert (folder / "report" / "report.md").is_file()


def test_every_section_named_here_is_in_the_readme():
    assert set(SECTIONS) <= set(sections((REPO / "README.md").read_text()))

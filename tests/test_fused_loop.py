"""`config.steps_per_call` in the training loop: bitwise the same run as one call per step."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, sigterm_after
from jaxcnn.files import checkpoint
from jaxcnn.config import load_config, validate_config
from jaxcnn.errors import JaxcnnError
from jaxcnn.training.loop import train_and_evaluate
from jaxcnn.commands.saved import load_saved_model
from jaxcnn.files.writers import read_jsonl, without_timing

# digits: 40 steps per epoch at batch 32. Augmentation on; logging every 7 steps (not a multiple of 3).
RUN = ["model.name=tiny_cnn", "num_epochs=2", "log_every_steps=7", "augment.crop_padding=1", "augment.flip=true",
       "optimizer.name=sgd", "optimizer.momentum=0.9", "schedule.warmup_epochs=0.5"]


# ------------------------------------------------------------------------------ the whole loop

@pytest.fixture(scope="module")
def per_step_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("per_step") / "run"
    return workdir, train_and_evaluate(load_config("digits_cnn", RUN), workdir, quiet=True)


def leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(jax.device_get(tree))]


def records(workdir):
    return [without_timing(r) for r in read_jsonl(pathlib.Path(workdir) / "metrics.jsonl")]


def params_bytes(workdir):
    return [leaf.tobytes() for leaf in leaves(load_saved_model(workdir, "latest").state.params)]


def test_a_run_with_steps_per_call_3_equals_the_per_step_run(per_step_run, tmp_path):
    summary = train_and_evaluate(load_config("digits_cnn", RUN + ["steps_per_call=3"]), tmp_path / "run",
                                 quiet=True)
    assert summary["steps"] == per_step_run[1]["steps"] == 80
    assert summary["test_accuracy"] == per_step_run[1]["test_accuracy"]
    assert summary["test_loss"] == per_step_run[1]["test_loss"]
    assert records(tmp_path / "run") == records(per_step_run[0])
    assert [r["step"] for r in records(tmp_path / "run") if r["event"] == "train"] == list(range(7, 81, 7))
    assert params_bytes(tmp_path / "run") == params_bytes(per_step_run[0])


def test_a_stop_mid_epoch_with_fused_steps_resumes_to_the_per_step_run(tmp_path, monkeypatch):
    """SIGTERM during a call: the run stops after that call; resuming (with another steps_per_call,
    a resumable key) finishes bitwise like the straight run. An MLP with dropout: quick to compile."""
    overrides = RUN + ["model.name=mlp", "model.hidden=(32,)", "model.dropout=0.1"]
    straight = train_and_evaluate(load_config("digits_cnn", overrides), tmp_path / "straight", quiet=True)
    seen, restore = sigterm_after(monkeypatch, 50)
    workdir = tmp_path / "run"
    with pytest.raises(checkpoint.TrainingInterrupted) as stopped:
        train_and_evaluate(load_config("digits_cnn", overrides + ["steps_per_call=4"]), workdir, quiet=True)
    assert 50 <= stopped.value.step < 54 and stopped.value.step == sum(seen)  # after the call it was in
    restore()

    summary = train_and_evaluate(load_config("digits_cnn", overrides + ["steps_per_call=5"]), workdir, quiet=True)
    assert summary["steps"] == 80 and summary["test_accuracy"] == straight["test_accuracy"]
    assert records(workdir) == records(tmp_path / "straight")
    assert params_bytes(workdir) == params_bytes(tmp_path / "straight")


SHARDED_RUNS = """
import sys, jax
from jaxcnn.config import load_config
from jaxcnn.training.loop import train_and_evaluate
assert jax.device_count() == 2
for k in (1, 3):
    run = ["parallel=sharded", "model.name=mlp", "num_epochs=1", "log_every_steps=7", "schedule.name=constant",
           "augment.flip=true", f"steps_per_call={k}"]
    train_and_evaluate(load_config("digits_cnn", run), f"{sys.argv[1]}/{k}", quiet=True)
"""


def test_sharded_fused_steps_on_two_devices_equal_one_call_per_step(tmp_path):
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("XLA_FLAGS", None)
    result = subprocess.run([sys.executable, "-c", SHARDED_RUNS, str(tmp_path)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert records(tmp_path / "3") == records(tmp_path / "1")
    assert params_bytes(tmp_path / "3") == params_bytes(tmp_path / "1")


# ----------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("value", [-2, 1.5, "3", True])
def test_a_bad_steps_per_call_is_refused(value):
    config = load_config("digits_cnn", [])
    with config.unlocked():
        config.steps_per_call = value
    with pytest.raises(JaxcnnError, match=r"^steps_per_call must be a whole number >= 0 \(0: chosen by measurement\)"):
        validate_config(config)


@pytest.mark.parametrize("override,fragments", [
    ("steps_per_call=-1", ["steps_per_call must be a whole number >= 0", "-1"]),
])
def test_the_cli_refuses_a_bad_steps_per_call_with_one_line(tmp_path, override, fragments):
    result = subprocess.run([sys.executable, "-m", "jaxcnn.cli", "train", "--workdir", str(tmp_path / "run"),
                             "--quiet", "--config.steps_per_call=3", f"--config.{override}", "--config.num_epochs=1",
                             "--config.schedule.name=constant"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(fragment in lines[0] for fragment in fragments)

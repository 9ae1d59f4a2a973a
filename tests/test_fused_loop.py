"""`config.steps_per_call` in the training loop: bitwise the same run as one call per step."""

import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO
from jaxcnn import checkpoint, loop, losses, models, optim
from jaxcnn.augment import AugmentConfig, make_augment
from jaxcnn.config import load_config, validate_config
from jaxcnn.data import Split
from jaxcnn.data.device import epoch_order, eval_order, put_on_device
from jaxcnn.errors import JaxcnnError
from jaxcnn.fused import plan_calls
from jaxcnn.loop import (evaluate, make_eval_all_fn, make_eval_fn, make_train_fn, make_train_many_fn,
                         train_and_evaluate, zero_train_totals)
from jaxcnn.saved import load_saved_model
from jaxcnn.state import create_train_state
from jaxcnn.writers import read_jsonl, without_timing

# digits: 40 steps per epoch at batch 32. Augmentation on; logging every 7 steps (not a multiple of 3).
RUN = ["model.name=tiny_cnn", "num_epochs=2", "log_every_steps=7", "augment.crop_padding=1", "augment.flip=true",
       "optimizer.name=sgd", "optimizer.momentum=0.9", "schedule.warmup_epochs=0.5"]


# ------------------------------------------------------------------------------------ plan_calls

def test_plan_calls_covers_the_epoch_in_calls_of_at_most_k_steps_with_a_last_partial_one():
    assert plan_calls(0, 7, 0, 3) == [(0, 3), (3, 3), (6, 1)]
    assert plan_calls(0, 4, 100, 10) == [(0, 4)]


def test_plan_calls_ends_calls_at_log_and_checkpoint_steps():
    # global step 5 at epoch position 0; logging every 7 steps, checkpoints every 10
    calls = plan_calls(0, 20, 5, 4, (7, 10))
    assert calls == [(0, 2), (2, 3), (5, 4), (9, 4), (13, 2), (15, 1), (16, 4)]
    ends = [5 + position + size for position, size in calls]  # the global step after each call
    assert {7, 10, 14, 20, 21}.issubset(ends) and ends[-1] == 25
    assert all(size <= 4 for _, size in calls)


def test_plan_calls_resumes_mid_epoch_and_ignores_a_zero_interval():
    assert plan_calls(5, 9, 45, 3, (0, 0)) == [(5, 3), (8, 1)]
    assert plan_calls(9, 9, 49, 3, (7,)) == []
    assert plan_calls(0, 5, 0, 1, (2,)) == [(i, 1) for i in range(5)]


# --------------------------------------------------------------------- fused vs per-step numerics

def small_state(model_name):
    kwargs = {"hidden": (16,), "dropout": 0.2} if model_name == "mlp" else {}
    model = models.create_model(model_name, 10, **kwargs)
    tx = optim.create_optimizer({"name": "sgd", "learning_rate": 0.05, "momentum": 0.9},
                                {"name": "constant"}, steps_per_epoch=7, num_epochs=1)
    return create_train_state(model, tx, losses.make_classification_loss("cross_entropy", 10), (8, 8, 1), 0)


@pytest.fixture(scope="module")
def split():
    rng = np.random.default_rng(0)
    return put_on_device(Split(rng.integers(0, 256, (7 * 16 + 5, 8, 8, 1), dtype=np.uint8),
                               rng.integers(0, 10, 7 * 16 + 5).astype(np.int32)))


def leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(jax.device_get(tree))]


@pytest.mark.parametrize("model_name", ["mlp", "tiny_cnn"])
def test_fused_training_with_augmentation_is_bitwise_equal_to_one_call_per_step(split, model_name):
    augment_fn = make_augment(AugmentConfig(crop_padding=1, flip=True, cutout=2))
    order = epoch_order(0, 1, len(split), 16)  # 7 steps
    per_step, totals = small_state(model_name), zero_train_totals()
    train_fn = make_train_fn(0.5, 0.25, augment_fn=augment_fn)
    for i in range(7):
        per_step, totals = train_fn(per_step, totals, split, order, i)

    fused_state, fused_totals = small_state(model_name), zero_train_totals()
    train_many_fn = make_train_many_fn(0.5, 0.25, augment_fn)
    step_losses = []
    for start, num_steps in plan_calls(0, 7, 0, 3):  # 3 + 3 + a last call of 1
        fused_state, fused_totals, metrics = train_many_fn(fused_state, fused_totals, split, order, start,
                                                           num_steps=num_steps)
        assert metrics["learning_rate"].shape == metrics["accuracy"].shape == (num_steps,)
        step_losses.extend(np.asarray(metrics["loss"]).tolist())

    assert int(fused_state.step) == 7
    for got, want in zip(leaves((fused_state.params, fused_state.opt_state, fused_totals)),
                         leaves((per_step.params, per_step.opt_state, totals))):
        np.testing.assert_array_equal(got, want)
    assert len(step_losses) == 7


@pytest.mark.parametrize("model_name", ["mlp", "tiny_cnn"])
def test_fused_evaluation_equals_one_call_per_batch(split, model_name):
    state = small_state(model_name)
    per_batch = evaluate(make_eval_fn(0.5, 0.25), state, split, 50)  # 117 examples: a padded last batch
    fused = evaluate(make_eval_fn(0.5, 0.25), state, split, 50, eval_all_fn=make_eval_all_fn(0.5, 0.25))
    assert fused == per_batch and fused["count"] == 117
    order, mask = eval_order(len(split), 50)
    assert order.shape == (3, 50)


# ------------------------------------------------------------------------------ the whole loop

@pytest.fixture(scope="module")
def per_step_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("per_step") / "run"
    return workdir, train_and_evaluate(load_config("digits_cnn", RUN), workdir, quiet=True)


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
    original, seen = loop.Progress.step, []

    def step_and_signal(self, epoch, num_steps=1):
        original(self, epoch, num_steps)
        seen.append(num_steps)
        if sum(seen) >= 50 and not hasattr(self, "signalled"):
            self.signalled = True
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop.Progress, "step", step_and_signal)
    workdir = tmp_path / "run"
    with pytest.raises(checkpoint.TrainingInterrupted) as stopped:
        train_and_evaluate(load_config("digits_cnn", overrides + ["steps_per_call=4"]), workdir, quiet=True)
    assert 50 <= stopped.value.step < 54 and stopped.value.step == sum(seen)  # after the call it was in
    monkeypatch.setattr(loop.Progress, "step", original)

    summary = train_and_evaluate(load_config("digits_cnn", overrides + ["steps_per_call=5"]), workdir, quiet=True)
    assert summary["steps"] == 80 and summary["test_accuracy"] == straight["test_accuracy"]
    assert records(workdir) == records(tmp_path / "straight")
    assert params_bytes(workdir) == params_bytes(tmp_path / "straight")


SHARDED_RUNS = """
import sys, jax
from jaxcnn.config import load_config
from jaxcnn.loop import train_and_evaluate
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

@pytest.mark.parametrize("value", [0, -2, 1.5, "3", True])
def test_a_bad_steps_per_call_is_refused(value):
    config = load_config("digits_cnn", [])
    with config.unlocked():
        config.steps_per_call = value
    with pytest.raises(JaxcnnError, match=r"^steps_per_call must be a positive integer"):
        validate_config(config)


def test_fused_steps_with_pmap_are_refused(tmp_path):
    with pytest.raises(JaxcnnError, match="steps_per_call > 1 is not supported with parallel=pmap"):
        train_and_evaluate(load_config("digits_cnn", RUN + ["steps_per_call=2", "parallel=pmap"]),
                           tmp_path / "run", quiet=True)


@pytest.mark.parametrize("override,fragments", [
    ("steps_per_call=0", ["steps_per_call must be a positive integer", "0"]),
    ("dataset.input=host", ["steps_per_call=3", "dataset.input=device"]),
])
def test_the_cli_refuses_fused_steps_it_cannot_run_with_one_line(tmp_path, override, fragments):
    result = subprocess.run([sys.executable, "-m", "jaxcnn.cli", "train", "--workdir", str(tmp_path / "run"),
                             "--quiet", "--config.steps_per_call=3", f"--config.{override}", "--config.num_epochs=1",
                             "--config.schedule.name=constant"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(fragment in lines[0] for fragment in fragments)

"""EMA of the weights (`config.ema.decay`): the warm-up, the summary's raw and EMA numbers, the
saved averages used by the saved-model commands, members, and bitwise resume after SIGTERM."""


import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import sigterm_after

from jaxcnn.commands.saved import evaluate_saved, load_saved_model
from jaxcnn.config import load_config
from jaxcnn.core import ema
from jaxcnn.core.state import EmaTrainState, TrainState
from jaxcnn.files import checkpoint
from jaxcnn.files.writers import read_jsonl, without_timing
from jaxcnn.training.loop import fit, train_and_evaluate

MLP = ["model.name=mlp", "model.hidden=(16,)", "num_epochs=2", "log_every_steps=10", "ema.decay=0.9"]


def run(tmp_path, name, overrides=()):
    return fit(load_config("digits_cnn", MLP + list(overrides)), tmp_path / name, quiet=True)


def equal(a, b):
    left, right = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
    return len(left) == len(right) and all(np.array_equal(x, y) for x, y in zip(left, right))


def saved_tree(workdir):
    """The latest checkpoint's train state as written (nested dicts), the averages included."""
    manager = checkpoint.open_manager(workdir / checkpoint.CHECKPOINT_DIR, read_only=True)
    try:
        state = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    finally:
        manager.close()
    train_state = state["state"]["train_state"]
    return train_state.get("state", train_state)  # a run of members: its stacked state


def test_the_decay_warms_up_from_a_tenth_then_holds_at_the_configured_value():
    assert float(ema.decay_at(0.999, 0)) == pytest.approx(0.1)
    assert float(ema.decay_at(0.999, 90)) == pytest.approx(91 / 100)
    assert float(ema.decay_at(0.9, 10_000)) == pytest.approx(0.9)


def test_ema_off_keeps_the_plain_train_state_and_its_checkpoint_tree(tmp_path):
    plain = fit(load_config("digits_cnn", MLP[:-1] + ["max_steps=3"]), tmp_path / "off", quiet=True)
    assert type(plain.state) is TrainState and "raw_test_accuracy" not in plain.summary
    assert "ema" not in saved_tree(tmp_path / "off")  # the checkpoint's tree as without EMA


def test_a_single_run_reports_the_ema_and_raw_test_and_its_saved_model_uses_the_averages(tmp_path):
    trained = run(tmp_path, "single")
    summary = trained.summary
    assert summary["ema_decay"] == 0.9 and {"raw_test_accuracy", "raw_test_loss"} <= set(summary)
    assert summary["test_loss"] != summary["raw_test_loss"]
    loaded = load_saved_model(tmp_path / "single", "latest")  # eval, predict, export and jaxcnn.load read this
    saved = saved_tree(tmp_path / "single")
    assert isinstance(trained.state, EmaTrainState)
    assert equal(loaded.state.params, saved["ema"]["params"]) and not equal(loaded.state.params, saved["params"])
    evaluated = evaluate_saved(loaded)  # `jaxcnn eval`: the averages, so the run's own test numbers
    assert evaluated["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
    tests = [r for r in read_jsonl(tmp_path / "single" / "metrics.jsonl") if r["event"] == "test"]
    assert tests[0]["raw_test_accuracy"] == summary["raw_test_accuracy"]


def test_a_run_of_members_reports_each_members_ema_and_raw_test(tmp_path):
    summary = run(tmp_path, "members", ["seeds=2", "max_steps=20"]).summary
    assert all({"raw_test_accuracy", "ema_decay"} <= set(m) for m in summary["members"])
    assert summary["raw_test_accuracy"] == pytest.approx(np.mean([m["raw_test_accuracy"] for m in summary["members"]]))
    assert "raw_test_accuracy" in summary["aggregate"][0]["metrics"]


@pytest.mark.parametrize("extra", [[], ["seeds=2"]], ids=["single", "members"])
def test_a_run_with_ema_stopped_by_sigterm_resumes_bitwise_like_the_uninterrupted_run(tmp_path, monkeypatch, extra):
    straight = train_and_evaluate(load_config("digits_cnn", MLP + extra), tmp_path / "straight", quiet=True)
    _, restore = sigterm_after(monkeypatch, 50)
    with pytest.raises(checkpoint.TrainingInterrupted):
        train_and_evaluate(load_config("digits_cnn", MLP + extra), tmp_path / "run", quiet=True)
    restore()
    resumed = train_and_evaluate(load_config("digits_cnn", MLP + extra), tmp_path / "run", quiet=True)
    assert resumed["raw_test_accuracy"] == straight["raw_test_accuracy"]
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    records = lambda w: [without_timing(r) for r in read_jsonl(w / "metrics.jsonl")]
    assert records(tmp_path / "run") == records(tmp_path / "straight")
    assert equal(saved_tree(tmp_path / "run"), saved_tree(tmp_path / "straight"))  # params, averages, moments

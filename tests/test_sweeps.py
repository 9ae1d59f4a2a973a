"""Sweeps in one program (`config.sweep`, jaxcnn/core/members.py): members = sweep values × seeds, each
agreeing with the single run of its value and seed; the aggregate per sweep value."""

import pytest

from jaxcnn.core import stats
from jaxcnn.config import load_config
from jaxcnn.training.loop import train_and_evaluate

# A small MLP on the bundled digits: 40 steps per epoch at batch 32.
BASE = ["model.name=mlp", "model.hidden=(16,)", "schedule.name=constant", "num_epochs=1", "log_every_steps=20"]


def single(tmp_path, overrides):
    name = "-".join(o.replace("=", "_") for o in overrides)
    return train_and_evaluate(load_config("digits_cnn", BASE + overrides), tmp_path / name, quiet=True)


def test_a_sweep_of_3_learning_rates_by_2_seeds_aggregates_like_six_single_runs(tmp_path):
    rates, seeds = (0.001, 0.003, 0.01), (0, 1)
    summary = train_and_evaluate(load_config("digits_cnn", BASE + [f"sweep.optimizer.learning_rate={rates}",
                                                                   f"seeds={seeds}"]), tmp_path / "sweep", quiet=True)
    assert [(m["sweep"]["optimizer.learning_rate"], m["seed"]) for m in summary["members"]] == \
        [(r, s) for r in rates for s in seeds]
    assert summary["sweep"] == {"optimizer.learning_rate": list(rates)} and summary["test_accuracy"] is None
    for group, rate in zip(summary["aggregate"], rates):
        runs = [single(tmp_path, [f"optimizer.learning_rate={rate}", f"seed={seed}"]) for seed in seeds]
        expected = stats.describe([run["test_accuracy"] for run in runs])
        got = group["metrics"]["test_accuracy"]
        assert group["sweep"] == {"optimizer.learning_rate": rate} and group["seeds"] == list(seeds)
        assert got["mean"] == pytest.approx(expected["mean"], abs=0.001)
        assert got["std"] == pytest.approx(expected["std"], abs=0.001)
        assert [m["test_accuracy"] for m in summary["members"] if m["sweep"]["optimizer.learning_rate"] == rate] == \
            pytest.approx([run["test_accuracy"] for run in runs], abs=0.001)


def test_weight_decay_label_smoothing_and_l2_sweeps_agree_with_their_single_runs(tmp_path):
    """Every loss and optimizer value that can be swept, at once: two weight decays (one of them
    0, where a single run has no decay at all) with a label smoothing and an L2 penalty."""
    sweep = {"optimizer.weight_decay": (0.0, 0.5), "loss.label_smoothing": (0.2,), "loss.l2": (0.01,)}
    overrides = ["optimizer.name=adamw"] + [f"sweep.{key}={values}" for key, values in sweep.items()]
    summary = train_and_evaluate(load_config("digits_cnn", BASE + overrides), tmp_path / "sweep", quiet=True)
    assert [m["sweep"]["optimizer.weight_decay"] for m in summary["members"]] == [0.0, 0.5]
    assert len(summary["aggregate"]) == 2
    for member in summary["members"]:
        run = single(tmp_path, ["optimizer.name=adamw"] + [f"{key}={value}" for key, value in member["sweep"].items()])
        assert member["test_accuracy"] == pytest.approx(run["test_accuracy"], abs=0.001)
        assert member["test_loss"] == pytest.approx(run["test_loss"], abs=1e-4)
        assert member["best_val_loss"] == pytest.approx(run["best_val_loss"], abs=1e-4)

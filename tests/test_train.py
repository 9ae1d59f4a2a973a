"""The training loop: determinism, the workdir files, evaluation counting, early stopping, decay."""

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import real_data_dir, requires_mnist
from jaxcnn import models
from jaxcnn.core import losses, optim
from jaxcnn.config import load_config
from jaxcnn.data import Split
from jaxcnn.data.device import epoch_order, eval_order
from jaxcnn.errors import JaxcnnError
from jaxcnn.core.build import prepare_fn
from jaxcnn.data.feed import DeviceFeed
from jaxcnn.core.evaluation import evaluate
from jaxcnn.core.executor import Executor
from jaxcnn.training.loop import train_and_evaluate
from jaxcnn.core.loop_state import EarlyStopping
from jaxcnn.core.state import create_train_state
from jaxcnn.files.writers import read_jsonl, without_timing

FAST = ["model.name=mlp", "model.hidden=(32,)", "num_epochs=2", "log_every_steps=10",
        "schedule.name=constant", "optimizer.learning_rate=0.001"]


def run(tmp_path, name, overrides, preset="digits_cnn", **kwargs):
    return train_and_evaluate(load_config(preset, overrides), tmp_path / name, quiet=True, **kwargs)


def test_same_seed_writes_identical_metrics_apart_from_timing(tmp_path):
    run(tmp_path, "a", FAST)
    run(tmp_path, "b", FAST)
    a = [without_timing(r) for r in read_jsonl(tmp_path / "a" / "metrics.jsonl")]
    b = [without_timing(r) for r in read_jsonl(tmp_path / "b" / "metrics.jsonl")]
    assert a == b
    assert any(r["event"] == "train" for r in a) and any(r["event"] == "epoch" for r in a)


def test_different_seed_gives_different_losses(tmp_path):
    run(tmp_path, "a", FAST)
    run(tmp_path, "b", FAST + ["seed=1"])
    loss = lambda d: [r["train_loss"] for r in read_jsonl(tmp_path / d / "metrics.jsonl") if r["event"] == "epoch"]
    assert loss("a") != loss("b")


def test_workdir_gets_config_metrics_and_summary(tmp_path):
    summary = run(tmp_path, "w", FAST)
    workdir = tmp_path / "w"
    assert {"config.json", "metrics.jsonl", "summary.json"} <= {p.name for p in workdir.iterdir()}
    for key in ("test_accuracy", "test_loss", "best_val_accuracy", "epochs_run", "wall_time_s",
                "train_images_per_s", "seed"):
        assert key in summary
    assert summary["test_examples"] == 359 and summary["epochs_run"] == 2
    assert summary["train_images_per_s"] > 0


def test_training_learns_the_digits(tmp_path):
    summary = run(tmp_path, "w", ["model.name=mlp", "num_epochs=5", "schedule.warmup_epochs=1"])
    assert summary["test_accuracy"] > 0.9


def test_evaluation_counts_every_example_once_when_the_size_is_not_a_multiple_of_the_batch():
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (1001, 8, 8, 1), dtype=np.uint8),
                  rng.integers(0, 10, 1001).astype(np.int32))
    model = models.create_model("mlp", 10, hidden=(16,))
    loss_fn = losses.make_classification_loss("cross_entropy", 10)
    state = create_train_state(model, optim.create_optimizer(
        {**optim.default_optimizer_config(), "name": "sgd", "learning_rate": 0.1},
        optim.default_schedule_config(), 1, 1), loss_fn, (8, 8, 1), seed=0)
    executor = Executor("none")
    calls = executor.compile(prepare_fn(0.0, 1.0), prepare_fn(0.0, 1.0), "cross_entropy", 5)
    result = evaluate(calls, state, DeviceFeed(split, executor), batch_size=100)
    logits = model.apply({"params": state.params}, jnp.asarray(split.images, jnp.float32) / 255.0)
    expected = np.mean(np.argmax(np.asarray(logits), -1) == split.labels)
    assert result["count"] == 1001
    assert result["accuracy"] == pytest.approx(expected, abs=1e-7)
    assert result["loss"] == pytest.approx(float(loss_fn(logits, split.labels).mean()), rel=1e-5)


def test_eval_order_pads_with_a_zero_mask():
    order, mask = eval_order(7, 3)
    assert order.shape == (3, 3) and mask.sum() == 7
    assert sorted(order.ravel()[mask.ravel() > 0].tolist()) == list(range(7))


def test_epoch_order_depends_on_seed_and_epoch_and_drops_the_partial_batch():
    a = epoch_order(0, 1, 10, 3)
    assert a.shape == (3, 3) and len(set(np.asarray(a).ravel().tolist())) == 9
    assert np.array_equal(a, epoch_order(0, 1, 10, 3))
    assert not np.array_equal(a, epoch_order(0, 2, 10, 3))
    assert not np.array_equal(a, epoch_order(1, 1, 10, 3))


def test_early_stopping_waits_patience_epochs_after_the_best():
    stopping = EarlyStopping("val_loss", patience=2, min_delta=0.01)
    assert stopping.update(1.0, 1)
    assert not stopping.update(0.995, 2) and not stopping.should_stop  # within min_delta
    assert not stopping.update(1.2, 3) and stopping.should_stop
    accuracy = EarlyStopping("val_accuracy", patience=1, min_delta=0.0)
    assert accuracy.update(0.5, 1) and accuracy.update(0.6, 2) and not accuracy.update(0.6, 3)
    assert accuracy.best == 0.6 and accuracy.best_epoch == 2


def test_early_stopping_ends_the_run_and_records_it(tmp_path):
    summary = run(tmp_path, "w", FAST + ["num_epochs=10", "early_stopping.enabled=true",
                                         "early_stopping.patience=1", "early_stopping.min_delta=100.0"])
    assert summary["epochs_run"] == 2 and summary["stopped_early"]


def test_plateau_schedule_lowers_the_logged_learning_rate(tmp_path):
    run(tmp_path, "w", FAST + ["num_epochs=4", "schedule.name=plateau", "schedule.plateau_patience=1",
                               "schedule.plateau_factor=0.5", "schedule.plateau_min_delta=100.0"])
    rates = [r["learning_rate"] for r in read_jsonl(tmp_path / "w" / "metrics.jsonl") if r["event"] == "epoch"]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] < rates[0]


def test_batch_larger_than_the_training_split_fails(tmp_path):
    with pytest.raises(JaxcnnError, match="batch_size 5000 is larger than the training split"):
        run(tmp_path, "w", ["batch_size=5000"])


def test_workdir_that_is_a_file_fails(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(JaxcnnError, match="is a file"):
        run(tmp_path, "file", FAST)


def test_train_step_keeps_batch_stats_and_float32_params(tmp_path):
    summary = run(tmp_path, "w", ["model.name=vgg", "model.blocks=((8,), (16,))", "model.hidden=(16,)",
                                  "num_epochs=1", "schedule.name=constant"])
    assert summary["test_examples"] == 359


@requires_mnist
def test_seed_mlp_learns_mnist_in_one_epoch(tmp_path):
    summary = run(tmp_path, "w", ["num_epochs=1"], preset="mnist_mlp", data_dir=str(real_data_dir()))
    assert summary["test_examples"] == 10000
    assert summary["test_accuracy"] > 0.95

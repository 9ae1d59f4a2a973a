"""TensorBoard events of a run, read back with TensorBoard's own event reader."""

import sys

import pytest

from jaxcnn.config import load_config
from jaxcnn.errors import JaxcnnError
from jaxcnn.training.loop import train_and_evaluate
from jaxcnn.files.writers import MetricsWriter, read_jsonl

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard (in the `test` extra) reads the event files")

RUN = ["model.name=mlp", "model.hidden=(32,)", "num_epochs=2", "log_every_steps=4",
       "schedule.name=constant", "logging.tensorboard=true"]


def read_scalars(events_dir):
    accumulator = event_accumulator.EventAccumulator(str(events_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: accumulator.Scalars(tag) for tag in accumulator.Tags()["scalars"]}


def test_a_run_writes_every_logged_scalar_to_tensorboard_at_its_step(tmp_path):
    train_and_evaluate(load_config("digits_cnn", RUN), tmp_path / "w", quiet=True)
    records = read_jsonl(tmp_path / "w" / "metrics.jsonl")
    scalars = read_scalars(tmp_path / "w" / "events")

    train = [r for r in records if r["event"] == "train"]
    assert len(train) >= 4
    for field in ("loss", "accuracy", "learning_rate", "images_per_s"):
        events = scalars[f"train/{field}"]
        assert [e.step for e in events] == [r["step"] for r in train]
        assert [e.value for e in events] == pytest.approx([r[field] for r in train], rel=1e-6)

    epochs = [r for r in records if r["event"] == "epoch"]
    for field in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate"):
        events = scalars[f"epoch/{field}"]
        assert [e.step for e in events] == [r["step"] for r in epochs]
        assert [e.value for e in events] == pytest.approx([r[field] for r in epochs], rel=1e-6)

    test = next(r for r in records if r["event"] == "test")
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in scalars["test/test_accuracy"]] == [
        (test["step"], test["test_accuracy"])]


def test_tensorboard_is_off_by_default(tmp_path):
    assert load_config("digits_cnn").logging.tensorboard is False
    writer = MetricsWriter(tmp_path)
    writer.write({"event": "train", "step": 1, "loss": 0.5})
    writer.close()
    assert not (tmp_path / "events").exists()


def test_tensorboard_without_tensorboardx_is_a_user_error_before_the_workdir_is_used(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # makes `import tensorboardX` fail
    with pytest.raises(JaxcnnError, match=r"jaxcnn\[tensorboard\]"):
        MetricsWriter(tmp_path, tensorboard=True)
    assert not (tmp_path / "metrics.jsonl").exists()

"""Callbacks of the Python API and `Model.evaluate`: a callback stops a run (or one member), a
failing callback stops with a checkpoint and one line, and the run resumes; the README's examples run."""

import re

import numpy as np
import pytest

import jaxcnn
from conftest import REPO
from jaxcnn.config import load_config
from jaxcnn.errors import JaxcnnError
from jaxcnn.training.loop import train_and_evaluate

MLP = ["model.name=mlp", "model.hidden=(16,)", "log_every_steps=20"]


class StopAt(jaxcnn.Callback):
    """Records what it sees; stops (member `member`, or the run) at epoch `epoch`."""

    def __init__(self, epoch, member=None):
        self.epoch, self.member, self.seen, self.logs, self.info, self.summary = epoch, member, [], [], None, None

    def on_train_start(self, info):
        self.info = info

    def on_log(self, record):
        self.logs.append((record.get("member"), record["step"]))

    def on_epoch_end(self, record):
        self.seen.append((record.get("member"), record["epoch"]))
        return record["epoch"] == self.epoch and record.get("member") == self.member

    def on_train_end(self, summary):
        self.summary = summary


class Fails(jaxcnn.Callback):
    def on_log(self, record):
        if record["step"] >= 40:
            raise ValueError("no more")


def test_a_callback_sees_epochs_1_and_2_and_stops_the_run_at_2():
    callback = StopAt(2)
    model = jaxcnn.train("digits_cnn", MLP + ["num_epochs=4"], callbacks=[callback])
    assert callback.seen == [(None, 1), (None, 2)] and model.summary["epochs_run"] == 2
    assert model.summary["stopped_early"] and callback.summary == model.summary
    assert callback.info["start_step"] == 0 and callback.logs == [(None, 20), (None, 40), (None, 60), (None, 80)]


def test_a_callback_stops_one_member_and_the_others_train_on(tmp_path):
    callback = StopAt(1, member=1)
    summary = train_and_evaluate(load_config("digits_cnn", MLP + ["num_epochs=2", "seeds=2"]), tmp_path / "m",
                                 quiet=True, callbacks=[callback])
    assert [m["epochs_run"] for m in summary["members"]] == [2, 1]
    assert callback.seen == [(0, 1), (1, 1), (0, 2)]


def test_a_failing_callback_stops_with_a_checkpoint_and_one_line_and_the_same_command_resumes(tmp_path):
    config = load_config("digits_cnn", MLP + ["num_epochs=2"])
    with pytest.raises(jaxcnn.CallbackFailed) as failed:
        train_and_evaluate(config, tmp_path / "run", quiet=True, callbacks=[Fails()])
    line = str(failed.value)
    assert line.startswith("callback Fails.on_log raised ValueError: no more") and "\n" not in line
    assert "checkpoint saved" in line and isinstance(failed.value, JaxcnnError)
    assert not (tmp_path / "run" / "summary.json").exists()
    assert train_and_evaluate(config, tmp_path / "run", quiet=True)["steps"] == 80


def test_something_that_is_not_a_callback_is_refused_in_one_line(tmp_path):
    with pytest.raises(JaxcnnError, match=r"callbacks\[0\] must be a jaxcnn.Callback"):
        jaxcnn.train("digits_cnn", MLP, callbacks=[print], workdir=tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_model_evaluate_gives_the_runs_own_test_numbers_and_refuses_bad_labels():
    model = jaxcnn.train("digits_cnn", MLP + ["num_epochs=1", "max_steps=10"])
    test = jaxcnn.load_dataset("digits").test
    result = model.evaluate(test.images, test.labels)
    assert result["accuracy"] == pytest.approx(model.summary["test_accuracy"], abs=1e-6)
    assert result["loss"] == pytest.approx(model.summary["test_loss"], rel=1e-5)
    assert result["metrics"]["confusion_matrix"] == model.summary["test_metrics"]["confusion_matrix"]
    with pytest.raises(JaxcnnError, match="labels: 3 labels for"):
        model.evaluate(test.images, test.labels[:3])
    with pytest.raises(JaxcnnError, match="class 10 is out of range"):
        model.evaluate(test.images[:2], np.asarray([0, 10]))


def test_the_readme_examples_of_ema_callbacks_and_fine_tuning_run(tmp_path, monkeypatch):
    section = (REPO / "README.md").read_text().split("## EMA, callbacks and fine-tuning")[1].split("\n## ")[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 3 and all(len(b.strip().splitlines()) <= 6 for b in blocks)
    monkeypatch.chdir(tmp_path)
    code = "\n".join(blocks).replace('"digits_cnn", [', '"digits_cnn", FAST + [')
    namespace = {"FAST": ["model.name=tiny_cnn", "log_every_steps=20"]}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["model"].summary["epochs_run"] == 2
    assert np.array_equal(namespace["tuned"].params["Conv_0"]["kernel"], namespace["source"].params["Conv_0"]["kernel"])

"""`profile_steps` traces, the memory figures of summary.json, and `max_steps`."""

import gzip
import json

import pytest

from jaxcnn import cli
from jaxcnn.config import load_config
from jaxcnn.errors import JaxcnnError
from jaxcnn.training.loop import train_and_evaluate
from jaxcnn.training.profiling import Profiler
from jaxcnn.files.writers import read_jsonl, without_timing

# 7 steps per epoch (460 training examples, batch 64), a record every 2 steps.
TINY = ["dataset.name=synthetic", "dataset.image_shape=(8, 8, 1)", "dataset.num_train=512", "dataset.num_test=64",
        "model.name=mlp", "model.hidden=(16,)", "num_epochs=2", "log_every_steps=2", "batch_size=64",
        "schedule.name=constant", "optimizer.learning_rate=0.01"]


def train(workdir, *overrides):
    return train_and_evaluate(load_config("digits_cnn", TINY + list(overrides)), workdir, quiet=True)


def test_profile_steps_write_a_trace_and_the_summary_records_memory(tmp_path):
    summary = train(tmp_path / "w", "profile_steps=(3, 9)")  # across the end of the first epoch
    traces = list((tmp_path / "w" / "profile" / "plugins" / "profile").iterdir())
    assert len(traces) == 1
    names = {p.name for p in traces[0].iterdir()}
    assert "perfetto_trace.json.gz" in names and any(n.endswith(".xplane.pb") for n in names), names
    with gzip.open(traces[0] / "perfetto_trace.json.gz") as f:
        assert json.load(f)["traceEvents"]  # the JSON trace format Perfetto opens
    memory = summary["memory"]
    assert memory["peak_device_bytes"] is None  # XLA:CPU reports no device memory
    assert memory["peak_host_rss_bytes"] > 10 * 2**20
    call = memory["train_call"]
    assert call["argument"] > 0 and call["output"] > 0 and call["temp"] >= 0
    assert json.loads((tmp_path / "w" / "summary.json").read_text())["memory"] == memory


def test_the_memory_of_the_first_call_is_that_of_the_program_trained_with_or_compiled_for_a_finished_run(tmp_path):
    trained = train(tmp_path / "w")["memory"]["train_call"]
    (tmp_path / "w" / "summary.json").unlink()  # as if stopped while testing, its last step saved
    resumed = train(tmp_path / "w")  # resumed at its end: no training call, the program compiled for the report
    assert resumed["memory"]["train_call"] == trained and trained["argument"] > 0


def test_a_profile_range_ending_with_the_run_is_stopped_at_its_summary(tmp_path):
    train(tmp_path / "w", "profile_steps=(14, 14)", "num_epochs=2")
    assert (tmp_path / "w" / "profile").is_dir()


@pytest.mark.parametrize("value, expected", [
    ("(3, 2)", "profile_steps must be"), ("abc", "profile_steps must be"), ("(0, 2)", "profile_steps must be"),
    ("(1, 2, 3)", "profile_steps must be"), ("(5, 15)", "goes beyond the run's 14 training steps"),
    ("(3, 8)", "goes beyond the run's 7 training steps (7 per epoch x 2 epochs, max_steps 7)"),
])
def test_bad_profile_steps_are_one_line_and_exit_2_before_training(tmp_path, capsys, value, expected):
    workdir = tmp_path / "w"
    argv = ["train", "--workdir", str(workdir), f"--config.profile_steps={value}",
            *[f"--config.{o}" for o in TINY], *(["--config.max_steps=7"] if "max_steps" in expected else [])]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert not (workdir / "metrics.jsonl").exists()


def test_a_profiler_without_range_does_nothing(tmp_path):
    profiler = Profiler(load_config("digits_cnn", TINY), tmp_path, steps_per_epoch=7)
    profiler.before_call(0, 7, None)
    profiler.stop()
    assert not profiler.enabled and not (tmp_path / "profile").exists()


def test_max_steps_stops_mid_epoch_then_tests_and_summarises(tmp_path):
    full = train(tmp_path / "full")
    short = train(tmp_path / "short", "max_steps=10")
    assert (short["steps"], short["epochs_run"]) == (10, 2) and full["steps"] == 14
    records = lambda name: [without_timing(r) for r in read_jsonl(tmp_path / name / "metrics.jsonl")]
    trains = lambda rs: [r for r in rs if r["event"] == "train"]
    assert trains(records("short")) == [r for r in trains(records("full")) if r["step"] <= 10]
    assert records("short")[-1]["event"] == "test" and "10" in {p.name for p in (tmp_path / "short" / "checkpoints").iterdir()}


def test_max_steps_must_be_a_non_negative_integer():
    with pytest.raises(JaxcnnError, match=r"max_steps must be a whole number >= 0 \(0: off\), got -1"):
        load_config("digits_cnn", ["max_steps=-1"])

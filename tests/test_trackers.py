"""Experiment trackers (config.logging.csv, .mlflow, .wandb): what metrics.jsonl holds, sent on;
a missing or failing tracker costs one line, never the run. MLflow and W&B run offline here (the
file store, WANDB_MODE=offline) and are skipped where their extra is not installed."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys

import pytest

from jaxcnn.config import load_config
from jaxcnn.files import trackers
from jaxcnn.files.writers import read_jsonl
from jaxcnn.training.loop import train_and_evaluate

RUN = ["model.name=mlp", "model.hidden=(16,)", "num_epochs=1", "max_steps=10", "log_every_steps=5"]
needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                                  reason="mlflow is not installed (pip install 'jaxcnn[mlflow]')")
needs_wandb = pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                                 reason="wandb is not installed (pip install 'jaxcnn[wandb]')")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """MLflow's file store and W&B's offline mode in `tmp_path`: no network, no home folder."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    return tmp_path


def csv_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def mlflow_metric(mlruns, name):
    """(step, value) pairs of metric `name` in the only run of the file store at `mlruns`."""
    files = list(mlruns.glob(f"*/*/metrics/{name}"))
    assert len(files) == 1, files
    return [(int(step), float(value)) for _, value, step in (line.split() for line in files[0].read_text().splitlines())]


def test_the_csv_tracker_writes_one_row_per_record_of_metrics_jsonl(tmp_path):
    train_and_evaluate(load_config("digits_cnn", RUN + ["logging.csv=true"]), tmp_path / "w", quiet=True)
    records = read_jsonl(tmp_path / "w" / "metrics.jsonl")
    rows = csv_rows(tmp_path / "w" / "metrics.csv")
    assert [r["event"] for r in rows] == [r["event"] for r in records] == ["train", "train", "epoch", "test"]
    for row, record in zip(rows, records):
        assert {k: float(v) for k, v in row.items() if v and k != "event"} == pytest.approx(
            {k: float(v) for k, v in record.items() if k != "event"})


def test_a_reopened_csv_tracker_rebuilds_its_file_from_metrics_jsonl_as_a_resumed_run_does(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"event": "train", "step": 1, "loss": 2.5}\n')
    tracker = trackers.CsvTracker(tmp_path, {})
    tracker.log({"event": "epoch", "step": 2, "val_loss": 1.5})
    assert csv_rows(tmp_path / "metrics.csv") == [
        {"event": "train", "step": "1", "loss": "2.5", "val_loss": ""},
        {"event": "epoch", "step": "2", "loss": "", "val_loss": "1.5"}]


def test_a_missing_tracker_library_is_one_warning_and_the_run_finishes(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    summary = train_and_evaluate(load_config("digits_cnn", RUN + ["logging.mlflow=true"]), tmp_path / "w", quiet=True)
    assert summary["test_accuracy"] > 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "logging.mlflow" in line]
    assert len(lines) == 1 and "pip install 'jaxcnn[mlflow]'" in lines[0]


def test_a_tracker_that_fails_during_the_run_is_dropped_with_one_warning(tmp_path, capsys):
    class Broken:
        name = "broken"

        def log(self, record):
            raise ConnectionError("tracking server down")

    group = trackers.Trackers(tmp_path, ["csv"], {})
    group.active.append(Broken())
    for step in (1, 2):
        group.log({"event": "train", "step": step, "loss": 1.0})
    group.close()
    assert capsys.readouterr().err.count("logging.broken failed (ConnectionError: tracking server down)") == 1
    assert len(csv_rows(tmp_path / "metrics.csv")) == 2


def test_tracker_metric_names_say_the_event_and_for_members_the_member():
    assert trackers.scalars({"event": "train", "epoch": 1, "step": 4, "loss": 0.5, "accuracy": 1}) == {
        "train/loss": 0.5, "train/accuracy": 1.0}
    assert trackers.scalars({"event": "epoch", "member": 1, "step": 4, "val_loss": 0.25}) == {
        "epoch/member_1/val_loss": 0.25}


@needs_mlflow
def test_the_mlflow_file_store_holds_the_metrics_the_config_and_the_artifacts(offline):
    workdir = offline / "w"
    train_and_evaluate(load_config("digits_cnn", RUN + ["logging.mlflow=true"]), workdir, quiet=True)
    train = [r for r in read_jsonl(workdir / "metrics.jsonl") if r["event"] == "train"]
    assert mlflow_metric(offline / "mlruns", "train/loss") == [(r["step"], pytest.approx(r["loss"])) for r in train]
    summary = json.loads((workdir / "summary.json").read_text())
    assert mlflow_metric(offline / "mlruns", "summary/test_accuracy")[0][1] == pytest.approx(summary["test_accuracy"])
    run = next((offline / "mlruns").glob("*/*/artifacts")).parent
    assert (run / "params" / "model.name").read_text() == "mlp"
    assert {p.name for p in (run / "artifacts").iterdir()} >= {"config.json", "summary.json", "metrics.jsonl"}


@needs_wandb
def test_wandb_offline_mode_writes_its_run_folder_in_the_workdir(offline):
    workdir = offline / "w"
    train_and_evaluate(load_config("digits_cnn", RUN + ["logging.wandb=true"]), workdir, quiet=True)
    runs = list((workdir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert json.loads((workdir / "trackers.json").read_text())["wandb"] in runs[0].name

"""`jaxcnn bench --to-accuracy`: time to a test accuracy per seed, as JSON, on the bundled digits."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from jaxcnn.bench import accuracy as bench_accuracy
from jaxcnn.bench.accuracy import AccuracySettings
from jaxcnn.errors import JaxcnnError

FAST = ["--config.model.name=mlp", "--config.model.hidden=(32,)", "--config.num_epochs=3"]
ROW_FIELDS = {"seed", "reached", "target", "accuracy", "best_accuracy", "steps", "epochs", "train_s", "eval_s",
              "compile_s", "compile_cache_hit", "wall_s", "train_images_per_s", "evaluations"}


def test_two_seeds_in_their_own_processes_reach_a_low_target_and_report_every_field(tmp_path):
    out = tmp_path / "acc.json"
    result = subprocess.run([sys.executable, "-m", "jaxcnn.cli", "bench", "--to-accuracy", "0.5", "--seeds", "2",
                             "--seed", "3", "--eval-every", "5", "--json", str(out), *FAST],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    rows, summary = report["results"], report["summary"]
    assert [row["seed"] for row in rows] == [3, 4] and report["env"]["config"]["target"] == 0.5
    for row in rows:
        assert ROW_FIELDS <= set(row)
        assert row["reached"] and row["accuracy"] >= 0.5 and row["accuracy"] == row["evaluations"][-1][1]
        assert row["steps"] % 5 == 0 and 0 < row["steps"] == row["evaluations"][-1][0]
        assert row["epochs"] == pytest.approx(row["steps"] / row["steps_per_epoch"])
        assert all(accuracy < 0.5 for _, accuracy in row["evaluations"][:-1])  # stopped at the first
        assert 0 < row["train_s"] < row["wall_s"] and row["compile_s"] > 0 and row["eval_s"] > 0
        assert row["wall_s"] > row["train_s"] + row["compile_s"]  # Python's start-up and imports too
    assert rows[1]["compile_cache_hit"] is True  # the first seed's process filled the cache
    assert summary["reached"] == 2 and summary["all_reached"] and summary["seeds"] == 2
    for key in ("train_s", "wall_s", "compile_s", "steps", "epochs", "accuracy"):
        values = [row[key] for row in rows]
        assert summary[key] == {"median": pytest.approx(sum(values) / 2), "min": min(values), "max": max(values)}
    assert "| median | 2/2 |" in result.stdout


def test_a_target_not_reached_reports_the_whole_run_in_this_process():
    overrides = tuple(o.removeprefix("--config.") for o in FAST[:2]) + ("num_epochs=1", "schedule.name=constant")
    settings = AccuracySettings(0.999, overrides=overrides, seeds=1, isolate=False)
    outcome = bench_accuracy.run_to_accuracy(settings)
    row = outcome["results"][0]
    assert not row["reached"] and outcome["summary"]["reached"] == 0
    assert row["steps"] == row["steps_per_epoch"] and row["epochs"] == 1.0
    assert [step for step, _ in row["evaluations"]] == [0, 10, 20, 30, 40]  # four per epoch, and the end
    assert row["best_accuracy"] == max(accuracy for _, accuracy in row["evaluations"])


@pytest.mark.parametrize("changes,message", [
    ({"target": 1.5}, "--to-accuracy must be a test accuracy in"), ({"seeds": 0}, "--seeds must be"),
    ({"eval_every": -1}, "--eval-every must be"),
    ({"overrides": ("num_epoch=2",)}, "unknown config key 'num_epoch'")])
def test_bad_settings_are_one_line_errors_before_any_training(changes, message):
    with pytest.raises(JaxcnnError, match=message):
        bench_accuracy.run_to_accuracy(AccuracySettings(**{"target": 0.9, **changes}))


def test_config_overrides_without_to_accuracy_are_refused_in_one_line():
    result = subprocess.run([sys.executable, "-m", "jaxcnn.cli", "bench", "--config.num_epochs=2"], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "jaxcnn: error: --config and --config.KEY=VALUE apply to --to-accuracy TARGET only"]


def test_process_age_counts_from_the_start_of_the_process():
    age = bench_accuracy.process_age()
    assert 0 < age < 3600

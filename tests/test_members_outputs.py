"""What a run of members writes and what reads it: `jaxcnn report` (mean ± std bands, the table per
sweep value) and `jaxcnn compare` (paired differences over seeds)."""

import json

import pytest
from scipy import stats as scipy_stats

from jaxcnn.cli import main
from jaxcnn.config import load_config
from jaxcnn.training.loop import train_and_evaluate
from jaxcnn.files.writers import read_jsonl

BASE = ["model.name=mlp", "model.hidden=(16,)", "schedule.name=constant", "num_epochs=2", "log_every_steps=20"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    slow = train_and_evaluate(load_config("digits_cnn", BASE + ["seeds=4"]), root / "slow", quiet=True)
    sweep = train_and_evaluate(load_config("digits_cnn", BASE + ["seeds=4", "sweep.optimizer.learning_rate=(0.003, 0.01)"]),
                               root / "sweep", quiet=True)
    single = train_and_evaluate(load_config("digits_cnn", BASE + ["seed=2"]), root / "single", quiet=True)
    return root, slow, sweep, single


def test_metrics_records_of_members_carry_the_member(runs):
    records = read_jsonl(runs[0] / "slow" / "metrics.jsonl")
    assert {r["member"] for r in records} == {0, 1, 2, 3}
    assert sum(r["event"] == "epoch" for r in records) == 8 and sum(r["event"] == "test" for r in records) == 4


def test_report_of_a_sweep_draws_bands_and_the_sweep_and_tables_each_sweep_value(runs, tmp_path, capsys):
    assert main(["report", str(runs[0] / "sweep"), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert (tmp_path / "report" / "members_curves.png").stat().st_size > 10_000
    assert (tmp_path / "report" / "sweep.png").stat().st_size > 10_000
    group = runs[2]["aggregate"][1]["metrics"]["test_accuracy"]
    row = next(line for line in text.splitlines() if line.startswith("| learning_rate=0.01 |"))
    assert f"{100 * group['mean']:.2f}% ± {100 * group['std']:.2f}%" in row and "| 0, 1, 2, 3 |" in row
    assert text.count("| learning_rate=0.003 |") == 1 + 4  # the aggregate row and one per member


def test_compare_pairs_the_members_by_seed_and_matches_scipys_paired_t_test(runs, capsys):
    root, slow, sweep, _ = runs
    assert main(["compare", str(root / "sweep"), str(root / "slow"), "--json", "-"]) == 2  # a sweep against no sweep
    assert "swept optimizer.learning_rate (2 values)" in capsys.readouterr().err
    assert main(["compare", str(root / "slow"), str(root / "single"), "--json", "-"]) == 0
    (group,) = json.loads(capsys.readouterr().out)["groups"]
    assert group["seeds"] == [2] and group["metrics"]["test_accuracy"]["p_value"] is None  # one pair: no test
    fast = train_and_evaluate(load_config("digits_cnn", BASE + ["seeds=(3, 2, 1, 0)", "optimizer.learning_rate=0.01"]),
                              root / "fast", quiet=True)
    assert main(["compare", str(root / "fast"), str(root / "slow"), "--json", "-"]) == 0
    (group,) = json.loads(capsys.readouterr().out)["groups"]
    by_seed = lambda summary: [m["test_accuracy"] for m in sorted(summary["members"], key=lambda m: m["seed"])]
    expected = scipy_stats.ttest_rel(by_seed(fast), by_seed(slow))
    result = group["metrics"]["test_accuracy"]
    assert sorted(group["seeds"]) == [0, 1, 2, 3]
    assert result["t"] == pytest.approx(expected.statistic) and result["p_value"] == pytest.approx(expected.pvalue)
    assert main(["compare", str(root / "fast"), str(root / "slow")]) == 0
    assert "test_accuracy" in capsys.readouterr().out


def test_compare_refuses_runs_without_a_common_seed_in_one_line(runs, tmp_path, capsys):
    other = train_and_evaluate(load_config("digits_cnn", BASE + ["num_epochs=1", "seed=9"]), tmp_path / "other",
                               quiet=True)
    assert other["seed"] == 9
    assert main(["compare", str(runs[0] / "slow"), str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "share no seed; train both on the same seeds" in err and err.count("\n") == 1


def test_bench_seeds_measures_members_against_the_single_run_in_one_run(capsys):
    from jaxcnn.bench.throughput import BenchSettings
    from jaxcnn.bench.seeds import format_seeds_table, run_seeds_benchmark

    settings = BenchSettings(models=("mlp",), batch_sizes=(16,), min_time=0.05, repeats=2, steps_per_call=2,
                             fingerprint_steps=2, num_test=16)
    outcome = run_seeds_benchmark(settings, 3)
    (row,) = outcome["results"]
    assert row["members"] == 3 and outcome["env"]["seeds"] == 3
    assert row["members_member_images_per_s"] > 0 and row["sequential_member_images_per_s"] > 0
    assert row["speedup_vs_sequential"] > 0 and "× sequential" in format_seeds_table(outcome["results"])
    assert main(["bench", "--seeds", "0", "--model", "mlp"]) == 2
    assert "--seeds must be a whole number of seeds >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["eval", "export", "predict"])
def test_eval_predict_and_export_of_a_run_of_members_need_a_member_in_one_line(command, runs, tmp_path, capsys):
    import numpy as np
    np.save(tmp_path / "digit.npy", np.zeros((8, 8), np.uint8))
    args = [command, "--workdir", str(runs[0] / "slow")] + ([str(tmp_path / "digit.npy")] if command == "predict" else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxcnn: error: ") and err.count("\n") == 1 and "--member K (0 to 3)" in err
    assert main(args + ["--member", "4"]) == 2
    assert "--member must be a member of the run, 0 to 3, got 4" in capsys.readouterr().err


def test_eval_of_a_member_gives_the_test_numbers_its_run_recorded(runs, tmp_path, capsys):
    root, slow = runs[0], runs[1]
    assert main(["eval", "--workdir", str(root / "slow"), "--member", "2", "--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    member = slow["members"][2]
    assert result["seed"] == member["seed"] == 2
    assert result["test_accuracy"] == pytest.approx(member["test_accuracy"], abs=1e-6)
    assert result["test_loss"] == pytest.approx(member["test_loss"], abs=1e-5)
    out = tmp_path / "m1.jaxexport"
    assert main(["export", "--workdir", str(root / "slow"), "--member", "1", "--out", str(out)]) == 0
    assert out.is_file()


def test_a_run_of_members_writes_each_members_predictions_and_certificate_and_verifies_bitwise(runs, capsys):
    root = runs[0]
    certificate = json.loads((root / "sweep" / "certificate.json").read_text())
    assert [m["member"] for m in certificate["members"]] == list(range(8))
    assert all((root / "sweep" / "members" / str(m) / "predictions.npz").is_file() for m in range(8))
    assert main(["verify", str(root / "slow")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "bitwise"

"""`jaxcnn bench`: the JSON report holds every field, and the fingerprint repeats across runs."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from jaxcnn.bench import throughput as bench
from jaxcnn.errors import JaxcnnError

RESULT_FIELDS = {"model", "mode", "batch_size", "dtype", "train_images_per_s", "eval_images_per_s",
                 "compile_s", "warm_compile_s", "peak_rss_mb", "flops_per_image", "gflops", "peak_pct", "fingerprint"}
TINY = ["--model", "mlp", "--batch-size", "16", "--min-time", "0.05", "--repeats", "1",
        "--steps-per-call", "4", "--fingerprint-steps", "6", "--num-train", "256", "--num-test", "64"]


def run_bench(tmp_path, name):
    out = tmp_path / f"{name}.json"
    result = subprocess.run([sys.executable, "-m", "jaxcnn.cli", "bench", *TINY, "--json", str(out)],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                            text=True, check=True)
    return json.loads(out.read_text()), result.stdout


def test_bench_json_holds_every_field_and_the_same_fingerprint_on_two_runs(tmp_path):
    first, table = run_bench(tmp_path, "a")
    second, _ = run_bench(tmp_path, "b")
    env = first["env"]
    assert {"device_kind", "versions", "seed", "config"} <= set(env)
    assert env["versions"]["jax"] and env["config"]["steps_per_call"] == 4 and env["matmul_peak_gflops"] > 0
    assert [r["mode"] for r in first["results"]] == ["baseline", "step", "fused"]
    for row in first["results"]:
        assert RESULT_FIELDS <= set(row)
        assert row["train_images_per_s"] > 0 and row["eval_images_per_s"] > 0
        assert row["compile_s"] > 0 and row["warm_compile_s"] > 0 and row["peak_rss_mb"] > 0
        assert row["flops_per_image"] > 0 and row["gflops"] > 0 and 0 < row["peak_pct"] == pytest.approx(
            100 * row["gflops"] / env["matmul_peak_gflops"])
    assert all("autotune" in row for row in first["results"][1:])  # jaxcnn's modes: the plan `train` uses
    fingerprints = lambda report: [r["fingerprint"] for r in report["results"]]
    assert fingerprints(first) == fingerprints(second)
    # Same seed, same data, same init: jaxcnn's two modes train exactly the same steps.
    assert first["results"][1]["fingerprint"] == first["results"][2]["fingerprint"]
    assert "| mlp | fused | 16 | float32 |" in table


def test_bench_rejects_an_unknown_mode():
    with pytest.raises(JaxcnnError, match="--mode"):
        bench.check_settings(bench.BenchSettings(modes=("eager",)))


def test_timed_rate_repeats_for_at_least_min_time_and_reports_the_median():
    calls = []
    rate = bench.timed_rate(lambda: calls.append(1) or 10, lambda: None, min_time=0.01, repeats=3)
    assert rate > 0 and len(calls) >= 3


def test_the_jaxcnn_modes_time_the_program_that_trainings_setup_builds_for_the_equivalent_config(monkeypatch):
    from jaxcnn.bench import workload
    from jaxcnn.training import run

    built = []

    def recording_setup(*args, **kwargs):
        built.append(run.setup(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(workload, "setup", recording_setup)
    settings = bench.BenchSettings(models=("tiny_cnn",), modes=("step", "fused"), batch_sizes=(16,), min_time=0.01,
                                   repeats=1, steps_per_call=4, fingerprint_steps=6, num_train=256, num_test=64,
                                   conv_impl="shift")
    rows = bench.run_benchmark(settings)["results"]
    assert [p.config.steps_per_call for p in built] == [1, 4]  # one program per jaxcnn mode, from setup
    for program in built:  # the settings reach the program as config keys that setup honours
        config = program.config
        assert config.model.conv_impl == "shift" and (config.batch_size, config.eval_batch_size) == (16, 64)
        assert (config.optimizer.name, config.optimizer.learning_rate, config.optimizer.momentum) == (
            "sgd", bench.LEARNING_RATE, bench.MOMENTUM) and config.schedule.name == "constant"
        assert len(program.dataset.train.labels) == 256 and len(program.dataset.val.labels) == 0
        assert program.feeds["train"].kind == "device" and not program.stacked
    # The rows report the plan setup chose, and both modes train exactly the same steps.
    assert [row["autotune"] for row in rows] == [p.tuned.to_json() for p in built]
    assert rows[0]["fingerprint"] == rows[1]["fingerprint"]

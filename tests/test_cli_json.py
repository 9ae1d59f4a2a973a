"""`--json PATH` means the same in every command that has it: PATH is a file, written atomically,
or `-` for standard output, which then holds the JSON alone (the text goes to standard error)."""

import json

import numpy as np
import pytest

from cli_run import run_cli
from jaxcnn.config import load_config
from jaxcnn.training.loop import train_and_evaluate

TINY_RUN = ["model.name=mlp", "model.hidden=(16,)", "schedule.name=constant", "num_epochs=1", "seed=2"]
TINY_BENCH = ["--model", "mlp", "--mode", "step", "--batch-size", "16", "--min-time", "0.02", "--repeats", "1",
              "--steps-per-call", "2", "--fingerprint-steps", "2", "--num-train", "64", "--num-test", "32"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny finished run on the embedded digits, and an image for predict."""
    root = tmp_path_factory.mktemp("json")
    train_and_evaluate(load_config("digits_cnn", TINY_RUN), root / "run", quiet=True)
    np.save(root / "image.npy", np.full((8, 8), 200, np.uint8))
    return root


def commands(root):
    """The commands with --json that read a run, each given the tiny run: name -> argv."""
    workdir, image = str(root / "run"), str(root / "image.npy")
    return {"eval": ["eval", "--workdir", workdir],
            "predict": ["predict", "--workdir", workdir, "--top", "2", image],
            "compare": ["compare", workdir, workdir]}


@pytest.mark.parametrize("command", ["eval", "predict", "compare"])
def test_json_dash_prints_the_json_alone_and_json_file_writes_the_same_text(run, command, tmp_path, capsys):
    argv = commands(run)[command]
    code, out, err = run_cli(capsys, *argv, "--json", "-")
    assert code == 0, err
    json.loads(out)  # standard output is the JSON alone
    assert err.strip()  # the text report, on standard error
    code, text, err = run_cli(capsys, *argv, "--json", tmp_path / "out.json")
    assert code == 0, err
    assert (tmp_path / "out.json").read_text() == out
    assert text.strip() and not text.lstrip().startswith(("{", "["))  # the text report, as without --json
    assert not list(tmp_path.glob("*.tmp*"))  # written through a temporary file, renamed


def test_eval_json_is_keyed_as_summary_json(run, capsys):
    code, out, err = run_cli(capsys, "eval", "--workdir", run / "run", "--json", "-")
    summary = json.loads((run / "run" / "summary.json").read_text())
    assert code == 0 and json.loads(out)["test_accuracy"] == summary["test_accuracy"], err


def test_bench_json_dash_prints_the_results_and_the_table_goes_to_stderr(tmp_path, capsys):
    code, out, err = run_cli(capsys, "bench", *TINY_BENCH, "--json", "-")
    assert code == 0, err
    printed = json.loads(out)
    assert [row["mode"] for row in printed["results"]] == ["step"] and "| mlp | step | 16 |" in err
    code, table, err = run_cli(capsys, "bench", *TINY_BENCH, "--json", tmp_path / "bench.json")
    assert code == 0, err
    written = json.loads((tmp_path / "bench.json").read_text())
    assert written["results"][0]["fingerprint"] == printed["results"][0]["fingerprint"]
    assert "| mlp | step | 16 |" in table


@pytest.mark.parametrize("command", ["eval", "predict", "compare", "bench"])
def test_json_into_a_missing_folder_is_one_line_before_any_work(run, command, tmp_path, capsys):
    argv = commands(run).get(command, ["bench", *TINY_BENCH])
    code, out, err = run_cli(capsys, *argv, "--json", tmp_path / "missing" / "out.json")
    assert code == 2 and not out
    assert err.count("\n") == 1 and "--json" in err and str(tmp_path / "missing") in err

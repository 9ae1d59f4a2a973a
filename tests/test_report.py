"""`jaxcnn report` on short digits runs: the PNG figures, report.md, the comparison of runs,
and the test metrics and predictions a run leaves for it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from jaxcnn.config import load_config
from jaxcnn.training.loop import train_and_evaluate

Image = pytest.importorskip("PIL.Image", reason="Pillow (a matplotlib dependency) reads the PNGs")
report = pytest.importorskip("jaxcnn.report.markdown")
pytest.importorskip("matplotlib", reason="matplotlib is in the `report` and `test` extras")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN = ["model.name=mlp", "model.hidden=(32,)", "num_epochs=3", "log_every_steps=4",
       "eval_batch_size=100", "schedule.name=constant", "optimizer.learning_rate=0.003"]
TEST_SIZE = 359


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        train_and_evaluate(load_config("digits_cnn", RUN + [f"seed={seed}"]), root / f"seed{seed}", quiet=True)
    return root / "seed0", root / "seed1"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "jaxcnn.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ))


def assert_readable_png(path, size_inches):
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as image:
        assert image.size == (round(size_inches[0] * report.DPI), round(size_inches[1] * report.DPI)), path
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 1, f"{path} is blank"


def test_confusion_matrix_sums_to_the_test_size_and_agrees_with_the_test_accuracy(runs):
    summary = json.loads((runs[0] / "summary.json").read_text())
    metrics = summary["test_metrics"]
    confusion = np.array(metrics["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == TEST_SIZE == summary["test_examples"]
    assert metrics["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
    assert [c["support"] for c in metrics["per_class"]] == confusion.sum(axis=1).tolist()
    assert 0.0 <= metrics["expected_calibration_error"] <= 1.0 and metrics["ece_bins"] == 15
    assert metrics["top5_accuracy"] >= metrics["accuracy"]
    test_record = json.loads((runs[0] / "metrics.jsonl").read_text().splitlines()[-1])
    assert test_record["test_expected_calibration_error"] == metrics["expected_calibration_error"]


def test_predictions_file_loads_without_pickle_and_holds_the_confident_mistakes(runs):
    with np.load(runs[0] / "predictions.npz", allow_pickle=False) as npz:
        labels, predicted, confidence = npz["labels"], npz["predicted"], npz["confidence"]
        mistakes, images = npz["mistake_indices"], npz["mistake_images"]
        assert npz["class_names"].tolist() == [str(d) for d in range(10)]
    assert len(labels) == len(predicted) == len(confidence) == TEST_SIZE
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert np.mean(labels == predicted) == pytest.approx(summary["test_accuracy"], abs=1e-6)
    assert len(mistakes) == min(25, int(np.sum(labels != predicted))) > 0
    assert np.all(labels[mistakes] != predicted[mistakes])
    assert np.all(np.diff(confidence[mistakes]) <= 0)
    assert images.shape == (len(mistakes), 8, 8, 1) and images.dtype == np.uint8


def test_report_on_a_digits_run_writes_each_png_and_report_md(runs):
    result = cli("report", str(runs[0]))
    assert result.returncode == 0, result.stderr
    plots = runs[0] / "plots"
    with np.load(runs[0] / "predictions.npz", allow_pickle=False) as npz:
        mistakes = len(npz["mistake_indices"])
    expected = {**{name: size for name, size in report.FIGURE_SIZES.items() if name != "compare_validation"},
                "confident_mistakes": report.mistakes_figure_size(mistakes)}
    assert {p.stem for p in plots.glob("*.png")} == set(expected)
    for name, size in expected.items():
        assert_readable_png(plots / f"{name}.png", size)
    markdown = (plots / "report.md").read_text()
    for name in expected:
        assert f"]({name}.png)" in markdown
    assert "| 0 |" in markdown and "macro average" in markdown  # the per-class table
    assert str(plots / "report.md") in result.stdout


def test_report_on_several_runs_overlays_validation_curves_and_compares_summaries(runs, tmp_path):
    markdown_path = report.write_report(runs, tmp_path / "cmp")
    assert markdown_path == tmp_path / "cmp" / "report.md"
    assert_readable_png(tmp_path / "cmp" / "compare_validation.png", report.FIGURE_SIZES["compare_validation"])
    markdown = markdown_path.read_text()
    table = [line for line in markdown.splitlines() if line.startswith("| seed")]
    assert len(table) == 2 and "| mlp | digits |" in table[0]
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        assert f"{100 * summary['test_accuracy']:.2f}%" in markdown
        assert (tmp_path / "cmp" / run.name / "confusion_matrix.png").is_file()
        assert f"]({run.name}/confusion_matrix.png)" in markdown


def test_report_on_a_folder_that_is_not_a_workdir_is_a_one_line_error(tmp_path):
    result = cli("report", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "metrics.jsonl" in result.stderr

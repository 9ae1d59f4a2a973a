"""Bad inputs and outputs in the way, as one table: each ends in one line on stderr, exit status 2,
no traceback, and leaves every file it could touch unchanged (sha256 before and after).

The cases run `jaxcnn.cli.main` in this process (fast: one small trained run serves them all), with
stderr captured at the file-descriptor level and Python warnings counted as stderr lines (a
warning prints a line in the real command). `test_a_case_run_as_a_real_command_...` runs some of
them as real `jaxcnn` subprocesses too.
"""

import hashlib
import io
import json
import os
import pathlib
import pickle
import shutil
import struct
import subprocess
import sys
import types
import warnings
import zlib

import numpy as np
import pytest

from conftest import REPO, start_capture
from jaxcnn import cli
from jaxcnn.config import load_config
from jaxcnn.training.loop import train_and_evaluate
from jaxcnn.commands.saved import load_saved_model, predict

Image = pytest.importorskip("PIL.Image", reason="predict reads images with Pillow")

# A tiny run: 8x8 grey synthetic images, an MLP, one epoch (checkpointed: eval and predict need it).
RUN = ["dataset.name=synthetic", "dataset.image_shape=(8, 8, 1)", "dataset.num_train=64", "dataset.num_test=32",
       "model.name=mlp", "model.hidden=(8,)", "num_epochs=1", "batch_size=16", "eval_batch_size=32",
       "schedule.name=constant"]


def png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def png_declaring_size(width, height):
    """A valid 1x1 PNG whose header says width x height: Pillow reads the size without decoding."""
    data = bytearray(png_bytes(np.zeros((1, 1), np.uint8)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # the IHDR chunk's CRC
    return bytes(data)


def write_bad_inputs(folder, run):
    """Every bad predict input, and damaged copies of `run` (without its checkpoints) for report."""
    folder.mkdir()
    image = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    np.save(folder / "empty.npy", np.zeros((0, 8), np.uint8))
    np.save(folder / "empty_rgb.npy", np.zeros((8, 0, 3), np.uint8))
    np.save(folder / "nan.npy", np.where(image > 128, np.nan, image.astype(np.float32)))
    np.save(folder / "inf.npy", np.full((8, 8), np.inf, np.float64))
    np.save(folder / "object.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    (folder / "pickled.npy").write_bytes(pickle.dumps([[0, 1], [2, 3]]))
    np.savez(folder / "archive.npz", a=image)
    shutil.copy(folder / "archive.npz", folder / "archive.npy")
    np.save(folder / "good.npy", image)
    (folder / "truncated.npy").write_bytes((folder / "good.npy").read_bytes()[:100])
    np.save(folder / "bool.npy", image > 100)
    np.save(folder / "complex.npy", image.astype(np.complex64))
    np.save(folder / "too_bright.npy", image.astype(np.int32) + 300)
    np.save(folder / "four_dims.npy", np.zeros((2, 8, 8, 1), np.uint8))
    huge = np.lib.format.open_memmap(folder / "huge.npy", mode="w+", dtype=np.uint8, shape=(8001, 8001))
    del huge  # a sparse file: 64 MB apparent, nothing on the disk
    (folder / "bomb.png").write_bytes(png_declaring_size(20_000, 20_000))  # over Pillow's own error limit
    (folder / "pillow_warns.png").write_bytes(png_declaring_size(10_000, 10_000))  # Pillow only warns
    (folder / "over_limit.png").write_bytes(png_declaring_size(9_000, 9_000))  # under Pillow's limits
    good_png = png_bytes(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8))
    (folder / "truncated.png").write_bytes(good_png[:len(good_png) // 2])
    (folder / "garbage.png").write_bytes(np.random.default_rng(2).bytes(500))
    (folder / "postscript.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 3])
    (folder / "folder.png").mkdir()
    (folder / "image.svg").write_bytes(b"<svg/>")
    (folder / "a_file").write_text("not a folder\n")
    (folder / "results").mkdir()
    damage_copies_of(run, folder)
    damaged = shutil.copytree(run, folder / "damaged_checkpoint")
    for chunk in (damaged / "checkpoints").rglob("*"):
        if chunk.is_file() and chunk.parent.name == "d":  # tensorstore's data files
            chunk.write_bytes(np.random.default_rng(5).bytes(80))


def damage_copies_of(run, folder):
    def copy(name, file, text=None, data=None):
        target = folder / name
        shutil.copytree(run, target, ignore=shutil.ignore_patterns("checkpoints"))
        if text is not None:
            (target / file).write_text(text)
        if data is not None:
            (target / file).write_bytes(data)
        return target

    first, rest = (run / "metrics.jsonl").read_text().split("\n", 1)
    second = lambda line: f"{first}\n{line}\n{rest}"  # the bad record on line 2
    copy("metrics_list", "metrics.jsonl", second("[1, 2]"))
    copy("metrics_string", "metrics.jsonl", f'"epoch"\n{first}\n{rest}')
    copy("metrics_bad_json", "metrics.jsonl", second('{"event": "test", '))
    copy("metrics_no_step", "metrics.jsonl", second('{"event": "epoch", "epoch": 2, "train_loss": 1.0, '
                                                    '"train_accuracy": 0.5}'))
    copy("metrics_text_loss", "metrics.jsonl", '{"event": "train", "step": 4, "loss": "low", "accuracy": 1}\n')
    copy("metrics_binary", "metrics.jsonl", data=b"\xff\xfe\x00garbage\n")
    copy("summary_list", "summary.json", "[1, 2, 3]\n")
    copy("summary_bad_json", "summary.json", '{"test_accuracy": 0.5,')
    copy("summary_text_accuracy", "summary.json", '{"test_accuracy": "high"}')
    summary = (run / "summary.json").read_text()
    copy("summary_bad_confusion", "summary.json", summary.replace('"confusion_matrix": [', '"confusion_matrix": [[1], '))
    copy("config_list", "config.json", '["mlp"]\n')
    copy("config_loss_number", "config.json", '{"loss": 3}\n')
    predictions = (run / "predictions.npz").read_bytes()
    copy("predictions_garbage", "predictions.npz", data=b"not a zip file at all" * 10)
    copy("predictions_truncated", "predictions.npz", data=predictions[:len(predictions) // 2])
    middle = len(predictions) // 3  # inside the first compressed array: its CRC no longer matches
    copy("predictions_damaged", "predictions.npz", data=predictions[:middle] + bytes(64) + predictions[middle + 64:])
    with np.load(run / "predictions.npz") as npz:
        arrays = dict(npz)
    target = copy("predictions_missing_keys", "predictions.npz")
    np.savez(target / "predictions.npz", labels=arrays["labels"], predicted=arrays["predicted"])
    target = copy("predictions_bad_labels", "predictions.npz")
    np.savez(target / "predictions.npz", **{**arrays, "labels": arrays["labels"] + 100})
    target = copy("predictions_one_array", "predictions.npz")
    with open(target / "predictions.npz", "wb") as f:
        np.save(f, arrays["labels"])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    train_and_evaluate(load_config("digits_cnn", RUN), root / "run", quiet=True)
    write_bad_inputs(root / "in", root / "run")
    return root


P = ["predict", "--workdir", "{run}"]
R = ["report", "--out", "{in}/report_out"]
CASES = [
    # predict: the arrays and images
    ("predict-empty-npy", P + ["{in}/empty.npy"], "the array is empty"),
    ("predict-empty-rgb-npy", P + ["{in}/empty_rgb.npy"], "the array is empty"),
    ("predict-nan-pixels", P + ["{in}/nan.npy"], "NaN or infinite"),
    ("predict-inf-pixels", P + ["{in}/inf.npy"], "64 of 64 values are NaN or infinite"),
    ("predict-object-npy", P + ["{in}/object.npy"], "holds pickled Python objects"),
    ("predict-pickle-named-npy", P + ["{in}/pickled.npy"], "holds pickled Python objects"),
    ("predict-npz-named-npy", P + ["{in}/archive.npy"], "is an .npz archive"),
    ("predict-truncated-npy", P + ["{in}/truncated.npy"], "cannot be read as a .npy array"),
    ("predict-bool-npy", P + ["{in}/bool.npy"], "got dtype bool"),
    ("predict-complex-npy", P + ["{in}/complex.npy"], "got dtype complex64"),
    ("predict-values-over-255", P + ["{in}/too_bright.npy"], "expected pixel values 0..255"),
    ("predict-four-dim-npy", P + ["{in}/four_dims.npy"], "expected an image of shape"),
    ("predict-huge-npy", P + ["{in}/huge.npy"], "8001x8001 pixels is over predict's limit of 64,000,000"),
    ("predict-decompression-bomb-png", P + ["{in}/bomb.png"], "over predict's limit of 64,000,000 pixels"),
    ("predict-png-pillow-warns-about", P + ["{in}/pillow_warns.png"], "10000x10000 pixels is over predict's limit"),
    ("predict-png-over-the-limit", P + ["{in}/over_limit.png"], "9000x9000 pixels is over predict's limit"),
    ("predict-truncated-png", P + ["{in}/truncated.png"], "truncated.png: cannot be read as an image"),
    ("predict-garbage-png", P + ["{in}/garbage.png"], "garbage.png: cannot be read as an image"),
    ("predict-postscript-named-png", P + ["{in}/postscript.png"], "postscript.png: cannot be read as an image"),
    ("predict-truncated-jpeg", P + ["{in}/truncated.jpg"], "truncated.jpg: cannot be read as an image"),
    ("predict-missing-file", P + ["{in}/nowhere.png"], "nowhere.png: no such file"),
    ("predict-folder-named-png", P + ["{in}/folder.png"], "folder.png: is a folder"),
    ("predict-svg", P + ["{in}/image.svg"], "unsupported file type '.svg'"),
    ("predict-top-0", P + ["--top", "0", "{in}/good.npy"], "--top must be a whole number of classes >= 1, got 0"),
    ("predict-top-negative", P + ["--top", "-3", "{in}/good.npy"], "--top must be a whole number of classes >= 1"),
    ("predict-step-not-saved", P + ["--step", "999", "{in}/good.npy"], "no checkpoint for step 999"),
    ("predict-workdir-without-checkpoints", ["predict", "--workdir", "{in}/summary_list", "{in}/good.npy"],
     "has no checkpoints/ folder"),
    # eval
    ("eval-step-not-a-number", ["eval", "--workdir", "{run}", "--step", "first"], "--step must be best, latest"),
    ("eval-missing-workdir", ["eval", "--workdir", "{in}/no_such_run"], "has no checkpoints/ folder"),
    ("eval-workdir-is-a-file", ["eval", "--workdir", "{in}/a_file"], "has no checkpoints/ folder"),
    ("eval-damaged-checkpoint", ["eval", "--workdir", "{in}/damaged_checkpoint"], "checkpoints cannot be read"),
    ("predict-damaged-checkpoint", P[:2] + ["{in}/damaged_checkpoint", "{in}/good.npy"], "checkpoints cannot be read"),
    # report: metrics.jsonl
    ("report-metrics-line-is-a-list", R + ["{in}/metrics_list"], "line 2: expected a JSON object, got list"),
    ("report-metrics-line-is-a-string", R + ["{in}/metrics_string"], "line 1: expected a JSON object, got str"),
    ("report-metrics-line-invalid-json", R + ["{in}/metrics_bad_json"], "line 2 is not valid JSON"),
    ("report-metrics-record-without-step", R + ["{in}/metrics_no_step"], "line 2: 'epoch' record: expected 'step'"),
    ("report-metrics-loss-not-a-number", R + ["{in}/metrics_text_loss"], "line 1: 'train' record: expected 'loss'"),
    ("report-metrics-not-utf8", R + ["{in}/metrics_binary"], "metrics.jsonl' cannot be read as UTF-8"),
    # report: summary.json and config.json
    ("report-summary-is-a-list", R + ["{in}/summary_list"], "summary.json': expected a JSON object, got list"),
    ("report-summary-invalid-json", R + ["{in}/summary_bad_json"], "summary.json' cannot be read as JSON"),
    ("report-summary-accuracy-not-a-number", R + ["{in}/summary_text_accuracy"],
     "summary.json': 'test_accuracy' is not a number or null"),
    ("report-summary-bad-confusion-matrix", R + ["{in}/summary_bad_confusion"], "test_metrics.confusion_matrix"),
    ("report-config-is-a-list", R + ["{in}/config_list"], "config.json': expected a JSON object, got list"),
    ("report-config-section-not-an-object", R + ["{in}/config_loss_number"], "config.json': 'loss' is not an object"),
    # report: predictions.npz
    ("report-predictions-not-a-zip", R + ["{in}/predictions_garbage"], "is not an .npz (zip) archive"),
    ("report-predictions-truncated", R + ["{in}/predictions_truncated"], "cannot be read as an .npz archive"),
    ("report-predictions-damaged-bytes", R + ["{in}/predictions_damaged"], "cannot be read as an .npz archive"),
    ("report-predictions-missing-arrays", R + ["{in}/predictions_missing_keys"],
     "missing arrays confidence, class_names, mistake_indices, mistake_images"),
    ("report-predictions-labels-out-of-range", R + ["{in}/predictions_bad_labels"], "labels holds class indices"),
    ("report-predictions-one-npy-array", R + ["{in}/predictions_one_array"], "expected an .npz archive"),
    ("report-out-is-a-file", ["report", "--out", "{in}/a_file", "{run}"], "is a file, expected a folder"),
    # --json FILE, refused before the command's work
    ("bench-json-into-a-missing-folder", ["bench", "--json", "{in}/no_such_folder/bench.json"],
     "is not an existing folder"),
    ("bench-json-is-a-folder", ["bench", "--json", "{in}/results"], "is a folder, expected a file name"),
    ("eval-json-is-a-folder", ["eval", "--workdir", "{run}", "--json", "{in}/results"],
     "is a folder, expected a file name"),
    ("predict-json-into-a-missing-folder", P + ["--json", "{in}/no_such_folder/p.json", "{in}/good.npy"],
     "is not an existing folder"),
    ("compare-json-into-a-missing-folder", ["compare", "{run}", "{run}", "--json", "{in}/no_such_folder/c.json"],
     "is not an existing folder"),
]


def expand(argv, files):
    return [a.replace("{run}", str(files / "run")).replace("{in}", str(files / "in")) for a in argv]


def fingerprint(path):
    if path.is_dir():
        return "folder"
    if path.stat().st_size > 1 << 20:  # huge.npy: 64 MB of sparse zeros, by size and time
        return (path.stat().st_size, path.stat().st_mtime_ns)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_hashes(root):
    """Every file and folder under `root` with its sha256: a new, removed or changed one shows."""
    return {str(p.relative_to(root)): fingerprint(p) for p in sorted(pathlib.Path(root).rglob("*"))}


def assert_one_line_and_nothing_changed(status, stderr, files, before):
    assert status == 2, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert tree_hashes(files) == before
    return lines[0]


@pytest.mark.parametrize("argv, expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_bad_input_or_output_is_one_line_exit_2_and_changes_no_file(files, argv, expected, capfd):
    before = tree_hashes(files)
    start_capture(capfd)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # then Python's default filters: what a real command shows
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        status = cli.main(expand(argv, files))
    stderr = capfd.readouterr().err
    stderr += "".join(f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}\n" for w in caught)
    line = assert_one_line_and_nothing_changed(status, stderr, files, before)
    assert line.startswith("jaxcnn: error: ") and expected in line, line


REAL_COMMAND_CASES = ["predict-png-pillow-warns-about", "report-metrics-line-is-a-list", "eval-damaged-checkpoint"]


@pytest.mark.parametrize("case", REAL_COMMAND_CASES)
def test_a_case_run_as_a_real_command_is_one_line_exit_2_too(files, case):
    _, argv, expected = next(c for c in CASES if c[0] == case)
    before = tree_hashes(files)
    result = subprocess.run([sys.executable, "-m", "jaxcnn.cli", *expand(argv, files)], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env=dict(os.environ))
    line = assert_one_line_and_nothing_changed(result.returncode, result.stderr, files, before)
    assert expected in line


def test_invert_classifies_a_dark_on_light_png_as_its_light_on_dark_original(files, tmp_path):
    saved = load_saved_model(files / "run")
    light_on_dark = np.random.default_rng(4).integers(0, 256, (8, 8), dtype=np.uint8)
    np.save(tmp_path / "original.npy", light_on_dark)
    (tmp_path / "dark_on_light.png").write_bytes(png_bytes(255 - light_on_dark))
    [original] = predict(saved, [tmp_path / "original.npy"], top=10)
    [inverted] = predict(saved, [tmp_path / "dark_on_light.png"], top=10, invert=True)
    [as_is] = predict(saved, [tmp_path / "dark_on_light.png"], top=10)
    assert [c["probability"] for c in inverted["top"]] == [c["probability"] for c in original["top"]]
    assert [c["probability"] for c in as_is["top"]] != [c["probability"] for c in original["top"]]


def test_report_draws_a_run_whose_files_hold_null_for_non_finite_numbers(files, tmp_path):
    """What a diverged run writes: null losses, a null calibration error, NaN confidences."""
    report = pytest.importorskip("jaxcnn.report.markdown")
    pytest.importorskip("matplotlib")
    run = shutil.copytree(files / "run", tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        record.update({key: None for key in ("loss", "train_loss", "val_loss", "test_loss") if key in record})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in records))
    summary = json.loads((run / "summary.json").read_text())
    summary["test_loss"], summary["test_metrics"]["expected_calibration_error"] = None, None
    (run / "summary.json").write_text(json.dumps(summary, allow_nan=False))
    with np.load(run / "predictions.npz") as npz:
        arrays = dict(npz)
    np.savez(run / "predictions.npz", **{**arrays, "confidence": np.full_like(arrays["confidence"], np.nan)})
    markdown = report.write_report([run], tmp_path / "out").read_text()
    assert "expected calibration error –" in markdown
    assert len(list((tmp_path / "out").glob("*.png"))) == 6


def test_the_closed_event_loop_noise_of_a_failed_checkpoint_read_is_dropped_and_other_noise_kept(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(unraisable.exc_value))
    cli.ignore_closed_event_loop_callbacks()
    cli.ignore_closed_event_loop_callbacks()  # idempotent: main() runs it on every call
    for error in (RuntimeError("Event loop is closed"), RuntimeError("something else"), ValueError("x")):
        sys.unraisablehook(types.SimpleNamespace(exc_value=error))
    assert [str(e) for e in seen] == ["something else", "x"]

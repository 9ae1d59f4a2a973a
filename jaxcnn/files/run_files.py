"""A finished (or unfinished) run's workdir files as `jaxcnn report` reads them: `config.json`,
`metrics.jsonl`, `summary.json`, `predictions.npz`. Never the dataset or a checkpoint.

Every file is checked for the fields the report draws, so a damaged or hand-edited file is one
line naming the file (and the line of `metrics.jsonl`), not a traceback halfway through a figure.
Numbers may be null: jaxcnn writes a non-finite number (a diverged loss) as null.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import pathlib
import zipfile
import zlib
from typing import Any

import numpy as np

from jaxcnn.errors import JaxcnnError
from jaxcnn.files.writers import PREDICTIONS_FILE, read_jsonl

WRITTEN_BY_JAXCNN = "was it written by jaxcnn?"
# Fields of the metrics records the report draws: the integer ones, then the numeric (or null) ones.
RECORD_FIELDS = {"train": (("step",), ("loss", "accuracy")),
                 "epoch": (("epoch", "step"), ("train_loss", "train_accuracy"))}
OPTIONAL_NUMBERS = ("val_loss", "val_accuracy", "learning_rate")
CONFIG_SECTIONS = ("model", "loss", "optimizer", "schedule")
SUMMARY_NUMBERS = ("best_epoch", "test_loss", "test_accuracy")
# A member's numbers in a run of members' summary.json (jaxcnn.training.summary.AGGREGATED).
MEMBER_NUMBERS = ("test_accuracy", "test_loss", "test_top5_accuracy", "test_macro_f1",
                  "test_expected_calibration_error", "best_val_accuracy", "best_val_loss", "epochs_run")
PREDICTION_ARRAYS = ("labels", "predicted", "confidence", "class_names", "mistake_indices", "mistake_images")


@dataclasses.dataclass
class Run:
    """What a workdir holds; `summary` is empty and `predictions` None for a run that did not finish."""

    path: pathlib.Path
    name: str
    config: dict[str, Any]
    records: list[dict[str, Any]]
    summary: dict[str, Any]
    predictions: dict[str, np.ndarray] | None

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == kind]

    @property
    def loss_name(self) -> str:
        return self.config.get("loss", {}).get("name", "loss")

    @property
    def steps_per_epoch(self) -> int | None:
        first = next(iter(self.events("epoch")), None)
        return first["step"] // first["epoch"] if first and first["epoch"] else None


def load_run(workdir: str | pathlib.Path, name: str | None = None) -> Run:
    """Reads a workdir; a missing, malformed or incomplete file is a `JaxcnnError` naming it."""
    path = pathlib.Path(workdir)
    metrics_path = path / "metrics.jsonl"
    if not metrics_path.is_file():
        raise JaxcnnError(f"'{path}' is not a jaxcnn workdir (no metrics.jsonl); "
                          "pass the --workdir of a `jaxcnn train` run")
    records = read_jsonl(metrics_path, check=record_problem)
    config = _read_object(path / "config.json")
    for section in CONFIG_SECTIONS:
        _expect(isinstance(config.get(section, {}), dict), path / "config.json", f"'{section}' is not an object")
    summary = _read_object(path / "summary.json")
    _check_summary(summary, path / "summary.json")
    predictions = _read_predictions(path / PREDICTIONS_FILE) if (path / PREDICTIONS_FILE).is_file() else None
    return Run(path, name or path.resolve().name, config, records, summary, predictions)


def _expect(condition: bool, path: pathlib.Path, problem: str) -> None:
    if not condition:
        raise JaxcnnError(f"'{path}': {problem}; {WRITTEN_BY_JAXCNN}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number_or_null(value: Any) -> bool:
    return value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool))


def record_problem(record: dict[str, Any]) -> str | None:
    """What is wrong with one metrics record for the report (None: nothing)."""
    event = record.get("event")
    if event is not None and not isinstance(event, str):
        return f"expected 'event' to be a name, got {event!r}"
    integers, values = RECORD_FIELDS.get(event, ((), ()))
    for key in integers:
        if not _is_int(record.get(key)) or record[key] < 0:
            return f"'{event}' record: expected '{key}' to be a whole number >= 0, got {record.get(key)!r}"
    for key in values + tuple(k for k in OPTIONAL_NUMBERS if k in record):
        if key not in record or not _is_number_or_null(record[key]):
            return f"'{event}' record: expected '{key}' to be a number or null, got {record.get(key, '<missing>')!r}"
    if ("val_loss" in record) != ("val_accuracy" in record):
        return f"'{event}' record: expected both or neither of 'val_loss' and 'val_accuracy'"
    return None


def _read_object(path: pathlib.Path) -> dict[str, Any]:
    """A JSON file holding one object; {} when the file does not exist (an unfinished run)."""
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: invalid JSON or invalid UTF-8
        raise JaxcnnError(f"'{path}' cannot be read as JSON ({' '.join(str(e).split())[:160]}); "
                          f"{WRITTEN_BY_JAXCNN}") from e
    _expect(isinstance(value, dict), path, f"expected a JSON object, got {type(value).__name__}")
    return value


def _check_summary(summary: dict[str, Any], path: pathlib.Path) -> None:
    for key in SUMMARY_NUMBERS:
        _expect(_is_number_or_null(summary.get(key)), path, f"'{key}' is not a number or null")
    if "members" in summary or "aggregate" in summary:
        _check_members(summary, path)
    if "test_metrics" not in summary:
        return
    metrics = summary["test_metrics"]
    _expect(isinstance(metrics, dict), path, "'test_metrics' is not an object")
    for key in ("accuracy", "macro_f1", "expected_calibration_error"):
        _expect(_is_number_or_null(metrics.get(key)), path, f"test_metrics.{key} is not a number or null")
    _expect(_is_number_or_null(metrics.get("top5_accuracy")), path, "test_metrics.top5_accuracy is not a number")
    _expect(_is_int(metrics.get("ece_bins")) and metrics["ece_bins"] >= 1, path,
            "test_metrics.ece_bins is not a whole number >= 1")
    per_class = metrics.get("per_class")
    _expect(isinstance(per_class, list) and len(per_class) > 0, path, "test_metrics.per_class is not a list of classes")
    for entry in per_class:
        _expect(isinstance(entry, dict) and isinstance(entry.get("class"), str) and _is_int(entry.get("support"))
                and all(_is_number_or_null(entry.get(k)) for k in ("precision", "recall", "f1")), path,
                "a test_metrics.per_class entry lacks class, precision, recall, f1 or support")
    k = len(per_class)
    confusion = metrics.get("confusion_matrix")
    _expect(isinstance(confusion, list) and len(confusion) == k
            and all(isinstance(row, list) and len(row) == k and all(_is_int(c) and c >= 0 for c in row)
                    for row in confusion), path,
            f"test_metrics.confusion_matrix is not {k}x{k} counts, one row per class")


def _check_members(summary: dict[str, Any], path: pathlib.Path) -> None:
    """The fields of a run of members that `report` and `compare` read: each member's seed, sweep
    values and metrics, each aggregate group's sweep, members and statistics."""
    members = summary.get("members")
    _expect(isinstance(members, list) and len(members) > 0, path, "'members' is not a list of members")
    for i, member in enumerate(members):
        _expect(isinstance(member, dict), path, f"members[{i}] is not an object")
        _expect(_is_int(member.get("seed")) and member["seed"] >= 0, path, f"members[{i}].seed is not a whole number >= 0")
        _expect(_is_sweep(member.get("sweep")), path, f"members[{i}].sweep is not an object of swept numbers")
        for key in MEMBER_NUMBERS:
            _expect(_is_number_or_null(member.get(key)), path, f"members[{i}].{key} is not a number or null")
    groups = summary.get("aggregate", [])
    _expect(isinstance(groups, list), path, "'aggregate' is not a list of groups")
    for i, group in enumerate(groups):
        _expect(isinstance(group, dict) and _is_sweep(group.get("sweep")), path, f"aggregate[{i}].sweep is not an object")
        indices = group.get("members")
        _expect(isinstance(indices, list) and all(_is_int(m) and 0 <= m < len(members) for m in indices), path,
                f"aggregate[{i}].members is not a list of member indices below {len(members)}")
        metrics = group.get("metrics")
        _expect(isinstance(metrics, dict) and all(isinstance(v, dict) and all(map(_is_statistic, v.values()))
                                                  for v in metrics.values()), path,
                f"aggregate[{i}].metrics is not an object of statistics (numbers or null)")


def _is_statistic(value: Any) -> bool:
    """A number, null, or an interval of two (ci95)."""
    return _is_number_or_null(value) or (isinstance(value, list) and len(value) == 2
                                         and all(map(_is_number_or_null, value)))


def _is_sweep(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and _is_number_or_null(v) and v is not None
                                           for k, v in value.items())


def _read_predictions(path: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        with open(path, "rb") as file:  # closed here even when NumPy fails halfway
            start = file.read(6)
            _expect(not start.startswith(b"\x93NUMPY"), path, "holds one .npy array, expected an .npz archive")
            _expect(start.startswith(b"PK"), path, "is not an .npz (zip) archive")
            file.seek(0)
            npz = np.load(file, allow_pickle=False)
            missing = [key for key in PREDICTION_ARRAYS if key not in npz.files]
            _expect(not missing, path, f"missing arrays {', '.join(missing)}")
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise JaxcnnError(f"'{path}' cannot be read as an .npz archive ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:160]}); {WRITTEN_BY_JAXCNN}") from e
    _check_predictions(arrays, path)
    return arrays


def _check_predictions(arrays: dict[str, np.ndarray], path: pathlib.Path) -> None:
    labels, predicted, confidence = arrays["labels"], arrays["predicted"], arrays["confidence"]
    names, indices, images = arrays["class_names"], arrays["mistake_indices"], arrays["mistake_images"]
    n, k = len(labels) if labels.ndim else -1, len(names) if names.ndim else 0
    _expect(names.ndim == 1 and k > 0 and names.dtype.kind == "U", path, "class_names is not a list of names")
    for key, array, kind in (("labels", labels, "iu"), ("predicted", predicted, "iu"), ("confidence", confidence, "f")):
        _expect(array.ndim == 1 and len(array) == n and array.dtype.kind in kind, path,
                f"{key} is not one {'number' if kind == 'f' else 'class index'} per test example "
                f"(shape {array.shape}, dtype {array.dtype}; labels has {max(n, 0)})")
    for key, array in (("labels", labels), ("predicted", predicted)):
        _expect(bool(np.all((array >= 0) & (array < k))), path, f"{key} holds class indices outside 0..{k - 1}")
    _expect(bool(np.all(np.isnan(confidence) | ((confidence >= 0) & (confidence <= 1)))), path,
            "confidence holds values outside 0..1")
    _expect(indices.ndim == 1 and indices.dtype.kind in "iu" and bool(np.all((indices >= 0) & (indices < n))),
            path, f"mistake_indices is not a list of test example indices 0..{n - 1}")
    _expect(images.ndim == 4 and len(images) == len(indices) and images.shape[-1] in (1, 3)
            and images.dtype == np.uint8, path,
            f"mistake_images is not one uint8 (H, W, 1|3) image per mistake index (shape {images.shape})")

"""The one metrics writer: `metrics.jsonl`, `summary.json` and `config.json` in the workdir, plus
TensorBoard event files in `events/` (`config.logging.tensorboard`) and the test predictions.

Records are plain JSON. Timing values (which differ between otherwise identical runs) are kept in
the keys of `TIMING_KEYS`, so two runs with the same seed give identical files apart from those.
"""

from __future__ import annotations

import json
import numbers
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from jaxcnn.errors import JaxcnnError

TIMING_KEYS = frozenset({"wall_time_s", "images_per_s", "train_images_per_s", "epoch_time_s"})


def to_builtin(value: Any) -> Any:
    """jax/numpy scalars and arrays -> Python numbers and lists (JSON-able)."""
    if isinstance(value, Mapping):
        return {str(k): to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin(v) for v in value]
    if hasattr(value, "shape") or isinstance(value, np.generic):
        array = np.asarray(value)
        return array.tolist() if array.ndim else array.item()
    return value


def without_timing(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}


class TensorBoardWriter:
    """Scalars of metrics records as TensorBoard event files, written by tensorboardX (no TensorFlow).

    Each numeric field of a record becomes the scalar `EVENT/FIELD` at the record's `step`:
    `train/loss`, `train/learning_rate`, `train/images_per_s`, `epoch/val_accuracy`, `test/test_accuracy`, ...
    """

    NOT_SCALARS = frozenset({"event", "epoch", "step"})

    def __init__(self, directory: pathlib.Path):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as e:
            raise JaxcnnError("logging.tensorboard is on but tensorboardX is not installed; "
                              "pip install 'jaxcnn[tensorboard]' or set --config.logging.tensorboard=false") from e
        self.directory = pathlib.Path(directory)
        self._writer = SummaryWriter(logdir=str(self.directory), flush_secs=10)

    def write(self, record: Mapping[str, Any]) -> None:
        event, step = record.get("event", "metrics"), int(record.get("step", 0))
        for key, value in to_builtin(record).items():
            if key not in self.NOT_SCALARS and isinstance(value, numbers.Real) and not isinstance(value, bool):
                self._writer.add_scalar(f"{event}/{key}", value, step)

    def close(self) -> None:
        self._writer.close()


class MetricsWriter:
    """Appends one JSON object per line to `metrics.jsonl`; flushed at once so a crash loses nothing.

    With `tensorboard=True`, every record also goes to TensorBoard event files in `workdir/events/`.
    With `enabled=False` (every process but process 0 of a multi-process run) it writes nothing and
    creates no file.
    """

    def __init__(self, workdir: pathlib.Path, tensorboard: bool = False, enabled: bool = True):
        workdir = pathlib.Path(workdir)
        # Created first: a missing tensorboardX fails before metrics.jsonl marks the workdir as used.
        self._events = TensorBoardWriter(workdir / "events") if tensorboard and enabled else None
        self.path = workdir / "metrics.jsonl"
        self._file = self.path.open("a", encoding="utf-8") if enabled else None

    def write(self, record: Mapping[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(to_builtin(record), allow_nan=True) + "\n")
            self._file.flush()
        if self._events is not None:
            self._events.write(record)

    def size(self) -> int:
        """Bytes written to `metrics.jsonl` so far (0 when disabled): where a resumed run cuts it."""
        return self.path.stat().st_size if self._file is not None else 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._events is not None:
            self._events.close()


def write_json(path: pathlib.Path, payload: Mapping[str, Any]) -> None:
    """Writes through a temporary file and a rename, so a reader never sees half a file."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_builtin(payload), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


PREDICTIONS_FILE = "predictions.npz"


def write_predictions(path: pathlib.Path, labels: np.ndarray, predictions: Mapping[str, np.ndarray],
                      class_names: Sequence[str], mistake_indices: np.ndarray, mistake_images: np.ndarray) -> None:
    """The test predictions as a plain `.npz` (no pickle: `np.load(path)` reads it as is).

    Arrays: `labels`, `predicted`, `confidence`, `in_top_k` (one entry per test example, in test-split
    order), `class_names`, and the most confidently wrong examples' `mistake_indices` and uint8
    `mistake_images`, so that `jaxcnn report` needs no access to the dataset.
    """
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, labels=np.asarray(labels, np.int32),
                        predicted=np.asarray(predictions["predicted"], np.int32),
                        confidence=np.asarray(predictions["confidence"], np.float32),
                        in_top_k=np.asarray(predictions["in_top_k"], bool),
                        class_names=np.asarray([str(n) for n in class_names], dtype=np.str_),
                        mistake_indices=np.asarray(mistake_indices, np.int64),
                        mistake_images=np.asarray(mistake_images, np.uint8))
    tmp.replace(path)

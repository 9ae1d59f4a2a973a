"""The one metrics writer: `metrics.jsonl`, `summary.json` and `config.json` in the workdir, plus
TensorBoard event files in `events/` (`config.logging.tensorboard`) and the test predictions.

Records are plain JSON. Timing values (which differ between otherwise identical runs) are kept in
the keys of `TIMING_KEYS`, so two runs with the same seed give identical files apart from those.
"""

from __future__ import annotations

import json
import numbers
import pathlib
import sys
from typing import Any, Mapping, Sequence

import numpy as np
import tqdm

from jaxcnn.distributed import is_main_process
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


def truncate_metrics(workdir: pathlib.Path, length: int) -> None:
    """Cuts `metrics.jsonl` back to the records written before the checkpoint being resumed."""
    path = workdir / "metrics.jsonl"
    size = path.stat().st_size if path.exists() else 0
    if size < length:
        raise JaxcnnError(f"{path} is shorter ({size} bytes) than when its checkpoint was taken "
                          f"({length} bytes); pass --fresh to start over in a new subfolder")
    if path.exists():
        with path.open("r+b") as f:
            f.truncate(length)


class Progress:
    """A tqdm bar on a terminal; otherwise one plain line per epoch (CI, pipes, nohup)."""

    def __init__(self, total_steps: int, num_epochs: int, quiet: bool):
        self.interactive = sys.stdout.isatty() and not quiet
        self.quiet = quiet
        self.num_epochs = num_epochs
        self.bar = tqdm.tqdm(total=total_steps, unit="step", dynamic_ncols=True, disable=not self.interactive)

    def step(self, epoch: int, num_steps: int = 1) -> None:
        self.bar.update(num_steps)
        if self.interactive:
            self.bar.set_description(f"epoch {epoch}/{self.num_epochs}", refresh=False)

    def log(self, loss: float, accuracy: float, images_per_s: float) -> None:
        # ordered_dict keeps this order (keyword arguments would be sorted: acc, img_s, loss).
        self.bar.set_postfix(ordered_dict={"loss": f"{loss:.4f}", "acc": f"{accuracy:.4f}",
                                           "img/s": f"{images_per_s:.0f}"}, refresh=False)

    def line(self, text: str) -> None:
        if self.interactive:
            self.bar.write(text)
        elif not self.quiet:
            print(text, flush=True)

    def close(self) -> None:
        self.bar.close()


class RunWriter:
    """Everything a training run writes and prints. Only process 0 writes files or prints; the
    other processes of a multi-process run get a writer that does nothing, so the loop never asks.

    Resuming (`metrics_bytes` given), `metrics.jsonl` is first cut back to its length at the
    checkpoint, so the records after it are written again exactly once.
    """

    def __init__(self, workdir: pathlib.Path, *, tensorboard: bool, quiet: bool, total_steps: int,
                 num_epochs: int, metrics_bytes: int | None = None):
        self.workdir = pathlib.Path(workdir)
        self.enabled = is_main_process()
        if self.enabled and metrics_bytes is not None:
            truncate_metrics(self.workdir, metrics_bytes)
        self.metrics = MetricsWriter(self.workdir, tensorboard=tensorboard, enabled=self.enabled)
        self.progress = Progress(total_steps, num_epochs, quiet or not self.enabled)

    def write(self, record: Mapping[str, Any]) -> None:
        """One `metrics.jsonl` record (and its TensorBoard scalars)."""
        self.metrics.write(record)

    def write_json(self, name: str, payload: Mapping[str, Any]) -> None:
        if self.enabled:
            write_json(self.workdir / name, payload)

    def write_text(self, name: str, text: str) -> None:
        """A text file written whole or not at all (temporary file and rename)."""
        if self.enabled:
            tmp = self.workdir / (name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(self.workdir / name)

    def write_predictions(self, *args: Any) -> None:
        """`predictions.npz` (see `write_predictions`)."""
        if self.enabled:
            write_predictions(self.workdir / PREDICTIONS_FILE, *args)

    def line(self, text: str) -> None:
        """A line for the person watching (above the progress bar on a terminal)."""
        self.progress.line(text)

    def size(self) -> int:
        return self.metrics.size()

    def close(self) -> None:
        self.progress.close()
        self.metrics.close()

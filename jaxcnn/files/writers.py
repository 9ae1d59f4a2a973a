"""The one metrics writer: `metrics.jsonl`, `summary.json` and `config.json` in the workdir, plus
TensorBoard event files in `events/` (`config.logging.tensorboard`) and the test predictions.

Records are plain JSON. Timing values (which differ between otherwise identical runs) are kept in
the keys of `TIMING_KEYS`, so two runs with the same seed give identical files apart from those.
Every JSON file is strict JSON: a non-finite number (NaN, infinity) is written as `null`. Whole
files (`summary.json`, `config.json`, `predictions.npz`, bench results) are written to a temporary
file and renamed over the old one, so a reader never sees half a file.

Before any work, `check_output_paths` and `check_writable` refuse a workdir whose outputs cannot be
written, in one line, so that a run never fails after its training for that.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tqdm

from jaxcnn.runtime.distributed import is_main_process
from jaxcnn.files import trackers
from jaxcnn.files.trackers import TensorBoardWriter, Trackers, tracker_names  # noqa: F401 (TensorBoardWriter: its old home)
from jaxcnn.errors import JaxcnnError

TIMING_KEYS = frozenset({"wall_time_s", "images_per_s", "train_images_per_s", "epoch_time_s"})


def to_builtin(value: Any, finite: bool = True) -> Any:
    """jax/numpy scalars and arrays -> Python numbers and lists (JSON-able). With `finite` (the
    default), a non-finite float (NaN, ±infinity) becomes None, which JSON writes as `null`."""
    if isinstance(value, Mapping):
        return {str(k): to_builtin(v, finite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin(v, finite) for v in value]
    if hasattr(value, "shape") or isinstance(value, np.generic):
        array = np.asarray(value)
        return to_builtin(array.tolist() if array.ndim else array.item(), finite)
    if finite and isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps_json(payload: Any, **options: Any) -> str:
    """Strict JSON text of `payload` (through `to_builtin`: no `NaN`/`Infinity` literals)."""
    return json.dumps(to_builtin(payload), allow_nan=False, **options)


def without_timing(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}


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
        self.failed = False

    def write(self, record: Mapping[str, Any]) -> None:
        if self._file is not None:
            try:
                self._file.write(dumps_json(record) + "\n")
                self._file.flush()
            except OSError as e:  # a full disk, a lost mount: one line, the checkpoints are kept
                self.failed = True
                raise JaxcnnError(f"cannot write '{self.path}': {e.strerror or e}; fix the cause and run the "
                                  "same command to resume from the last checkpoint") from e
        if self._events is not None:
            self._events.write(to_builtin(record, finite=False))

    def size(self) -> int:
        """Bytes written to `metrics.jsonl` so far (0 when disabled): where a resumed run cuts it."""
        return self.path.stat().st_size if self._file is not None else 0

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:  # the buffered line that failed to write fails again: reported already
                if not self.failed:
                    raise
        if self._events is not None:
            self._events.close()


def _replace_atomically(path: pathlib.Path, write: Callable[[pathlib.Path], Any], suffix: str = "") -> None:
    """Calls `write(temporary_path)` (next to `path`), flushes the file to disk and renames it to
    `path`; an OS error (disk full, permissions, a folder in the way) is one line naming `path`, and
    leaves no temporary file and the old `path` untouched."""
    path = pathlib.Path(path)
    tmp = path.with_name(f"{path.name}.tmp{suffix}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as e:
        if tmp.is_file():
            tmp.unlink()
        raise JaxcnnError(f"cannot write '{path}': {e.strerror or e}") from e


def write_text_atomic(path: pathlib.Path, text: str) -> None:
    """Writes `text` (UTF-8) through a temporary file and a rename, so a reader never sees half a file."""
    _replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: pathlib.Path, payload: Any, sort_keys: bool = True) -> None:
    """`payload` as strict, indented JSON (non-finite numbers as null), written atomically."""
    write_text_atomic(path, dumps_json(payload, indent=2, sort_keys=sort_keys) + "\n")


def read_jsonl(path: pathlib.Path, check: Callable[[dict[str, Any]], str | None] | None = None
               ) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a line that is not a JSON object, or of which `check`
    returns a problem, is one line naming the file, the line number and the problem."""
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise JaxcnnError(f"'{path}' cannot be read as UTF-8 text ({e}); was it written by jaxcnn?") from e
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise JaxcnnError(f"'{path}' line {number} is not valid JSON ({e.msg} at column {e.colno}); "
                              "was it written by jaxcnn?") from e
        if not isinstance(record, dict):
            raise JaxcnnError(f"'{path}' line {number}: expected a JSON object, got {type(record).__name__} "
                              f"{line.strip()[:40]}; was it written by jaxcnn?")
        problem = check(record) if check is not None else None
        if problem:
            raise JaxcnnError(f"'{path}' line {number}: {problem}; was it written by jaxcnn?")
        records.append(record)
    return records


PREDICTIONS_FILE = "predictions.npz"


def member_dir(workdir: pathlib.Path, member: int) -> pathlib.Path:
    """Where member `member` of a run of members keeps its own files (predictions, certificate)."""
    return workdir / "members" / str(member)


def write_predictions(path: pathlib.Path, labels: np.ndarray, predictions: Mapping[str, np.ndarray],
                      class_names: Sequence[str], mistake_indices: np.ndarray, mistake_images: np.ndarray) -> None:
    """The test predictions as a plain `.npz` (no pickle: `np.load(path)` reads it as is).

    Arrays: `labels`, `predicted`, `confidence`, `in_top_k` (one entry per test example, in test-split
    order), `class_names`, and the most confidently wrong examples' `mistake_indices` and uint8
    `mistake_images`, so that `jaxcnn report` needs no access to the dataset.
    """
    arrays = {"labels": np.asarray(labels, np.int32),
              "predicted": np.asarray(predictions["predicted"], np.int32),
              "confidence": np.asarray(predictions["confidence"], np.float32),
              "in_top_k": np.asarray(predictions["in_top_k"], bool),
              "class_names": np.asarray([str(n) for n in class_names], dtype=np.str_),
              "mistake_indices": np.asarray(mistake_indices, np.int64),
              "mistake_images": np.asarray(mistake_images, np.uint8)}
    _replace_atomically(path, lambda tmp: np.savez_compressed(tmp, **arrays), suffix=".npz")


# ---------------------------------------------------------------------------- checks before any work

# What a run writes in its workdir: (name, what it is, whether it is a folder).
WORKDIR_OUTPUTS = (
    ("config.json", "the resolved config", False),
    ("autotune.json", "the convolutions and compiler options measured for this machine", False),
    ("metrics.jsonl", "the metrics records", False),
    ("summary.json", "the run's summary", False),
    (PREDICTIONS_FILE, "the test predictions", False),
    ("checkpoints", "the checkpoints", True),
    ("events", "the TensorBoard event files", True),
    ("metrics.csv", "the CSV tracker's file", False),
    ("trackers.json", "the trackers' run ids", False),
    ("certificate.json", "the run's certificate", False),
    ("profile", "the profiler trace", True),
    ("members", "the members' predictions and certificates", True),
)


def check_output_paths(workdir: str | pathlib.Path) -> None:
    """Refuses, in one line, a workdir where something is in the way of an output: a file where the
    workdir or one of its folders goes, a folder (or anything but a file) where one of its files goes.
    Missing outputs are fine: the run creates them."""
    workdir = pathlib.Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise JaxcnnError(f"workdir '{workdir}' is a file, expected a folder; pass another --workdir")
    for name, what, is_folder in WORKDIR_OUTPUTS:
        path = workdir / name
        if not path.exists():
            continue
        if is_folder and not path.is_dir():
            raise JaxcnnError(f"'{path}' is a file, but jaxcnn writes {what} into a folder there; "
                              "move it away or pass another --workdir")
        if not is_folder and not path.is_file():
            kind = "a folder" if path.is_dir() else "not a regular file"
            raise JaxcnnError(f"'{path}' is {kind}, but jaxcnn writes {what} to a file there; "
                              "move it away or pass another --workdir")


def _probe(folder: pathlib.Path) -> None:
    """Creates, writes and removes a file in `folder`; raises the OSError when it cannot."""
    probe = folder / f".jaxcnn-write-probe-{os.getpid()}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def check_writable(workdir: str | pathlib.Path) -> None:
    """Creates and removes a probe file in `workdir` (or, when it does not exist yet, in the folder
    it would be created in), so that a read-only or otherwise unwritable workdir is refused in one
    line before any work. Creates no folder."""
    workdir = pathlib.Path(workdir)
    folder = workdir.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise JaxcnnError(f"workdir '{workdir}' cannot be created: '{folder}' is a file, expected a folder")
    try:
        _probe(folder)
    except OSError as e:
        where = "" if folder == workdir.absolute() else f" (it would be created in '{folder}')"
        raise JaxcnnError(f"workdir '{workdir}' is not writable{where}: {e.strerror or e}; "
                          "pass a writable --workdir") from e


def check_output_file(path: str | pathlib.Path, option: str) -> None:
    """Refuses, in one line, an output file that could not be written: its folder missing or not
    writable, or a folder at `path`. For outputs written after long work (`bench --json`)."""
    path = pathlib.Path(path)
    parent = path.absolute().parent
    if not parent.is_dir():
        raise JaxcnnError(f"{option} '{path}': '{parent}' is not an existing folder; create it first")
    if path.is_dir():
        raise JaxcnnError(f"{option} '{path}' is a folder, expected a file name")
    try:
        _probe(parent)
    except OSError as e:
        raise JaxcnnError(f"{option} '{path}': cannot write in '{parent}': {e.strerror or e}") from e


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
    """A tqdm bar on a terminal; otherwise plain lines (CI, pipes, nohup): the loop's own lines (the
    start of training, one per epoch) and, inside long epochs, a progress line at least every
    `every_s` seconds."""

    def __init__(self, total_steps: int, num_epochs: int, quiet: bool, every_s: float = 10.0):
        self.interactive = sys.stdout.isatty() and not quiet
        self.quiet = quiet
        self.num_epochs = num_epochs
        self.total_steps = total_steps
        self.every_s = every_s
        self.steps = 0
        self.last = ""  # the last logged loss, accuracy and rate, for the progress lines
        self.printed_at = time.monotonic()
        self.bar = tqdm.tqdm(total=total_steps, unit="step", dynamic_ncols=True, disable=not self.interactive)

    def resume(self, step: int) -> None:
        """Starts counting at `step` (a resumed run)."""
        self.steps = step
        self.bar.update(step)

    def step(self, epoch: int, num_steps: int = 1) -> None:
        self.steps += num_steps
        if self.interactive:
            self.bar.update(num_steps)
            self.bar.set_description(f"epoch {epoch}/{self.num_epochs}", refresh=False)
        elif not self.quiet and time.monotonic() - self.printed_at >= self.every_s:
            self.line(f"step {self.steps}/{self.total_steps}  (epoch {epoch}/{self.num_epochs}){self.last}")

    def log(self, loss: float, accuracy: float, images_per_s: float) -> None:
        self.last = f"  loss {loss:.4f}  acc {accuracy:.4f}  {images_per_s:.0f} img/s"
        # ordered_dict keeps this order (keyword arguments would be sorted: acc, img_s, loss).
        self.bar.set_postfix(ordered_dict={"loss": f"{loss:.4f}", "acc": f"{accuracy:.4f}",
                                           "img/s": f"{images_per_s:.0f}"}, refresh=False)

    def line(self, text: str) -> None:
        self.printed_at = time.monotonic()
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
                 num_epochs: int, metrics_bytes: int | None = None, config: Mapping[str, Any] | None = None):
        self.workdir = pathlib.Path(workdir)
        self.enabled = is_main_process()
        if self.enabled and metrics_bytes is not None:
            truncate_metrics(self.workdir, metrics_bytes)
        self.metrics = MetricsWriter(self.workdir, tensorboard=tensorboard, enabled=self.enabled)
        self.progress = Progress(total_steps, num_epochs, quiet or not self.enabled)
        config = trackers.plain(config or {})  # the trackers (jaxcnn.files.trackers): process 0's only
        logging = config.get("logging", {})
        self.trackers = Trackers(self.workdir, tracker_names(logging) if self.enabled else [],
                                 trackers.flat_params(config), logging.get("experiment") or "jaxcnn")

    def write(self, record: Mapping[str, Any]) -> None:
        """One `metrics.jsonl` record (and its TensorBoard scalars)."""
        self.metrics.write(record)
        self.trackers.log(to_builtin(record, finite=False))

    def write_json(self, name: str, payload: Mapping[str, Any]) -> None:
        if self.enabled:
            write_json(self.workdir / name, payload)
            self.trackers.summary = payload if name == "summary.json" else self.trackers.summary

    def write_text(self, name: str, text: str) -> None:
        """A text file written whole or not at all (temporary file and rename)."""
        if self.enabled:
            write_text_atomic(self.workdir / name, text)

    def write_predictions(self, *args: Any, member: int | None = None) -> None:
        """`predictions.npz` (see `write_predictions`); a member's in `members/K/`."""
        if self.enabled:
            folder = self.workdir if member is None else member_dir(self.workdir, member)
            folder.mkdir(parents=True, exist_ok=True)
            write_predictions(folder / PREDICTIONS_FILE, *args)

    def line(self, text: str) -> None:
        """A line for the person watching (above the progress bar on a terminal)."""
        self.progress.line(text)

    def size(self) -> int:
        return self.metrics.size()

    def close(self) -> None:
        self.progress.close()
        self.metrics.close()
        self.trackers.close()  # after metrics.jsonl is closed: its artifact is whole

"""Grain-fed input (`dataset.input=grain`, `pip install 'jaxcnn[grain]'`): data larger than memory.

`GrainFeed` is a sibling of `HostFeed` (`jaxcnn.data.feed`) with the same calls: the loop cannot
tell them apart. Its records are read, decoded and cropped on the CPU by a Grain pipeline
(google/grain): `MapDataset.range` over this process's records of all epochs -> `map(TrainRecords)`
-> `batch(local rows)` -> `to_iter_dataset` (`READ_THREADS` threads per process) -> `mp_prefetch`
(`dataset.workers` worker processes, each taking every W-th batch; 0: the main process reads).
Every record is a pure function of (seed, epoch, example) (`jaxcnn.data.records`), so 0, 1 or 2
workers give the same batches, bit for bit, and the iterator is opened once for the whole run
(the workers outlive the epochs; an evaluation runs while they read ahead).

Each process reads only its rows of each global batch (`Executor.process_rows`, as `HostFeed`):
with P processes, 1/P of the records, disjoint. Evaluation reads through Grain too, in order and
without augmentation, in `READ_THREADS` threads of the main process (no worker start per evaluation).

Resuming: `iterator_state()` is Grain's `get_state()` of the last call handed to the loop (not of
the batches read ahead), with the step it stands at; the checkpoint holds every process's
(`jaxcnn.files.checkpoint`), and `restore()` gives it back to `set_state` when the run resumes. A
state saved with another number of workers (or processes, or batch size) is not Grain's to restore: the pipeline is then opened
at the checkpoint's step instead, which reads the same records.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from jaxcnn.data.calls import EvalCall, TrainCall, chunks, eval_batches
from jaxcnn.data.host import prefetch
from jaxcnn.data.records import EvalRecords, Layout, TrainRecords, ignore_stop_signals
from jaxcnn.data.splits import Split
from jaxcnn.errors import JaxcnnError

GRAIN_EXTRA = "pip install 'jaxcnn[grain]'"
READ_THREADS = 4  # threads reading records in each process (the main one, or each worker)
READ_BUFFER = 4  # batches each of those processes keeps ready (one per thread)
WORKER_BUFFER = 2  # batches each worker process keeps ready for the main one
_ALL_EPOCHS = 2**40  # records in the range: more than any run reads (the pipeline is lazy)


def import_grain() -> Any:
    """The `grain` module, or one line naming the extra that installs it."""
    try:
        import grain
    except ImportError as e:
        raise JaxcnnError(f"dataset.input=grain needs the grain package, which is not installed; {GRAIN_EXTRA}") from e
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain 0.2.18 reads an absl flag when it starts workers
        flags.FLAGS.mark_as_parsed()
    return grain


def train_pipeline(grain: Any, records: TrainRecords, start_step: int, workers: int) -> Any:
    """This process's batches from global step `start_step` on, read by `workers` processes."""
    rows = records.layout.local_rows
    batches = grain.MapDataset.range(start_step * rows, _ALL_EPOCHS * rows).map(records)
    reading = batches.batch(rows, drop_remainder=True).to_iter_dataset(
        grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=READ_BUFFER))
    return reading.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=WORKER_BUFFER),
                               worker_init_fn=ignore_stop_signals)


def read_steps(iterator: Any, first: int, n: int) -> dict[str, np.ndarray]:
    """The iterator's next `n` batches, global steps `first`..., stacked as (steps, rows, ...)."""
    batches = [next(iterator) for _ in range(n)]
    steps = [int(b["step"][0]) for b in batches]
    if steps != list(range(first, first + n)):
        raise JaxcnnError(f"the Grain pipeline gave step {steps[0] + 1} where step {first + 1} was due "
                          "(a checkpoint's input state that does not match its step); pass --fresh to start over")
    return {"image": np.stack([b["image"] for b in batches]), "label": np.stack([b["label"] for b in batches])}


class GrainFeed:
    """A split read record by record by a Grain pipeline (see the module doc)."""

    kind = "grain"

    def __init__(self, split: Split, executor: Any, workers: int = 0, crop_scale: tuple[float, float] | None = None,
                 prefetch_calls: int = 2):
        self.grain = import_grain()
        self.executor, self.images, self.labels = executor, split.images, split.labels
        self.workers, self.crop_scale, self.prefetch_calls = workers, crop_scale, prefetch_calls
        self._iterator, self._key, self._start, self._next, self._where = None, None, 0, -1, {}
        self._state: dict[str, Any] | None = None  # after the last call handed out
        self._restored: dict[str, Any] | None = None  # a checkpoint's, until the pipeline opens

    def __len__(self) -> int:
        return len(self.labels)

    # ------------------------------------------------------------------------ training

    def train_calls(self, seed: int, epoch: int, batch_size: int,
                    calls: Sequence[tuple[int, int]]) -> Iterator[TrainCall]:
        """The calls' batches from the run's pipeline, opened on the first request (at the
        checkpoint's state when resuming); a request that does not continue it (the memory
        analysis of the first call, after training) is read by a pipeline of its own in this process."""
        rows = self.executor.process_rows(batch_size)
        layout = Layout(len(self), batch_size, (rows.start, rows.stop))
        records = TrainRecords(self.images, self.labels, layout, seed, self.crop_scale)
        first = (epoch - 1) * layout.steps + calls[0][0]
        if self._iterator is None or self._key != (seed, layout):
            self._open(records, first)
            self._key = (seed, layout)
        elif self._next != first:
            stacks = self._aside(records, first, calls)
            return self._handed(prefetch(stacks, lambda item: (self.executor.assemble(item[0], batch_size), None),
                                         self.prefetch_calls))
        stacks = (self._take(n) for _, n in calls)
        placed = prefetch(stacks, lambda item: (self.executor.assemble(item[0], batch_size), item[1]),
                          self.prefetch_calls)
        return self._handed(placed)

    def _handed(self, placed: Iterator[tuple[dict[str, Any], dict[str, Any] | None]]) -> Iterator[TrainCall]:
        for inputs, state in placed:
            if state is not None:
                self._state = state  # the loop runs this call next: a save after it resumes after it
            yield inputs, self.executor.index(0)

    def _open(self, records: TrainRecords, first: int) -> None:
        """Opens the pipeline at global step `first`: from the checkpoint's Grain state when it is
        for that step, this many workers and this process's rows, else from the step itself."""
        self.close()
        saved, self._restored = self._restored, None
        where = {"workers": self.workers, "rows": list(records.layout.rows), "batch": records.layout.batch_size}
        resume = saved is not None and saved["step"] == first and all(saved.get(k) == v for k, v in where.items())
        self._where, self._start = where, saved["start"] if resume else first
        self._iterator = iter(train_pipeline(self.grain, records, self._start, self.workers))
        if resume:
            self._iterator.set_state(saved["grain"])
        self._next = first

    def _take(self, n: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The pipeline's next `n` batches stacked (steps, rows, ...), and its state after them."""
        stacked = read_steps(self._iterator, self._next, n)
        self._next += n
        return stacked, {"start": self._start, "step": self._next, **self._where, "grain": self._iterator.get_state()}

    def _aside(self, records: TrainRecords, first: int,
               calls: Sequence[tuple[int, int]]) -> Iterator[tuple[dict[str, np.ndarray], None]]:
        iterator = iter(train_pipeline(self.grain, records, first, 0))
        for _, n in calls:
            yield read_steps(iterator, first, n), None
            first += n

    def iterator_state(self) -> dict[str, Any] | None:
        """What a checkpoint holds of this process's input: JSON (None before any call)."""
        return self._state if self._state is not None else self._restored

    def restore(self, state: dict[str, Any] | None) -> None:
        """A checkpoint's `iterator_state()`, used when the pipeline opens at its step."""
        self._restored, self._state = state, None

    def close(self) -> None:
        """Stops the worker processes (a later call opens the pipeline again)."""
        if self._iterator is None:
            return
        if hasattr(self._iterator, "close"):
            self._iterator.close()
        self._iterator, self._next = None, -1
        gc.collect()  # Grain's inner iterators, else deleted at exit with a warning each

    # ------------------------------------------------------------------------ evaluation

    def eval_calls(self, batch_size: int, steps_per_call: int, max_batches: int = 0) -> Iterator[EvalCall]:
        """Every example once, in order, padded and masked (`eval_batches`), read in threads."""
        size = self.executor.eval_batch_size(batch_size, len(self))
        order, mask = eval_batches(len(self), size, max_batches)
        rows = self.executor.process_rows(size)
        records = EvalRecords(self.images, self.labels, order[:, rows])
        batches = iter(self.grain.MapDataset.range(len(order)).map(records).to_iter_dataset(
            self.grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=READ_BUFFER)))
        pieces = chunks(len(order), steps_per_call)

        def stack(start: int, n: int) -> dict[str, np.ndarray]:
            taken = [next(batches) for _ in range(n)]
            return {"image": np.stack([b["image"] for b in taken]), "label": np.stack([b["label"] for b in taken]),
                    "mask": mask[start:start + n, rows]}

        stacks = (stack(s, n) for s, n in pieces)
        placed = prefetch(stacks, lambda local: self.executor.assemble(local, size), self.prefetch_calls)
        return ((inputs, self.executor.index(0), n) for inputs, (_, n) in zip(placed, pieces))

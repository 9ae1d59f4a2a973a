"""Data feeds: what each compiled call reads its batches from (`executor.gather`).

- `DeviceFeed`: the split lives whole on every device as uint8; a call's inputs are the split and
  the epoch order (steps, batch), and the call gathers its batches on the device.
- `GrainFeed` (`jaxcnn.data.grain_feed`): data read record by record by Grain's CPU workers,
  for data larger than the host's memory too.
- `HostFeed`: for data larger than `dataset.device_budget_mb`, the split stays in host memory (or
  a memory-mapped file); a background thread gathers each call's batches, stacked as
  (steps, batch, ...), and places them on the devices ahead of the call.

Both read the same (seed, epoch) order, so they train bitwise alike. With several processes each
process gathers only the rows of the batch its devices hold (`Executor.process_rows`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.data.calls import EvalCall, TrainCall, chunks, eval_batches  # noqa: F401 (re-exported)
from jaxcnn.data.device import epoch_order
from jaxcnn.data.host import choose_input, prefetch
from jaxcnn.data.splits import Split
from jaxcnn.errors import JaxcnnError

# Inputs read whole by every device (the on-device split); every other input is (steps, batch, ...)
# and split along the batch.
WHOLE_KEYS = ("images", "labels")

def input_gate(loss: jax.Array) -> jax.Array:
    """0, computed from the previous step's loss, added to the next step's batch index.

    In an unrolled scan nothing else orders a step's input work (gathering, normalising, the first
    layer's shifted slices) after the previous step, and XLA:CPU ran the input work of all the
    call's steps at once, thrashing the caches (README, "Speed"). `loss > inf` is False for every
    float, NaN included, and XLA cannot fold it away.
    """
    return (loss > jnp.inf).astype(jnp.int32)


class DeviceFeed:
    """A split placed whole on every device of the executor's mesh."""

    kind = "device"

    def __init__(self, split: Split, executor: Any):
        self.executor = executor
        self.num_examples = len(split)
        self.arrays = executor.put({"images": jnp.asarray(split.images, jnp.uint8),
                                    "labels": jnp.asarray(split.labels, jnp.int32)})

    def __len__(self) -> int:
        return self.num_examples

    def train_calls(self, seed: int, epoch: int, batch_size: int,
                    calls: Sequence[tuple[int, int]]) -> Iterator[TrainCall]:
        """The inputs and start of each planned (position, steps) call of `epoch`."""
        order = self.executor.put(epoch_order(seed, epoch, len(self), batch_size), self.executor.stacked)
        inputs = {**self.arrays, "order": order}
        return ((inputs, self.executor.index(position)) for position, _ in calls)

    def eval_calls(self, batch_size: int, steps_per_call: int, max_batches: int = 0) -> Iterator[EvalCall]:
        """Every example once, in order, in calls of up to `steps_per_call` padded, masked batches
        (only the first `max_batches` batches when that is > 0)."""
        order, mask = eval_batches(len(self), self.executor.eval_batch_size(batch_size, len(self)), max_batches)
        inputs = {**self.arrays, **self.executor.put({"order": order, "mask": mask}, self.executor.stacked)}
        return ((inputs, self.executor.index(start), n) for start, n in chunks(len(order), steps_per_call))


class HostFeed:
    """A split kept on the host; each call's batches are gathered and placed by a background thread
    `prefetch` calls ahead, so the copies overlap the previous calls."""

    kind = "host"

    def __init__(self, split: Split, executor: Any, prefetch_calls: int = 2):
        self.executor = executor
        self.images, self.labels = split.images, split.labels
        self.prefetch_calls = prefetch_calls

    def __len__(self) -> int:
        return len(self.labels)

    def train_calls(self, seed: int, epoch: int, batch_size: int,
                    calls: Sequence[tuple[int, int]]) -> Iterator[TrainCall]:
        order = np.asarray(epoch_order(seed, epoch, len(self), batch_size))
        rows = self.executor.process_rows(batch_size)
        stacks = (self._gather(order[position:position + n, rows]) for position, n in calls)
        return ((inputs, self.executor.index(0)) for inputs in self._placed(stacks, batch_size))

    def eval_calls(self, batch_size: int, steps_per_call: int, max_batches: int = 0) -> Iterator[EvalCall]:
        size = self.executor.eval_batch_size(batch_size, len(self))
        order, mask = eval_batches(len(self), size, max_batches)
        rows = self.executor.process_rows(size)
        pieces = chunks(len(order), steps_per_call)
        stacks = ({**self._gather(order[s:s + n, rows]), "mask": mask[s:s + n, rows]} for s, n in pieces)
        return ((inputs, self.executor.index(0), n) for inputs, (_, n) in zip(self._placed(stacks, size), pieces))

    def _placed(self, stacks: Iterator[dict[str, np.ndarray]], batch_size: int) -> Iterator[dict[str, jax.Array]]:
        return prefetch(stacks, lambda local: self.executor.assemble(local, batch_size), self.prefetch_calls)

    def _gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Rows `indices` (steps, rows): read in ascending order, as a memory-mapped file likes."""
        flat = indices.reshape(-1)
        ascending = np.argsort(flat, kind="stable")
        images = np.empty((len(flat), *self.images.shape[1:]), np.uint8)
        images[ascending] = self.images[flat[ascending]]
        return {"image": images.reshape(*indices.shape, *self.images.shape[1:]),
                "label": np.asarray(self.labels[flat], np.int32).reshape(indices.shape)}


Feed = Union[DeviceFeed, HostFeed]


def check_input_options(section: Any, crop_scale: Any, members: bool) -> None:
    """One line for the input keys that need `dataset.input=grain` without it, or a Grain run
    that cannot be (members, measured statistics, no grain package installed). `section`: the
    parsed `config.dataset` (`spec.DatasetSpec`)."""
    workers = section.workers
    if section.input != "grain":
        if workers:
            raise JaxcnnError(f"dataset.workers={workers} reads with Grain's worker processes: set "
                              "dataset.input=grain, or dataset.workers=0")
        if crop_scale:
            raise JaxcnnError("augment.random_resized_crop runs in Grain's CPU workers: set dataset.input=grain, "
                              "or augment.random_resized_crop=()")
        return
    if members:
        raise JaxcnnError("dataset.input=grain feeds a single run; a run of members (seeds, sweep) reads its "
                          "pool on the device or the host: set dataset.input=host")
    if section.per_channel_stats:
        raise JaxcnnError("dataset.per_channel_stats measures the decoded training split, which dataset.input=grain "
                          "does not hold in memory; set dataset.per_channel_stats=false and give dataset.mean/std")
    from jaxcnn.data.grain_feed import import_grain

    import_grain()


def make_feeds(splits: Sequence[Split], input_mode: str, budget_mb: float, executor: Any, workers: int = 0,
               crop_scale: tuple[float, float] | None = None) -> tuple[Feed, ...]:
    """The splits as the calls read them: all on the devices, all fed from the host, or all read
    by Grain with `workers` worker processes (`dataset.input`; `auto` compares the splits' size with
    `budget_mb`). `crop_scale`: the Grain workers' random-resized crop of the training records."""
    if input_mode == "grain":
        from jaxcnn.data.grain_feed import GrainFeed  # imports grain: only when asked for

        return tuple(GrainFeed(split, executor, workers, crop_scale) for split in splits)
    feed = HostFeed if choose_input(input_mode, tuple(splits), budget_mb) == "host" else DeviceFeed
    return tuple(feed(split, executor) for split in splits)

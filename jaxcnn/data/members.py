"""The data of a run of members (`jaxcnn.core.members`): one pool on the device, index arrays per member.

The training split is loaded once, whole (no validation carved out), and placed on the device
once. Each member carves its own validation split from it by its seed, as a single run with that
seed does (`splits.train_val_indices`), but as index arrays: (members, examples) int32, a few
bytes per example per member, instead of a copy of the images per member. Each member's epoch
order is a single run's order for its seed (`epoch_order`), mapped through its training indices,
so member `i` reads exactly the batches of the single run with its seed. The test split is shared.

With `dataset.input=host` (or a pool larger than `dataset.device_budget_mb`) the pool stays on the
host and `MembersHostFeed` gathers each call's batches of every member, (members, steps, batch, ...),
placed by a background thread ahead of the call, as `HostFeed` does for a single run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxcnn.data.device import epoch_order
from jaxcnn.data.feed import EvalCall, TrainCall, chunks, eval_batches
from jaxcnn.data.host import choose_input, prefetch
from jaxcnn.data.splits import Split, train_val_indices


def place_pool(split: Split, executor: Any) -> dict[str, Any]:
    """A split whole on the device, as `DeviceFeed` places it (uint8 images, int32 labels)."""
    return executor.put({"images": jnp.asarray(split.images, jnp.uint8), "labels": jnp.asarray(split.labels, jnp.int32)})


def member_splits(num_examples: int, val_fraction: float, seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices into the pool, (members, examples) each: member `m`'s split is the one
    a single run with seed `seeds[m]` carves (every member has as many examples as every other)."""
    pairs = [train_val_indices(num_examples, val_fraction, seed) for seed in seeds]
    return np.stack([train for train, _ in pairs]), np.stack([val for _, val in pairs])


class MembersFeed:
    """The examples each member reads from a pool placed on the device: `indices[m]` for member m."""

    kind = "device"

    def __init__(self, arrays: dict[str, Any], indices: np.ndarray, seeds: Sequence[int], executor: Any):
        self.arrays, self.indices, self.seeds, self.executor = arrays, indices, tuple(seeds), executor

    def __len__(self) -> int:
        return self.indices.shape[1]

    @property
    def num_members(self) -> int:
        return self.indices.shape[0]

    @property
    def device_arrays(self) -> dict[str, Any]:
        """What of the pool lives on the devices (shared by every member)."""
        return self.arrays

    def orders(self, epoch: int, batch_size: int) -> np.ndarray:
        """Every member's epoch order into the pool, (members, steps, batch): its seed's single-run order."""
        return np.stack([indices[np.asarray(epoch_order(seed, epoch, len(self), batch_size))]
                         for indices, seed in zip(self.indices, self.seeds)])

    def train_calls(self, epoch: int, batch_size: int, calls: Sequence[tuple[int, int]]) -> Iterator[TrainCall]:
        """Each planned (position, steps) call of `epoch`: every member's own order, (members, steps, batch)."""
        inputs = {**self.arrays, "order": self.executor.put(self.orders(epoch, batch_size),
                                                            self.executor.member_stacked)}
        return ((inputs, self.executor.index(position)) for position, _ in calls)

    def eval_calls(self, batch_size: int, steps_per_call: int, max_batches: int = 0) -> Iterator[EvalCall]:
        """Every member's examples once, in order, padded and masked as `DeviceFeed.eval_calls`
        (only the first `max_batches` batches when that is > 0)."""
        order, mask = eval_batches(len(self), self.executor.eval_batch_size(batch_size, len(self)), max_batches)
        members = (self.num_members, 1, 1)
        inputs = {**self.arrays, **self.executor.put({"order": self.indices[:, order],
                                                      "mask": np.tile(mask[None], members)},
                                                     self.executor.member_stacked)}
        return ((inputs, self.executor.index(start), n) for start, n in chunks(len(order), steps_per_call))


class MembersHostFeed(MembersFeed):
    """A pool kept on the host (`arrays`: its uint8 images and labels); each call's batches of every
    member are gathered and placed by a background thread `prefetch_calls` calls ahead."""

    kind = "host"
    prefetch_calls = 2

    @property
    def device_arrays(self) -> dict[str, Any]:
        return {}  # nothing of the pool is placed on the devices

    def train_calls(self, epoch: int, batch_size: int, calls: Sequence[tuple[int, int]]) -> Iterator[TrainCall]:
        orders, rows = self.orders(epoch, batch_size), self.executor.process_rows(batch_size, members=True)
        stacks = (self._gather(orders[:, position:position + n, rows]) for position, n in calls)
        return ((inputs, self.executor.index(0)) for inputs in self._placed(stacks, batch_size))

    def eval_calls(self, batch_size: int, steps_per_call: int, max_batches: int = 0) -> Iterator[EvalCall]:
        size = self.executor.eval_batch_size(batch_size, len(self))
        order, mask = eval_batches(len(self), size, max_batches)
        rows, pieces = self.executor.process_rows(size, members=True), chunks(len(order), steps_per_call)
        masks = np.tile(mask[None], (self.num_members, 1, 1))
        stacks = ({**self._gather(self.indices[:, order[s:s + n, rows]]), "mask": masks[:, s:s + n, rows]}
                  for s, n in pieces)
        return ((inputs, self.executor.index(0), n) for inputs, (_, n) in zip(self._placed(stacks, size), pieces))

    def _placed(self, stacks: Iterator[dict[str, np.ndarray]], batch_size: int) -> Iterator[dict[str, Any]]:
        return prefetch(stacks, lambda local: self.executor.assemble(local, batch_size, members=True),
                        self.prefetch_calls)

    def _gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Rows `indices` (members, steps, rows) of the pool, as (members, steps, rows, ...)."""
        images, labels = self.arrays["images"], self.arrays["labels"]
        return {"image": np.asarray(images[indices.reshape(-1)], np.uint8).reshape(*indices.shape, *images.shape[1:]),
                "label": np.asarray(labels[indices.reshape(-1)], np.int32).reshape(indices.shape)}


class MemberPool:
    """The data of a run of members before any member's indices: the training pool and the test
    split placed once (or kept on the host: `dataset.input`), from which `feeds(seeds)` builds the
    feeds of any members; so one member's memory can be measured before every member's indices exist."""

    def __init__(self, pool: Split, test: Split, val_fraction: float, executor: Any, input_mode: str = "device",
                 budget_mb: float = 0.0):
        self.num_pool, self.num_test, self.val_fraction, self.executor = len(pool), len(test), val_fraction, executor
        if choose_input(input_mode, (pool, test), budget_mb) == "host":
            self.feed, self.pool, self.test = MembersHostFeed, _host_arrays(pool), _host_arrays(test)
        else:
            self.feed, self.pool, self.test = MembersFeed, place_pool(pool, executor), place_pool(test, executor)

    @property
    def train_size(self) -> int:
        """The examples of each member's training split (every member's is as large)."""
        return len(train_val_indices(self.num_pool, self.val_fraction, 0)[0])

    @property
    def index_bytes(self) -> int:
        """One member's int32 indices (training, validation and test split), on the host and placed."""
        return 2 * 4 * (self.num_pool + self.num_test)

    def feeds(self, seeds: Sequence[int]) -> dict[str, MembersFeed]:
        """The "train", "val" and "test" feeds of the members of `seeds` (the validation feed reads the pool)."""
        train_indices, val_indices = member_splits(self.num_pool, self.val_fraction, seeds)
        test_indices = np.tile(np.arange(self.num_test, dtype=np.int32)[None], (len(seeds), 1))
        return {"train": self.feed(self.pool, train_indices, seeds, self.executor),
                "val": self.feed(self.pool, val_indices, seeds, self.executor),
                "test": self.feed(self.test, test_indices, seeds, self.executor)}


def _host_arrays(split: Split) -> dict[str, Any]:
    return {"images": split.images, "labels": split.labels}

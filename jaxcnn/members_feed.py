"""The data of a run of members (`jaxcnn.members`): one pool on the device, index arrays per member.

The training split is loaded once, whole (no validation carved out), and placed on the device
once. Each member carves its own validation split from it by its seed, as a single run with that
seed does (`splits.train_val_indices`), but as index arrays: (members, examples) int32, a few
bytes per example per member, instead of a copy of the images per member. Each member's epoch
order is a single run's order for its seed (`epoch_order`), mapped through its training indices,
so member `i` reads exactly the batches of the single run with its seed. The test split is shared.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxcnn.data.device import epoch_order
from jaxcnn.data.feed import EvalCall, TrainCall, chunks, eval_batches
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

    def train_calls(self, epoch: int, batch_size: int, calls: Sequence[tuple[int, int]]) -> Iterator[TrainCall]:
        """Each planned (position, steps) call of `epoch`: every member's own order, (members, steps, batch)."""
        orders = np.stack([indices[np.asarray(epoch_order(seed, epoch, len(self), batch_size))]
                           for indices, seed in zip(self.indices, self.seeds)])
        inputs = {**self.arrays, "order": self.executor.put(orders)}
        return ((inputs, self.executor.index(position)) for position, _ in calls)

    def eval_calls(self, batch_size: int, steps_per_call: int, max_batches: int = 0) -> Iterator[EvalCall]:
        """Every member's examples once, in order, padded and masked as `DeviceFeed.eval_calls`
        (only the first `max_batches` batches when that is > 0)."""
        order, mask = eval_batches(len(self), self.executor.eval_batch_size(batch_size, len(self)), max_batches)
        members = (self.num_members, 1, 1)
        inputs = {**self.arrays, **self.executor.put({"order": self.indices[:, order],
                                                      "mask": np.tile(mask[None], members)})}
        return ((inputs, self.executor.index(start), n) for start, n in chunks(len(order), steps_per_call))


def make_member_feeds(pool: Split, test: Split, val_fraction: float, seeds: Sequence[int],
                      executor: Any) -> dict[str, MembersFeed]:
    """The "train", "val" and "test" feeds of the members of `seeds`; the pool and the test split
    are placed once, and the validation feed reads the pool placed for training."""
    train_indices, val_indices = member_splits(len(pool), val_fraction, seeds)
    pool_arrays, test_arrays = place_pool(pool, executor), place_pool(test, executor)
    test_indices = np.tile(np.arange(len(test), dtype=np.int32)[None], (len(seeds), 1))
    return {"train": MembersFeed(pool_arrays, train_indices, seeds, executor),
            "val": MembersFeed(pool_arrays, val_indices, seeds, executor),
            "test": MembersFeed(test_arrays, test_indices, seeds, executor)}

"""On-device input: whole splits live on the device as uint8; batches are gathered there.

The epoch order is a permutation from `jax.random`, keyed by (seed, epoch) alone, so a run's data
order does not depend on how it was started or resumed.

A split fed to the loop (`DeviceSplit` here, `HostSplit` in host.py for data that does not fit on
the device) offers `train_inputs` / `eval_inputs`, which yield the arguments of each step's compiled
call, and the static `train_batch` / `eval_batch`, which turn those arguments into the uint8 batch
inside the compiled call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from collections.abc import Iterator

from flax import struct

from jaxcnn.data import Split

# Folded into the run seed so the data order is independent of the parameter-init and dropout keys.
_SHUFFLE_SALT = 0x5EED


class DeviceSplit(struct.PyTreeNode):
    """A split's arrays on the device; a pytree, so it is passed to compiled functions as is."""

    images: jax.Array  # uint8 (N, H, W, C)
    labels: jax.Array  # int32 (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def train_inputs(self, seed: int, epoch: int, batch_size: int, start: int = 0) -> Iterator[tuple]:
        """(split, order, i) for each training step of `epoch` from position `start` (a resumed epoch)."""
        order = epoch_order(seed, epoch, len(self), batch_size)
        return ((self, order, i) for i in range(start, order.shape[0]))

    def eval_inputs(self, batch_size: int) -> Iterator[tuple]:
        """(split, order, mask, i) for each evaluation step; every example once, the last batch padded."""
        order, mask = eval_order(len(self), min(batch_size, len(self)))
        order, mask = jnp.asarray(order), jnp.asarray(mask)
        return ((self, order, mask, i) for i in range(order.shape[0]))

    @staticmethod
    def train_batch(split: DeviceSplit, order: jax.Array, i: jax.Array) -> dict[str, jax.Array]:
        indices = order[i]
        return {"image": split.images[indices], "label": split.labels[indices]}

    @staticmethod
    def eval_batch(split: DeviceSplit, order: jax.Array, mask: jax.Array, i: jax.Array) -> dict[str, jax.Array]:
        return {**DeviceSplit.train_batch(split, order, i), "mask": mask[i]}


def put_on_device(split: Split) -> DeviceSplit:
    return DeviceSplit(jnp.asarray(split.images, jnp.uint8), jnp.asarray(split.labels, jnp.int32))


def normalize(images: jax.Array, mean: float | tuple[float, ...], std: float | tuple[float, ...]) -> jax.Array:
    """uint8 pixels -> float32 `(x / 255 - mean) / std`; a tuple `mean`/`std` holds one value per channel."""
    return (images.astype(jnp.float32) / 255.0 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def epoch_order(seed: int, epoch: int, num_examples: int, batch_size: int) -> jax.Array:
    """Shuffled example indices for one epoch as (steps, batch_size); the last partial batch dropped."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), _SHUFFLE_SALT), epoch)
    steps = num_examples // batch_size
    return jax.random.permutation(key, num_examples)[: steps * batch_size].reshape(steps, batch_size)


def eval_order(num_examples: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (steps, batch_size) covering every example once, padded with index 0, and the mask
    (1.0 for real examples, 0.0 for padding) that keeps the padding out of the metrics."""
    steps = -(-num_examples // batch_size)
    positions = np.arange(steps * batch_size)
    indices = np.where(positions < num_examples, positions, 0).astype(np.int32)
    mask = (positions < num_examples).astype(np.float32)
    return indices.reshape(steps, batch_size), mask.reshape(steps, batch_size)

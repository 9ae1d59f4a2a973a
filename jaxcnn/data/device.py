"""The orders batches are read in, and the normalisation done on the device.

The epoch order is a permutation from `jax.random`, keyed by (seed, epoch) alone, so a run's data
order does not depend on how it was started or resumed, nor on how the data is fed
(`jaxcnn.data.feed`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Folded into the run seed so the data order is independent of the parameter-init and dropout keys.
_SHUFFLE_SALT = 0x5EED


def normalize(images: jax.Array, mean: float | tuple[float, ...], std: float | tuple[float, ...]) -> jax.Array:
    """uint8 pixels -> float32 `(x / 255 - mean) / std`; a tuple `mean`/`std` holds one value per channel."""
    return (images.astype(jnp.float32) / 255.0 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def epoch_order(seed: int, epoch: int, num_examples: int, batch_size: int) -> jax.Array:
    """Shuffled example indices for one epoch as (steps, batch_size); the last partial batch dropped."""
    return _order(jax.random.PRNGKey(seed), epoch, num_examples=num_examples, batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("num_examples", "batch_size"))
def _order(key: jax.Array, epoch: int, num_examples: int, batch_size: int) -> jax.Array:
    """`epoch_order` from the seed's key: one program, not each of its operations compiled and
    run one at a time (README, "Start-up"); the key made outside, since a seed may not fit
    in an int32, and the epoch traced, so every epoch runs the same program."""
    key = jax.random.fold_in(jax.random.fold_in(key, _SHUFFLE_SALT), epoch)
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

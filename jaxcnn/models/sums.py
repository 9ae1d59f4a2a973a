"""Sums over the batch (every axis but the channels) in the form XLA:CPU runs fast.

XLA:CPU (jax 0.10.2) computes a sum over the batch and spatial axes as one chain of dependent adds
per channel vector, bound by the add's latency rather than by memory: BatchNorm's statistics and
their gradient, and the gradient of every convolution's bias. `channel_sums` first adds `PARTS`
slices of the rows element-wise (independent adds, vectorised), then sums what is left;
`add_bias` is `y + bias` whose gradient takes that sum. The measured effect is in README.md,
"Chosen by measurement".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PARTS = 8  # slices of the rows added element-wise before the sum


def channel_sums(x: jax.Array) -> jax.Array:
    """The sum of `x` over every axis but the last: the rows split into up to `PARTS` equal slices,
    added element-wise, and the result summed (the same sum, in another order)."""
    channels = x.shape[-1]
    rows = x.size // channels
    parts = next(p for p in range(PARTS, 0, -1) if rows % p == 0)
    sliced = x.reshape(parts, rows // parts, channels)
    total = sliced[0]
    for index in range(1, parts):
        total = total + sliced[index]
    return jnp.sum(total, axis=0)


@jax.custom_vjp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """`y + bias` over the last axis (`bias` of `y`'s dtype); the bias's gradient is `channel_sums`
    of the output's, added in float32."""
    return y + bias


def _add_bias_forward(y: jax.Array, bias: jax.Array):
    return y + bias, None


def _add_bias_backward(_, grad: jax.Array):
    return grad, channel_sums(grad.astype(jnp.float32)).astype(grad.dtype)


add_bias.defvjp(_add_bias_forward, _add_bias_backward)

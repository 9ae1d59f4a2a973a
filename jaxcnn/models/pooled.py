"""A convolution, its activation and the pool after it in one pass: `pool(act(conv(x) + bias))`.

A pool whose window equals its stride (the 2×2, stride-2 pools of the CNNs) takes one output of
each of its window's phases: phase (py, px) is the convolution evaluated at rows py, py + 2, ... and
columns px, px + 2, .... So the pooled map is the max, or the mean, over the phases of
`act(conv_phase + bias)`, and each phase's convolution is shift-and-add over strided slices of the
input. For few input channels (MNIST's and CIFAR's first layers) XLA fuses all of it into one loop
that writes only the pooled map: the convolution's full-size output, four times larger, is never
stored (README, "Speed").

The loop computes channels-first, (batch, features, rows, columns), and the result is transposed
to NHWC once: channels-last, XLA split the same sums into one loop per term once a convolution
followed them (tried and measured, README).

`layers.conv` computes a convolution this way where the measured plan (`jaxcnn.core.autotune`)
names `IMPL` for its shape, and its model passes the pool that follows it (`PoolAfter`); the
parameters are `nn.Conv`'s either way.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

IMPL = "pooled"  # the plan's name for it
# Input channels up to which it is a candidate: each pooled value sums window × kernel × channels
# products, all unrolled into the one loop.
MAX_CHANNELS = 4
KINDS = ("avg", "max")  # pools whose value is a reduction over the window's phases


class PoolAfter(NamedTuple):
    """The activation and the non-overlapping VALID pool (window = stride) that follow a
    convolution; `layer` names the pool in errors."""

    activation: Callable[[jax.Array], jax.Array]
    kind: str
    window: tuple[int, ...]
    layer: str


def pool_after(activation: Callable[[jax.Array], jax.Array], kind: str, window: tuple[int, ...],
               stride: tuple[int, ...], padding: object, layer: str) -> PoolAfter | None:
    """The pool as `PoolAfter`, or None where it is not one this module computes (it overlaps,
    pads, or is not a max or mean)."""
    if kind in KINDS and len(window) == 2 and window == stride and padding == "VALID":
        return PoolAfter(activation, kind, window, layer)
    return None


def fusable(in_channels: int, strides: Sequence[int], dilation: Sequence[int], groups: int) -> bool:
    """Whether a convolution with these options can be computed with its pool."""
    return (in_channels <= MAX_CHANNELS and groups == 1 and all(s == 1 for s in strides)
            and all(d == 1 for d in dilation))


def conv_size(spatial: Sequence[int], pads: Sequence[tuple[int, int]], kernel: Sequence[int]) -> list[int]:
    """The spatial size of a stride-1 convolution's output."""
    return [size + lo + hi - k + 1 for size, (lo, hi), k in zip(spatial, pads, kernel)]


def pooled_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, pads: Sequence[tuple[int, int]],
                after: PoolAfter) -> jax.Array:
    """`after.kind`-pool(`after.activation`(conv(x, kernel) + bias)) for an NHWC `x`, an HWIO
    `kernel` applied with stride 1 and explicit `pads`, and a VALID pool of stride `after.window`."""
    n, channels = x.shape[0], x.shape[-1]
    kh, kw, _, features = kernel.shape
    sy, sx = after.window
    xp = jnp.pad(jnp.transpose(x, (0, 3, 1, 2)), ((0, 0), (0, 0), *pads))[:, :, None]  # (n, c, 1, h, w)
    out_h, out_w = (size // s for size, s in zip(conv_size(x.shape[1:3], pads, (kh, kw)), after.window))
    weights = kernel.reshape(kh, kw, channels, features, 1, 1)
    phases = []
    for py, px in itertools.product(range(sy), range(sx)):
        terms = []
        for dy, dx in itertools.product(range(kh), range(kw)):
            start = (0, 0, 0, py + dy, px + dx)
            limit = (n, channels, 1, py + dy + sy * (out_h - 1) + 1, px + dx + sx * (out_w - 1) + 1)
            taps = lax.slice(xp, start, limit, (1, 1, 1, sy, sx))  # (n, c, 1, out_h, out_w)
            terms += [taps[:, c] * weights[dy, dx, c] for c in range(channels)]  # (n, features, out_h, out_w)
        total = functools.reduce(jnp.add, terms)
        phases.append(after.activation(total if bias is None else total + bias.reshape(features, 1, 1)))
    if after.kind == "max":
        pooled = functools.reduce(jnp.maximum, phases)
    else:
        pooled = functools.reduce(jnp.add, phases) / len(phases)
    return jnp.transpose(pooled, (0, 2, 3, 1))

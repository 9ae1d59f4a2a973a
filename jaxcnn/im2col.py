"""Convolution as im2col + one matmul: the fast path on CPU, where XLA's own convolution is slow.

XLA's CPU convolution (forward and, above all, its gradients) keeps a 2-core CPU about 60% busy on
the Flax-example CNN and becomes ~10x slower inside `lax.scan`. Building the patch matrix from
kh·kw shifted, strided slices of the padded input, concatenating them on the channel axis and
multiplying by the reshaped kernel in one matmul lets XLA use its dot kernels for the forward pass
and both gradients (the slices' transposes are pads that XLA fuses into adds). Measured on the
2-core CPU (the probes of issue 7): im2col trains the Flax-example CNN ~1.1x faster per step and
~1.8x faster fused in a scan than `lax.conv_general_dilated`; `lax.conv_general_dilated_patches`
as the patch extractor was slower than the slices. `hybrid_conv_general_dilated` keeps XLA's fast
forward convolution and differentiates through im2col: the fastest there inside `lax.scan`. With
jax 0.10.2 on this project's CPU, XLA's own convolution was faster than both one call per step
and in a fully unrolled scan (which jaxcnn's fused steps use on CPU), so "auto" is XLA's
convolution; these two are for rolled scans (README, Speed).
On GPU/TPU XLA's convolution is kept (see `resolve_conv_impl`).

`conv_general_dilated` has the signature of `lax.conv_general_dilated` for the NHWC/HWIO layout
that `nn.Conv` uses, so it plugs into `nn.Conv(conv_general_dilated=...)` and the parameters keep
`nn.Conv`'s names and shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.errors import JaxcnnError

CONV_IMPLS = ("auto", "xla", "im2col", "hybrid")


def resolve_conv_impl(impl: str, backend: str | None = None) -> str:
    """"xla", "im2col" or "hybrid" for `impl`. "auto" is XLA's convolution on every backend: on
    this project's 2-core CPU (jax 0.10.2) it was the fastest one call per step and in jaxcnn's
    fused steps, whose scan is unrolled on CPU (`fused.default_unroll`); "im2col"/"hybrid" are
    the fast choice in a rolled `lax.scan` on CPU, where XLA's convolution is ~20x slower.
    `backend` is accepted so the choice can differ per backend when measurements say so."""
    if impl not in CONV_IMPLS:
        raise JaxcnnError(
            f"unknown conv_impl {impl!r} (model.conv_impl); expected one of: {', '.join(CONV_IMPLS)}"
        )
    if impl != "auto":
        return impl
    del backend  # XLA's convolution won on CPU (unrolled fused steps, per step) and is kept on GPU/TPU
    return "xla"


def _pads(
    in_spatial: Sequence[int], window: Sequence[int], strides: Sequence[int], padding: Any
) -> list[tuple[int, int]]:
    if isinstance(padding, str):
        return list(lax.padtype_to_pads(tuple(in_spatial), tuple(window), tuple(strides), padding))
    return [(int(lo), int(hi)) for lo, hi in padding]


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """`lax.conv_general_dilated` for NHWC input and HWIO kernel, computed as im2col + matmul.

    Supports any number of spatial dims, strides, padding (a string or (lo, hi) pairs), kernel
    dilation and feature groups; input dilation (transposed convolution) is not supported.
    """
    ndim = lhs.ndim - 2
    if dimension_numbers is not None:
        expected = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _nhwc_spec(ndim))
        given = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        if given != expected:
            raise ValueError(f"im2col conv supports only channels-last layouts, got {dimension_numbers}")
    if lhs_dilation is not None and any(d != 1 for d in lhs_dilation):
        raise ValueError("im2col conv does not support input (lhs) dilation")
    dilation = tuple(rhs_dilation) if rhs_dilation is not None else (1,) * ndim
    strides = tuple(window_strides)
    kernel = rhs.shape[:ndim]
    in_channels, features = lhs.shape[-1], rhs.shape[-1]
    groups = feature_group_count
    window = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))
    pads = _pads(lhs.shape[1:-1], window, strides, padding)
    x = jnp.pad(lhs, [(0, 0), *pads, (0, 0)])
    out = tuple((x.shape[1 + i] - window[i]) // strides[i] + 1 for i in range(ndim))

    slices = []
    for offset in _offsets(kernel):
        start = [0] + [o * d for o, d in zip(offset, dilation)] + [0]
        limit = ([x.shape[0]] + [s + (n - 1) * st + 1 for s, n, st in zip(start[1:], out, strides)]
                 + [in_channels])
        slices.append(lax.slice(x, start, limit, [1, *strides, 1]))
    patches = slices[0] if len(slices) == 1 else jnp.concatenate(slices, axis=-1)
    taps = len(slices)
    if groups == 1:
        matrix = rhs.reshape(taps * in_channels, features)
        return lax.dot_general(patches, matrix, (((patches.ndim - 1,), (0,)), ((), ())),
                               precision=precision, preferred_element_type=preferred_element_type)
    # Group g sees input channels [g·C/G, (g+1)·C/G) and produces output features [g·O/G, (g+1)·O/G).
    per_group_in, per_group_out = in_channels // groups, features // groups
    patches = patches.reshape(*patches.shape[:-1], taps, groups, per_group_in)
    matrix = rhs.reshape(taps, per_group_in, groups, per_group_out)
    y = jnp.einsum("...kgc,kcgo->...go", patches, matrix, precision=precision,
                   preferred_element_type=preferred_element_type)
    return y.reshape(*y.shape[:-2], features)


def _offsets(kernel: Sequence[int]) -> list[tuple[int, ...]]:
    """Kernel taps in row-major order, the order of the kernel's (kh, kw, ...) reshape."""
    offsets: list[tuple[int, ...]] = [()]
    for size in kernel:
        offsets = [o + (i,) for o in offsets for i in range(size)]
    return offsets


def _nhwc_spec(ndim: int) -> tuple[str, str, str]:
    spatial = "HWD"[:ndim] if ndim <= 3 else "".join(chr(ord("a") + i) for i in range(ndim))
    return ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")



def hybrid_conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """XLA's convolution forward, im2col's gradients (a `jax.custom_vjp`).

    XLA's CPU convolution is fast forward (evaluation at batch 1000 runs at full speed) but slow to
    differentiate; im2col's forward pass materialises a kh·kw times larger patch matrix. So the
    forward pass and evaluation use XLA's convolution and the backward pass is the vjp of
    `conv_general_dilated` (one matmul for the kernel gradient, one plus the slices' transposes
    for the input gradient). Inside `lax.scan` (fused steps) the fastest of the three on the 2-core
    CPU; one call per step, XLA's own convolution was faster there (README, Speed).
    """
    options = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                   dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                   precision=precision, preferred_element_type=preferred_element_type)

    @jax.custom_vjp
    def conv(x: jax.Array, w: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(x, w, window_strides, padding, **options)

    def forward(x: jax.Array, w: jax.Array):
        return conv(x, w), (x, w)

    def backward(residuals, cotangent):
        x, w = residuals
        _, pullback = jax.vjp(
            lambda x, w: conv_general_dilated(x, w, window_strides, padding, **options), x, w)
        return pullback(cotangent)

    conv.defvjp(forward, backward)
    return conv(lhs, rhs)


IMPLEMENTATIONS = {"xla": lax.conv_general_dilated, "im2col": conv_general_dilated,
                   "hybrid": hybrid_conv_general_dilated}

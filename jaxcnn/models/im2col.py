"""Convolutions computed without XLA's convolution op: im2col + matmul, and shift-and-add.

`model.conv_impl` picks one per model ("auto" per backend and input channels, `resolve_conv_impl`):
- "xla": `lax.conv_general_dilated`, what `nn.Conv` uses. On CPU jaxcnn compiles with YNNPACK's
  convolutions off (`compilation.compiler_options`), which made XLA's own convolutions the fastest
  for layers with many input channels, one call per step and in fused (unrolled) steps.
- "shift": `shift_conv_general_dilated`, the forward pass as element-wise multiply-adds of shifted
  input slices, the gradients XLA's. "auto" on CPU for layers of at most `SHIFT_MAX_CHANNELS` input
  channels (MNIST's and CIFAR's first layers), where XLA's convolution was 2-11x slower forward.
- "im2col": the patch matrix from kh·kw shifted, strided slices of the padded input, concatenated
  on the channel axis and multiplied by the reshaped kernel in one matmul (forward and gradients).
- "hybrid": XLA's forward, im2col's gradients.
"im2col" and "hybrid" were the fast choice inside a rolled `lax.scan` with XLA's default options;
they stay for experiments (README, Speed). On GPU/TPU "auto" keeps XLA's convolution.

Each has the signature of `lax.conv_general_dilated` for the NHWC/HWIO layout that `nn.Conv` uses,
so it plugs into `nn.Conv(conv_general_dilated=...)` and the parameters keep `nn.Conv`'s names and
shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.errors import JaxcnnError

CONV_IMPLS = ("auto", "xla", "im2col", "hybrid", "shift")


# "auto" on CPU computes convolutions with at most this many input channels (per group) by
# shift-and-add: faster there than XLA's convolution up to 4 channels, slower from 8 (3x3 kernels,
# batch 128, 2-core CPU: README.md, "Speed").
SHIFT_MAX_CHANNELS = 4


def resolve_conv_impl(impl: str, backend: str | None = None, in_channels: int | None = None,
                      train: bool = True) -> str:
    """The implementation `impl` names for a convolution with `in_channels` input channels per group.

    "auto" is "shift" on CPU for inputs of at most `SHIFT_MAX_CHANNELS` channels (the first layer of
    an MNIST or CIFAR model) and XLA's own convolution otherwise and on every other backend. On CPU
    jaxcnn compiles with YNNPACK's convolutions off (`compilation.compiler_options`), which made
    XLA's convolution faster than "im2col" and "hybrid" both one call per step and in jaxcnn's
    fused steps (unrolled scans); those two stay for experiments. `backend` defaults to JAX's.
    Forward only (`train` False: evaluation, prediction, exports) "auto" is XLA's convolution, which
    ran the Flax-example CNN's batches of 1000 at the plain-JAX rate where "shift" halved it. This is
    the default where no measured plan names the convolution (`jaxcnn.models.conv_plan`).
    """
    if impl not in CONV_IMPLS:
        raise JaxcnnError(
            f"unknown conv_impl {impl!r} (model.conv_impl); expected one of: {', '.join(CONV_IMPLS)}"
        )
    if impl != "auto":
        return impl
    on_cpu = (backend or jax.default_backend()) == "cpu"
    return "shift" if train and on_cpu and in_channels is not None and in_channels <= SHIFT_MAX_CHANNELS else "xla"


def explicit_pads(
    in_spatial: Sequence[int], window: Sequence[int], strides: Sequence[int], padding: Any
) -> list[tuple[int, int]]:
    """`padding` ("SAME", "VALID" or (lo, hi) pairs) as (lo, hi) pairs for these sizes."""
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
    slices = _tap_slices(lhs, rhs.shape, window_strides, padding, lhs_dilation, rhs_dilation,
                         dimension_numbers)
    in_channels, features = lhs.shape[-1], rhs.shape[-1]
    groups = feature_group_count
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


def _tap_slices(lhs: jax.Array, rhs_shape: Sequence[int], window_strides: Sequence[int], padding: Any,
                lhs_dilation: Sequence[int] | None, rhs_dilation: Sequence[int] | None,
                dimension_numbers: Any) -> list[jax.Array]:
    """For each kernel tap (row-major, the order of the kernel's reshape), the strided slice of the
    padded NHWC input that the tap multiplies: each of the output's spatial shape."""
    ndim = lhs.ndim - 2
    if dimension_numbers is not None:
        expected = lax.conv_dimension_numbers(lhs.shape, tuple(rhs_shape), _nhwc_spec(ndim))
        given = lax.conv_dimension_numbers(lhs.shape, tuple(rhs_shape), dimension_numbers)
        if given != expected:
            raise ValueError(f"im2col conv supports only channels-last layouts, got {dimension_numbers}")
    if lhs_dilation is not None and any(d != 1 for d in lhs_dilation):
        raise ValueError("im2col conv does not support input (lhs) dilation")
    dilation = tuple(rhs_dilation) if rhs_dilation is not None else (1,) * ndim
    strides = tuple(window_strides)
    kernel = tuple(rhs_shape[:ndim])
    window = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))
    pads = explicit_pads(lhs.shape[1:-1], window, strides, padding)
    x = jnp.pad(lhs, [(0, 0), *pads, (0, 0)])
    out = tuple((x.shape[1 + i] - window[i]) // strides[i] + 1 for i in range(ndim))
    slices = []
    for offset in _offsets(kernel):
        start = [0] + [o * d for o, d in zip(offset, dilation)] + [0]
        limit = ([x.shape[0]] + [s + (n - 1) * st + 1 for s, n, st in zip(start[1:], out, strides)]
                 + [lhs.shape[-1]])
        slices.append(lax.slice(x, start, limit, [1, *strides, 1]))
    return slices


def _offsets(kernel: Sequence[int]) -> list[tuple[int, ...]]:
    """Kernel taps in row-major order, the order of the kernel's (kh, kw, ...) reshape."""
    offsets: list[tuple[int, ...]] = [()]
    for size in kernel:
        offsets = [o + (i,) for o in offsets for i in range(size)]
    return offsets


def _nhwc_spec(ndim: int) -> tuple[str, str, str]:
    spatial = "HWD"[:ndim] if ndim <= 3 else "".join(chr(ord("a") + i) for i in range(ndim))
    return ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")


def _gradients_of(conv: Any, window_strides: Sequence[int], padding: Any, options: dict) -> Any:
    """A `custom_vjp` backward rule: the gradients of `conv` (a `lax.conv_general_dilated`-like
    function) at the saved (x, w), for implementations whose forward pass differs from `conv`."""

    def backward(residuals: tuple[jax.Array, jax.Array], cotangent: jax.Array):
        x, w = residuals
        _, pullback = jax.vjp(lambda x, w: conv(x, w, window_strides, padding, **options), x, w)
        return pullback(cotangent)

    return backward


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
    for the input gradient). With XLA's default CPU options the fastest inside a rolled `lax.scan`
    (module docstring).
    """
    options = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                   dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                   precision=precision, preferred_element_type=preferred_element_type)

    @jax.custom_vjp
    def conv(x: jax.Array, w: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(x, w, window_strides, padding, **options)

    def forward(x: jax.Array, w: jax.Array):
        return conv(x, w), (x, w)

    conv.defvjp(forward, _gradients_of(conv_general_dilated, window_strides, padding, options))
    return conv(lhs, rhs)


def shift_conv_general_dilated(
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
    """Forward pass as shift-and-add, gradients XLA's (a `jax.custom_vjp`): for inputs with few channels.

    The output is the sum over kernel taps of the tap's shifted input slice times the tap's
    (in_channels, features) weights, written as element-wise multiply-adds that XLA fuses into one
    loop, with no patch matrix. With one input channel (MNIST's first convolution) that loop is
    what the convolution is: on the 2-core CPU it ran 11x (3x3x1->8) and 4x (3x3x1->32) faster
    than XLA's convolution at batch 128, while XLA's kernel gradient stayed the fastest, so the
    backward pass is `lax.conv_general_dilated`'s. With many input channels the element-wise form
    is slow, hence `resolve_conv_impl`'s `SHIFT_MAX_CHANNELS`.
    """
    options = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                   dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                   precision=precision, preferred_element_type=preferred_element_type)

    def taps_and_weights(x: jax.Array, w: jax.Array):
        slices = _tap_slices(x, w.shape, window_strides, padding, lhs_dilation, rhs_dilation,
                             dimension_numbers)
        groups, features = feature_group_count, w.shape[-1]
        out_dtype = preferred_element_type or jnp.result_type(x, w)
        acc_dtype = jnp.promote_types(out_dtype, jnp.float32)  # bfloat16 inputs sum in float32
        # Tap t's weights as (groups, in_channels per group, features per group).
        per_group_in = x.shape[-1] // groups
        weights = w.reshape(len(slices), per_group_in, groups, features // groups)
        weights = weights.transpose(0, 2, 1, 3).astype(acc_dtype)
        slices = [xs.reshape(*xs.shape[:-1], groups, per_group_in, 1).astype(acc_dtype) for xs in slices]
        return slices, weights, lambda y: y.reshape(*y.shape[:-2], features).astype(out_dtype)

    @jax.custom_vjp
    def conv(x: jax.Array, w: jax.Array) -> jax.Array:
        """Without gradients (evaluation): a chain of multiply-adds, one loop fused into its consumer."""
        slices, weights, finish = taps_and_weights(x, w)
        return finish(sum(jnp.sum(xs * weights[t], axis=-2) for t, xs in enumerate(slices)))

    def forward(x: jax.Array, w: jax.Array):
        """With gradients (training) the output has several consumers (the pool, its gradient, the
        bias gradient), and XLA would recompute a chain of adds inside each of them; one reduction
        over the stacked taps is computed once and stored."""
        slices, weights, finish = taps_and_weights(x, w)
        y = jnp.sum(jnp.stack(slices, axis=-4) * weights, axis=(-4, -2))
        return finish(y), (x, w)

    conv.defvjp(forward, _gradients_of(lax.conv_general_dilated, window_strides, padding, options))
    return conv(lhs, rhs)


IMPLEMENTATIONS = {"xla": lax.conv_general_dilated, "im2col": conv_general_dilated,
                   "hybrid": hybrid_conv_general_dilated, "shift": shift_conv_general_dilated}

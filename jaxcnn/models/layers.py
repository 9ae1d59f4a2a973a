"""Building blocks shared by the models: activations, convolution, pooling, batch norm.

This is the one place that turns config values for conv and pool options (ints, tuples, strings, or
the lists ml_collections may produce) into what Flax takes, and the one place a convolution is built,
so a faster convolution can replace `nn.Conv` here alone.

It also holds the checks of model option values that the model families share (sizes, dropout), so
a bad config value fails when the model is created. Error messages name the model option
(`model.<key>`) that carries the value: the CNN models expose conv and pool options under the names
used here (`kernel_size`, `padding`, `pool_window`, ...).
"""

from collections.abc import Callable, Sequence
import itertools
from functools import partial
from numbers import Integral
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import flax.linen as nn
from flax.linen.dtypes import promote_dtype

from jaxcnn import spec
from jaxcnn.models import conv_plan, im2col, pooled
from jaxcnn.models.batchnorm import BatchNorm
from jaxcnn.models.sums import add_bias
from jaxcnn.errors import JaxcnnError

Activation = Callable[[jax.Array], jax.Array]
Padding = str | tuple[tuple[int, int], ...]

# The registries of `jaxcnn.spec`, filled here: one entry per name a model option can give.
ACTIVATIONS = spec.ACTIVATIONS
ACTIVATIONS.register("elu", jax.nn.elu)
# Exact GELU (x·Φ(x)), as PyTorch and Keras default to; jax.nn.gelu defaults to the tanh form.
ACTIVATIONS.register("gelu", partial(jax.nn.gelu, approximate=False))
ACTIVATIONS.register("leaky_relu", jax.nn.leaky_relu)  # bound to `negative_slope` by get_activation
ACTIVATIONS.register("linear", lambda x: x)
ACTIVATIONS.register("relu", jax.nn.relu)
ACTIVATIONS.register("sigmoid", jax.nn.sigmoid)
ACTIVATIONS.register("tanh", jnp.tanh)



class Pool(NamedTuple):
    """A pooling kind: Flax's windowed function, and the reduction of the non-overlapping fast path."""

    window: Callable[..., jax.Array]
    reduce: Callable[..., jax.Array]


POOLS = spec.POOLS
POOLS.register("avg", Pool(nn.avg_pool, jnp.mean))
POOLS.register("max", Pool(nn.max_pool, jnp.max))


def get_activation(name: str, negative_slope: float = 0.01) -> Activation:
    """The activation called `name`; `negative_slope` is leaky_relu's slope for x < 0."""
    activation = ACTIVATIONS.lookup(name)
    if name == "leaky_relu":
        return partial(jax.nn.leaky_relu, negative_slope=negative_slope)
    return activation


def get_pool(kind: str) -> Callable[..., jax.Array]:
    """Flax's pooling function for `kind` ("max" or "avg")."""
    return POOLS.lookup(kind).window


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def to_tuple(
    value: int | Sequence[int], key: str, ndim: int = 2, minimum: int = 1
) -> tuple[int, ...]:
    """An int (same for every spatial dim) or one int per spatial dim, as a tuple of `ndim` ints."""
    values = (value,) * ndim if _is_int(value) else value
    if (
        not isinstance(values, Sequence)
        or isinstance(values, str)
        or len(values) != ndim
        or not all(_is_int(v) and v >= minimum for v in values)
    ):
        raise JaxcnnError(
            f"invalid value {value!r} ({key}); expected an int >= {minimum} or {ndim} such ints, "
            "e.g. 3 or (3, 3)"
        )
    return tuple(int(v) for v in values)


def to_padding(value: Any, key: str, ndim: int = 2) -> Padding:
    """'VALID'/'SAME' (any case), an int, one int per spatial dim, or one (lo, hi) pair per dim."""

    def pair(p: Any) -> tuple[int, int] | None:
        if _is_int(p) and p >= 0:
            return (int(p), int(p))
        if isinstance(p, Sequence) and len(p) == 2 and all(_is_int(v) and v >= 0 for v in p):
            return (int(p[0]), int(p[1]))
        return None

    if isinstance(value, str) and value.upper() in ("VALID", "SAME"):
        return value.upper()
    if _is_int(value) and value >= 0:
        return ((int(value), int(value)),) * ndim
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == ndim:
        pairs = tuple(pair(p) for p in value)
        if None not in pairs:
            return pairs
    raise JaxcnnError(
        f"invalid padding {value!r} ({key}); expected 'VALID', 'SAME', an int >= 0, "
        f"{ndim} ints (one per spatial dim) or {ndim} (lo, hi) pairs, e.g. 1 or ((1, 1), (1, 1))"
    )


def check_dropout(rate: float) -> None:
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0.0 <= rate < 1.0:
        raise JaxcnnError(
            f"invalid dropout rate {rate!r} (model.dropout); expected a number in [0, 1), e.g. 0.5"
        )


def is_sizes(value: Any) -> bool:
    """Whether `value` is a sequence of layer sizes (ints >= 1), e.g. hidden Dense widths."""
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and all(_is_int(v) and v >= 1 for v in value)
    )


def check_sizes(value: Any, key: str) -> None:
    if not is_sizes(value):
        raise JaxcnnError(f"invalid sizes {value!r} ({key}); expected a tuple of ints >= 1, e.g. (64, 128)")


def _size(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def check_window_fits(layer: str, spatial: Sequence[int], window: Sequence[int], strides: Sequence[int],
                      padding: Padding, what: str) -> None:
    """Raise unless `window` (a dilated kernel or a pool window) fits at least once into the input of
    spatial size `spatial` padded by `padding`: otherwise the output would be empty, or the shifted
    slices of `jaxcnn.models.im2col` negative. Checked before the layer runs, for every conv_impl."""
    spatial, window = tuple(spatial), tuple(window)
    pads = im2col.explicit_pads(spatial, window, strides, padding)
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(spatial, pads))
    if all(p >= w for p, w in zip(padded, window)):
        return
    shown = _size(spatial) + (f" (padded to {_size(padded)})" if padded != spatial else "")
    raise JaxcnnError(
        f"model layer {layer}: input spatial size {shown} is smaller than its {what}; use a larger "
        "input (dataset), more padding, a smaller kernel or window, or fewer blocks (model.blocks)"
    )


def conv(
    x: jax.Array,
    features: int,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: Any = "SAME",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    use_bias: bool = True,
    dtype: Any = jnp.float32,
    name: str | None = None,
    conv_impl: str = "auto",
    train: bool = True,
    plan: conv_plan.Plan = (),
    then: pooled.PoolAfter | None = None,
) -> jax.Array:
    """A 2-D convolution over NHWC `x`; call it inside a `@nn.compact` method. With `then`, the
    activation and the pool that follow it are applied too: in one pass (`jaxcnn.models.pooled`)
    where the plan names that for this shape and the options allow it.

    `padding` is anything `to_padding` accepts; `groups` is Flax's `feature_group_count` and must
    divide both `features` and the input channels. `conv_impl` ("auto", "xla", "im2col", "hybrid",
    "shift") picks how the convolution is computed (see `jaxcnn.models.im2col`); the parameters are `nn.Conv`'s either way.
    Under "auto", `plan` (`jaxcnn.models.conv_plan`, measured by `jaxcnn.core.autotune`) names the
    implementation of this convolution's shape in its context (`train`: differentiated, or forward only).
    """
    ndim = x.ndim - 2
    in_channels = _channels_per_group(x.shape[-1], features, groups)
    kernel = to_tuple(kernel_size, "model.kernel_size", ndim)
    stride = to_tuple(strides, "model.strides", ndim)
    pads = to_padding(padding, "model.padding", ndim)
    dilated = to_tuple(dilation, "model.dilation", ndim)
    key = conv_plan.signature(x.shape, features, kernel, stride, pads, dilated, groups, dtype)
    poolable = then is not None and pooled.fusable(in_channels, stride, dilated, groups)
    conv_plan.record(key, in_channels, poolable)
    planned = conv_plan.lookup(plan, key, conv_plan.context_of(train)) if conv_impl == "auto" else None
    if planned == pooled.IMPL and not poolable:  # measured where this model's options allowed it
        planned = None
    impl = planned or im2col.resolve_conv_impl(conv_impl, in_channels=in_channels, train=train)
    fused = impl == pooled.IMPL  # the Conv computes the activation and pool too (`pool_after`)
    module = Conv(
        features=features,
        kernel_size=kernel,
        strides=stride,
        padding=pads,
        kernel_dilation=dilated,
        feature_group_count=groups,
        use_bias=False,
        biased=use_bias,
        dtype=dtype,
        name=name,
        conv_general_dilated=im2col.IMPLEMENTATIONS["xla" if fused else impl],
        pool_after=then if fused else None,
    )
    window = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilated))
    what = f"{_size(kernel)} kernel" + (f" dilated to {_size(window)}" if window != kernel else "")
    check_window_fits("/".join(module.path), x.shape[1:-1], window, stride, pads, what)
    y = module(x)
    return y if then is None or fused else pool(then.activation(y), then.kind, then.window, layer=then.layer,
                                                train=train)


def _channels_per_group(in_channels: int, features: int, groups: Any) -> int:
    """The input channels each group of a convolution sees; one clear error for a bad `groups`."""
    if not _is_int(groups) or groups < 1 or features % groups or in_channels % groups:
        raise JaxcnnError(
            f"groups {groups!r} (model.groups) must be an int >= 1 dividing both the input channels "
            f"({in_channels}) and the conv features ({features}); choose a common divisor, e.g. 1"
        )
    return in_channels // groups



class Conv(nn.Conv):
    """`nn.Conv` (the same parameters, named as Flax names them) whose bias, when `biased`, is added
    by `sums.add_bias`: its gradient is the sum XLA:CPU runs fast. Built as `conv` builds it, with
    `use_bias=False` (Flax's own bias off) and `biased` saying whether there is one. With
    `pool_after` it returns the pooled activation, computed in one pass (`pooled.pooled_conv`)."""

    biased: bool = True
    pool_after: pooled.PoolAfter | None = None

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        if self.pool_after is not None:
            return self._pooled(inputs)
        y = super().__call__(inputs)
        if not self.biased:
            return y
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        return add_bias(y, bias.astype(y.dtype))

    def _pooled(self, inputs: jax.Array) -> jax.Array:
        """The pooled activation, from the parameters `nn.Conv` creates (groups 1, stride 1)."""
        shape = (*self.kernel_size, inputs.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.biased else None
        inputs, kernel, bias = promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        after = self.pool_after
        pads = im2col.explicit_pads(inputs.shape[1:-1], self.kernel_size, (1,) * len(self.kernel_size), self.padding)
        # The pool's window must fit the convolution's output, as `pool` checks it.
        check_window_fits(after.layer, pooled.conv_size(inputs.shape[1:-1], pads, self.kernel_size), after.window,
                          after.window, "VALID", f"{after.kind} pool window {_size(after.window)}")
        return pooled.pooled_conv(inputs, kernel, bias, pads, after)


def pool(
    x: jax.Array,
    kind: str,
    window: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: Any = "VALID",
    layer: str = "pool",
    train: bool = True,
) -> jax.Array:
    """Max or average pooling over NHWC `x`; `stride` defaults to `window` (non-overlapping).
    `layer` names the pool in errors (pools are functions, not modules with a path). `train`:
    whether the pool is differentiated (training) or only run forward (evaluation, prediction,
    exports), which choose different implementations (`_tiled_pool`)."""
    pool_fn = get_pool(kind)
    ndim = x.ndim - 2
    window = to_tuple(window, "model.pool_window", ndim)
    stride = window if stride is None else to_tuple(stride, "model.pool_stride", ndim)
    padding = to_padding(padding, "model.pool_padding", ndim)
    check_window_fits(layer, x.shape[1:-1], window, stride, padding, f"{kind} pool window {_size(window)}")
    if train and window == stride and padding == "VALID":
        return _tiled_pool(x, kind, window)
    return pool_fn(x, window_shape=window, strides=stride, padding=padding)  # keywords: as jax2onnx's patch takes them


def _tiled_pool(x: jax.Array, kind: str, window: tuple[int, ...]) -> jax.Array:
    """Non-overlapping VALID pooling as a reshape + reduction: the same values as `nn.max_pool` /
    `nn.avg_pool`, faster to differentiate on CPU than XLA's reduce_window (whose gradient is a
    select-and-scatter) in the probes of issue 7. A max's gradient is shared
    among tied maxima instead of going to the first. Forward only (evaluation), XLA's reduce_window
    ran the Flax-example CNN's batches of 1000 faster (README, "Speed"): there training keeps this one."""
    n, *spatial, c = x.shape
    out = [size // w for size, w in zip(spatial, window)]
    x = x[(slice(None), *(slice(0, o * w) for o, w in zip(out, window)), slice(None))]
    x = x.reshape(n, *[d for o, w in zip(out, window) for d in (o, w)], c)
    axes = tuple(2 + 2 * i for i in range(len(window)))
    if kind == "max":
        return _window_max(x, axes)
    return POOLS[kind].reduce(x, axis=axes)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _window_max(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """`jnp.max(x, axes)` with the same gradient (shared among tied maxima) in the form XLA:CPU
    runs fastest: the tie counts are a sum of the window's slices, not a reduction, which YNNPACK
    would take over together with the convolution gradient that feeds it (README, "Speed")."""
    return jnp.max(x, axis=axes)


def _window_max_forward(x: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    y = jnp.max(x, axis=axes)
    return y, (x, y)


def _window_max_backward(axes: tuple[int, ...], saved: tuple[jax.Array, jax.Array],
                         grad: jax.Array) -> tuple[jax.Array]:
    x, y = saved
    tied = x == jnp.expand_dims(y, axes)
    ones = tied.astype(grad.dtype)
    count = sum(ones[_slot(x.ndim, dict(zip(axes, position)))]
                for position in itertools.product(*(range(x.shape[a]) for a in axes)))
    share = jnp.expand_dims(grad, axes) / count
    return (jnp.where(tied, share, jnp.zeros_like(share)),)


def _slot(ndim: int, positions: dict[int, int]) -> tuple[slice, ...]:
    """The index of one position in every window: `positions[axis]` along the window axes (kept
    as size-1 dims), everything along the others."""
    return tuple(slice(positions[a], positions[a] + 1) if a in positions else slice(None) for a in range(ndim))


_window_max.defvjp(_window_max_forward, _window_max_backward)


def batch_norm(
    x: jax.Array, train: bool, dtype: Any = jnp.float32, name: str | None = None,
    axis_name: str | None = None,
) -> jax.Array:
    """BatchNorm over the batch (statistics in `batch_stats`). Under sharded jit the batch is
    global, so the statistics already span all devices: no `axis_name`. Under pmap each device
    holds a slice: `axis_name` (the pmap axis) averages the statistics over the devices."""
    return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name,
                     axis_name=axis_name)(x)

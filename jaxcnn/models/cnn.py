"""The plain CNN family (notes 003/004): [conv → (BN) → activation]×n → pool, repeated, then a
fully connected head. One configurable `ConvNet`; the presets below only change its defaults.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxcnn.models import im2col, layers, pooled
from jaxcnn.errors import JaxcnnError


class ConvNet(nn.Module):
    """Blocks of convolutions, each block followed by one pool; then flatten → hidden Dense → output.

    `blocks` holds one tuple of conv feature counts per block. Conv options (`kernel_size`, `strides`,
    `padding`, `dilation`, `groups`, `use_bias`) apply to every conv; with `batch_norm` each conv is
    conv → BatchNorm → activation; `conv_impl` picks how convolutions are computed (`jaxcnn.models.im2col`). `input_padding` zero-pads the input on each side first (LeNet-5
    uses 2 to see 28×28 MNIST as its classic 32×32). Dropout comes before each Dense layer.
    The defaults are the Flax MNIST example CNN (preset `cnn`).
    """

    num_classes: int
    blocks: Sequence[Sequence[int]] = ((32,), (64,))
    kernel_size: int | Sequence[int] = 3
    strides: int | Sequence[int] = 1
    padding: Any = "SAME"
    dilation: int | Sequence[int] = 1
    groups: int = 1
    use_bias: bool = True
    conv_impl: str = "auto"
    conv_plan: tuple = ()  # measured per machine under conv_impl="auto" (jaxcnn.models.conv_plan)
    input_padding: int = 0
    batch_norm: bool = False
    activation: str = "relu"
    negative_slope: float = 0.01
    pool: str = "avg"
    pool_window: int | Sequence[int] = 2
    pool_stride: int | Sequence[int] = 2
    pool_padding: Any = "VALID"
    hidden: Sequence[int] = (256,)
    dropout: float = 0.0
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None  # set by create_model for pmap (see jaxcnn.core.executor)

    def __post_init__(self) -> None:
        # Checked at construction, so a bad config value fails in create_model, before any data loads.
        # `groups` is checked by layers.conv, which knows the input channels.
        if not isinstance(self.blocks, Sequence) or not all(layers.is_sizes(block) for block in self.blocks):
            raise JaxcnnError(
                f"invalid blocks {self.blocks!r} (model.blocks); expected a tuple of blocks, each a tuple "
                "of conv feature counts, e.g. ((32,), (64,))"
            )
        layers.check_sizes(self.hidden, "model.hidden")
        for key in ("kernel_size", "strides", "dilation", "pool_window", "pool_stride"):
            layers.to_tuple(getattr(self, key), f"model.{key}")
        for key in ("padding", "pool_padding"):
            layers.to_padding(getattr(self, key), f"model.{key}")
        pad = self.input_padding
        if not isinstance(pad, int) or isinstance(pad, bool) or pad < 0:
            raise JaxcnnError(
                f"invalid input_padding {pad!r} (model.input_padding); expected an int >= 0, e.g. 2"
            )
        layers.get_activation(self.activation)
        im2col.resolve_conv_impl(self.conv_impl)
        layers.get_pool(self.pool)
        layers.check_dropout(self.dropout)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        act = layers.get_activation(self.activation, self.negative_slope)
        pad = self.input_padding
        x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        convs = 0
        for number, block in enumerate(self.blocks, start=1):
            convs += len(block)
            layer = f"pool of block {number}" + (f" (after Conv_{convs - 1})" if convs else "")
            # The block's last convolution takes its activation and pool along (not across a BatchNorm).
            pool = self._pool_after(act, layer) if block and not self.batch_norm else None
            for index, features in enumerate(block):
                then = pool if index == len(block) - 1 else None
                x = layers.conv(
                    x, features, self.kernel_size, strides=self.strides, padding=self.padding,
                    dilation=self.dilation, groups=self.groups, use_bias=self.use_bias,
                    dtype=self.dtype, conv_impl=self.conv_impl, train=train, plan=self.conv_plan, then=then,
                )
                if then is None:
                    if self.batch_norm:
                        x = layers.batch_norm(x, train, self.dtype, axis_name=self.bn_axis_name)
                    x = act(x)
            if pool is None:
                x = layers.pool(x, self.pool, self.pool_window, self.pool_stride, self.pool_padding,
                                layer=layer, train=train)
        x = x.reshape((x.shape[0], -1))
        for features in self.hidden:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
            x = act(nn.Dense(features, dtype=self.dtype)(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)

    def _pool_after(self, act: layers.Activation, layer: str) -> pooled.PoolAfter | None:
        """The blocks' pool with the activation before it, where a convolution can take both along."""
        window = layers.to_tuple(self.pool_window, "model.pool_window")
        stride = layers.to_tuple(self.pool_stride, "model.pool_stride")
        padding = layers.to_padding(self.pool_padding, "model.pool_padding")
        return pooled.pool_after(act, self.pool, window, stride, padding, layer)


# Presets: overrides of ConvNet's defaults. Parameter counts are for the preset's default input and
# checked by tests/test_models.py.

# Notes 004's NumPy tutorial: conv 3×3×8 VALID (28→26) → max-pool 2 (→13) → Dense 10; 13,610 params.
# The tutorial has no activation between conv and pool, so "linear" matches it (the max-pool is the
# only non-linearity); set activation="relu" for the textbook conv → ReLU → pool.
TINY_CNN = dict(
    blocks=((8,),), padding="VALID", activation="linear", pool="max", hidden=(),
)

# The Flax MNIST example: ConvNet's defaults. 824,458 params.
CNN: dict[str, Any] = {}

# LeNet-5 on 28×28 (padded to the classic 32×32): conv 6 5×5 → avg-pool → conv 16 5×5 → avg-pool
# → 120 → 84 → 10, with the classic tanh and average ("subsampling") pools. 61,706 params.
LENET5 = dict(
    blocks=((6,), (16,)), kernel_size=5, padding="VALID", input_padding=2, activation="tanh",
    hidden=(120, 84),
)

# A CIFAR-scale VGG (32×32×3): three blocks of two 3×3 convs with BatchNorm (so no conv bias),
# max-pool 2 (32→16→8→4), then 4·4·256 → 512 → 10 with the original VGG classifier's dropout 0.5.
# 3,249,098 params.
VGG = dict(
    blocks=((64, 64), (128, 128), (256, 256)), use_bias=False, batch_norm=True, pool="max",
    hidden=(512,), dropout=0.5,
)

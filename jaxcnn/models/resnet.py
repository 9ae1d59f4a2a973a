"""CIFAR-style residual networks (He et al. 2016) built from basic blocks, with BatchNorm.

A 3×3 stem conv (stride 1, no max-pool), stages of basic blocks (the first stage keeps the
resolution, each later one halves it in its first block), global average pool, Dense.
Convolutions are bias-free (BatchNorm follows each) with symmetric padding 1, as in PyTorch.
"""

from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxcnn.models import im2col, layers
from jaxcnn.errors import JaxcnnError
from jaxcnn.models.layers import Activation


class BasicBlock(nn.Module):
    """conv3×3(stride) → BN → act → conv3×3 → BN, plus the shortcut, → act. The shortcut is a
    1×1 conv + BN projection where the shape changes, the identity otherwise."""

    features: int
    strides: int
    act: Activation
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    conv_plan: tuple = ()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = partial(layers.conv, use_bias=False, dtype=self.dtype, conv_impl=self.conv_impl, train=train,
                       plan=self.conv_plan)
        y = conv(x, self.features, 3, self.strides, padding=1)
        y = self.act(layers.batch_norm(y, train, self.dtype, axis_name=self.bn_axis_name))
        y = conv(y, self.features, 3, padding=1)
        y = layers.batch_norm(y, train, self.dtype, axis_name=self.bn_axis_name)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = conv(x, self.features, 1, self.strides, padding="VALID", name="shortcut_conv")
            x = layers.batch_norm(x, train, self.dtype, name="shortcut_bn", axis_name=self.bn_axis_name)
        return self.act(x + y)


class ResNet(nn.Module):
    """`stage_sizes[i]` basic blocks of width `widths[i]`; the stem has `widths[0]` features.
    The defaults are ResNet-20 (preset `resnet20`)."""

    num_classes: int
    stage_sizes: Sequence[int] = (3, 3, 3)
    widths: Sequence[int] = (16, 32, 64)
    activation: str = "relu"
    negative_slope: float = 0.01
    conv_impl: str = "auto"
    conv_plan: tuple = ()  # measured per machine under conv_impl="auto" (jaxcnn.models.conv_plan)
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None  # set by create_model for pmap (see jaxcnn.core.executor)

    def __post_init__(self) -> None:
        # Checked at construction, so a bad config value fails in create_model, before any data loads.
        layers.check_sizes(self.stage_sizes, "model.stage_sizes")
        layers.check_sizes(self.widths, "model.widths")
        if not self.widths or len(self.stage_sizes) != len(self.widths):
            raise JaxcnnError(
                f"model.stage_sizes {tuple(self.stage_sizes)} and model.widths {tuple(self.widths)} must "
                "be non-empty and of the same length (one width per stage); make them match"
            )
        layers.get_activation(self.activation)
        im2col.resolve_conv_impl(self.conv_impl)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        act = layers.get_activation(self.activation, self.negative_slope)
        x = layers.conv(x, self.widths[0], 3, padding=1, use_bias=False, dtype=self.dtype,
                        conv_impl=self.conv_impl, train=train, plan=self.conv_plan)
        x = act(layers.batch_norm(x, train, self.dtype, axis_name=self.bn_axis_name))
        for stage, (size, width) in enumerate(zip(self.stage_sizes, self.widths)):
            for block in range(size):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(width, strides, act, self.dtype, self.bn_axis_name, self.conv_impl,
                               self.conv_plan)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


# Presets: overrides of ResNet's defaults; counts at 32×32×3, checked by tests/test_models.py.
RESNET20: dict[str, Any] = {}  # 272,474 params (projection shortcuts)
RESNET18 = dict(stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512))  # 11,173,962 params

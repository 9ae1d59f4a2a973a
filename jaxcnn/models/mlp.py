"""The fully connected classifier (notes 001): flatten → hidden Dense layers → output Dense."""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxcnn.models import layers


class MLP(nn.Module):
    """flatten → [Dense(h) → activation → dropout] for each h in `hidden` → Dense(num_classes).

    The defaults are the seed MLP: 784 → 512 ReLU → 10, 407,050 parameters on 28×28×1.
    """

    num_classes: int
    hidden: Sequence[int] = (512,)
    activation: str = "relu"
    negative_slope: float = 0.01
    dropout: float = 0.0
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        # Checked at construction, so a bad config value fails in create_model, before any data loads.
        layers.check_sizes(self.hidden, "model.hidden")
        layers.get_activation(self.activation)
        layers.check_dropout(self.dropout)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        act = layers.get_activation(self.activation, self.negative_slope)
        x = x.reshape((x.shape[0], -1))
        for features in self.hidden:
            x = act(nn.Dense(features, dtype=self.dtype)(x))
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)

"""Mixed precision: the computation dtype named by `config.dtype`.

With "bfloat16" the models compute activations (convolutions, matmuls) in bfloat16; parameters,
optimizer state, gradients and the loss stay float32 (Flax keeps `param_dtype` float32 and the
models cast their logits to float32 before the loss).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from jaxcnn import spec

DTYPES = spec.DTYPES  # filled here
DTYPES.register("float32", jnp.float32)
DTYPES.register("bfloat16", jnp.bfloat16)


def compute_dtype(name: str) -> Any:
    """The jnp dtype for `config.dtype` ("float32" or "bfloat16")."""
    return DTYPES.lookup(name)

"""Mixed precision: the computation dtype named by `config.dtype`.

With "bfloat16" or "float16" the models compute activations (convolutions, matmuls) in that dtype;
parameters, optimizer state, gradients and the loss stay float32 (Flax keeps `param_dtype` float32
and the models cast their logits to float32 before the loss).

bfloat16 has float32's exponent range, so its gradients neither underflow nor overflow. float16
(for GPUs without bfloat16: V100, T4) has a far narrower one, so its runs scale the loss
dynamically (`scaling_of`, `jaxcnn.core.loss_scale`); the others have no loss scale at all.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from jaxcnn import spec
from jaxcnn.core.loss_scale import Policy

DTYPES = spec.DTYPES  # filled here
DTYPES.register("float32", jnp.float32)
DTYPES.register("bfloat16", jnp.bfloat16)
DTYPES.register("float16", jnp.float16)
SCALED = ("float16",)  # the dtypes whose runs scale the loss


def compute_dtype(name: str) -> Any:
    """The jnp dtype for `config.dtype` ("float32", "bfloat16" or "float16")."""
    return DTYPES.lookup(name)


def scaling_of(config: Any) -> Policy | None:
    """The dynamic loss scaling of a run (`config.loss_scale`), or None: only float16 runs scale.
    A config written before `loss_scale` existed takes its defaults."""
    return policy_for(config.dtype, config.get("loss_scale") or {})


def policy_for(dtype: str, section: Any = None) -> Policy | None:
    """The loss scaling of `dtype` with `section`'s values (`config.loss_scale`; None: the defaults)."""
    if dtype not in SCALED:
        return None
    values = spec.LossScaleSpec.parse(section or {})
    return Policy(values.initial, values.growth_interval, values.minimum)

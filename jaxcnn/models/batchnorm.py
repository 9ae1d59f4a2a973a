"""BatchNorm as Flax's `nn.BatchNorm` computes it, with its gradient written out and its sums in the
form XLA:CPU runs fast (`sums.channel_sums`).

The variables, statistics and running averages are Flax's (`params`: `scale`, `bias`;
`batch_stats`: `mean`, `var`; the variance as E[x²] - E[x]², clipped at 0; the module is named
`BatchNorm_<n>` as Flax's is), so checkpoints, imports and exports see no difference. Two things
differ, both for speed on CPU:

- Each statistic is a sum over every axis but the channels, computed by `sums.channel_sums`, which
  XLA:CPU runs faster than `jnp.sum` over those axes.
- The gradient is the closed form (`_normalize_backward`): two such sums and one element-wise pass,
  where autodiff of the forward formula leaves more reductions and passes.

Under pmap (`axis_name`) the statistics are averaged over the devices, and so are the sums the
input's gradient needs, as autodiff of Flax's `lax.pmean` gives; the parameters' gradients stay the
device's own, as they do there. The measured effect is in README.md, "Chosen by measurement".
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.models.sums import channel_sums


def _mean_over(values: jax.Array, axis_name: str | None) -> jax.Array:
    """`values` averaged over the devices of `axis_name` (one collective for all of them)."""
    return values if axis_name is None else lax.pmean(values, axis_name)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def normalize(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, axis_name: str | None
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(y, mean, var)`: `x` normalised by its batch statistics over every axis but the last, scaled
    and shifted, in float32; the statistics for the running averages."""
    return _normalize_forward(x, scale, bias, epsilon, axis_name)[0]


def _normalize_forward(x, scale, bias, epsilon, axis_name):
    x32 = x.astype(jnp.float32)
    rows = x.size // x.shape[-1]
    mean, mean_sq = _mean_over(jnp.stack([channel_sums(x32), channel_sums(x32 * x32)]) / rows, axis_name)
    var = jnp.maximum(0.0, mean_sq - mean * mean)
    inv = lax.rsqrt(var + epsilon)
    y = (x32 - mean) * (inv * scale) + bias
    return (y, mean, var), (x, mean, inv, scale)


def _normalize_backward(epsilon, axis_name, residuals, cotangents):
    """The closed-form gradient: with x̂ = (x - mean)·inv and N the examples' count over the devices,
    dx = scale·inv·(dy - Σdy/N - x̂·Σ(dy·x̂)/N) + (dmean + 2(x - mean)·dvar)/N,
    dscale = Σ(dy·x̂), dbias = Σdy (this device's sums)."""
    del epsilon
    x, mean, inv, scale = residuals
    dy, dmean, dvar = cotangents
    rows = x.size // x.shape[-1]
    centred = x.astype(jnp.float32) - mean
    xhat = centred * inv
    dbias, dscale = channel_sums(dy), channel_sums(dy * xhat)
    sum_dy, sum_dy_xhat, dmean, dvar = _mean_over(jnp.stack([dbias, dscale, dmean, dvar]) / rows, axis_name)
    dx = (scale * inv) * (dy - sum_dy - xhat * sum_dy_xhat) + dmean + 2.0 * centred * dvar
    return dx.astype(x.dtype), dscale, dbias


normalize.defvjp(_normalize_forward, _normalize_backward)


class BatchNorm(nn.Module):
    """Flax's `nn.BatchNorm` over the last axis (the same variables and arithmetic), trained through
    `normalize`. `dtype` is the output's (float32 when None); statistics and parameters are float32."""

    use_running_average: bool
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (x.shape[-1],)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
        scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
        if self.use_running_average:
            y = (x - running_mean.value) * (lax.rsqrt(running_var.value + self.epsilon) * scale) + bias
        else:
            initializing = self.is_initializing()
            y, mean, var = normalize(x, scale, bias, self.epsilon, None if initializing else self.axis_name)
            if not initializing:
                running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
                running_var.value = self.momentum * running_var.value + (1 - self.momentum) * var
        return y.astype(self.dtype or jnp.float32)

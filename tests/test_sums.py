"""Sums over the batch in XLA:CPU's fast form: the same sums, and `layers.Conv` the same as `nn.Conv`."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.models import layers
from jaxcnn.models.sums import add_bias, channel_sums


def _random(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


@pytest.mark.parametrize("shape", [(64, 28, 28, 8), (7, 3, 5, 4), (5, 6), (1, 3)])
def test_channel_sums_equal_the_sum_over_every_axis_but_the_last(shape):
    x = _random(shape)
    np.testing.assert_allclose(channel_sums(x), np.asarray(x, np.float64).reshape(-1, shape[-1]).sum(0),
                               rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_add_bias_adds_and_its_bias_gradient_is_the_sum_of_the_outputs(dtype):
    y, bias, weights = _random((4, 5, 5, 3)).astype(dtype), _random((3,), 1).astype(dtype), _random((4, 5, 5, 3), 2)
    np.testing.assert_array_equal(add_bias(y, bias), y + bias)
    grads = jax.grad(lambda y, b: jnp.sum(add_bias(y, b).astype(jnp.float32) * weights), (0, 1))(y, bias)
    assert grads[0].dtype == grads[1].dtype == dtype
    np.testing.assert_allclose(grads[0].astype(jnp.float32), weights.astype(dtype).astype(jnp.float32))
    np.testing.assert_allclose(grads[1].astype(jnp.float32), weights.sum((0, 1, 2)), rtol=1e-2 if dtype == jnp.bfloat16 else 1e-5)


@pytest.mark.parametrize("use_bias", [True, False])
def test_layers_conv_has_nn_convs_parameters_values_and_gradients(use_bias):
    x = _random((2, 6, 6, 3))

    class Two(nn.Module):
        ours: bool

        @nn.compact
        def __call__(self, x):
            if self.ours:
                return layers.conv(layers.conv(x, 4, 3, use_bias=use_bias, conv_impl="xla"), 8, 3,
                                   use_bias=use_bias, conv_impl="xla")
            first, second = nn.Conv(4, (3, 3), use_bias=use_bias), nn.Conv(8, (3, 3), use_bias=use_bias)
            return second(first(x))

    ours, theirs = Two(True), Two(False)
    variables = theirs.init(jax.random.key(0), x)
    assert jax.tree.structure(ours.init(jax.random.key(0), x)) == jax.tree.structure(variables)
    for a, b in zip(jax.tree.leaves(ours.init(jax.random.key(0), x)), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(a, b)
    variables = jax.tree.map(lambda v: v + 0.1, variables)  # a bias that is not zero
    np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(variables, x), rtol=1e-6, atol=1e-6)
    grads = [jax.grad(lambda v, m=m: jnp.sum(jnp.sin(m.apply(v, x))))(variables) for m in (ours, theirs)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

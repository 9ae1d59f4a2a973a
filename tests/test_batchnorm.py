"""jaxcnn's BatchNorm computes what Flax's `nn.BatchNorm` computes: variables, outputs, running
averages and gradients, under vmap's named axis too; only the order of its sums differs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.models.batchnorm import BatchNorm, normalize


def _input(shape, seed=0, offset=3.0):
    """Activations with a large mean, where E[x²] - E[x]² loses the most to rounding."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) + offset)


def _both(**options):
    return BatchNorm(use_running_average=False, **options), nn.BatchNorm(
        use_running_average=False, momentum=0.9, epsilon=1e-5, **options)


def test_variables_are_flax_batchnorms_names_shapes_and_initial_values():
    x = _input((4, 5, 5, 3))

    class Two(nn.Module):
        flax: bool

        @nn.compact
        def __call__(self, x):
            make = (lambda: nn.BatchNorm(use_running_average=False)) if self.flax else (
                lambda: BatchNorm(use_running_average=False))
            return make()(make()(x))

    ours, theirs = (Two(flax).init(jax.random.key(0), x) for flax in (False, True))
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    assert set(ours["params"]) == {"BatchNorm_0", "BatchNorm_1"}
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape", [(64, 14, 14, 32), (6, 5, 5, 3)])
def test_training_output_running_averages_and_gradients_match_flax(shape):
    x = _input(shape)
    ours, theirs = _both()
    variables = theirs.init(jax.random.key(0), x)
    params = {"scale": jnp.linspace(0.5, 1.5, shape[-1]), "bias": jnp.linspace(-1.0, 1.0, shape[-1])}
    weights = _input(shape, seed=1, offset=0.0)

    def loss(module, params, x):
        y, updates = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                  mutable=["batch_stats"])
        return jnp.sum(jnp.tanh(y) * weights), (y, updates["batch_stats"])

    results = [jax.jit(jax.grad(lambda p, x, m=m: loss(m, p, x), (0, 1), has_aux=True))(params, x)
               for m in (ours, theirs)]
    (grads, (y, stats)), (flax_grads, (flax_y, flax_stats)) = results
    np.testing.assert_allclose(y, flax_y, rtol=1e-4, atol=1e-4)
    for name in ("mean", "var"):
        np.testing.assert_allclose(stats[name], flax_stats[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads[1], flax_grads[1], rtol=1e-3, atol=1e-4)
    for name in ("scale", "bias"):
        np.testing.assert_allclose(grads[0][name], flax_grads[0][name], rtol=1e-4, atol=1e-3)


def test_the_gradient_through_the_returned_statistics_is_autodiffs():
    """`normalize` also returns the batch statistics; a loss that uses them (none of jaxcnn's does)
    gets the gradient autodiff gives the forward formula."""
    x = _input((6, 4, 4, 5))
    scale, bias = jnp.linspace(0.5, 1.5, 5), jnp.linspace(-1.0, 1.0, 5)

    def reference(x, scale, bias):
        mean = x.mean((0, 1, 2))
        var = jnp.maximum(0.0, (x * x).mean((0, 1, 2)) - mean * mean)
        return (x - mean) * (jax.lax.rsqrt(var + 1e-5) * scale) + bias, mean, var

    def loss(fn, x, scale, bias):
        y, mean, var = fn(x, scale, bias)
        return jnp.sum(jnp.sin(y)) + jnp.sum(mean * jnp.arange(5.0)) + jnp.sum(var ** 2)

    ours = jax.grad(lambda *a: loss(lambda *b: normalize(*b, 1e-5, None), *a), (0, 1, 2))(x, scale, bias)
    theirs = jax.grad(lambda *a: loss(reference, *a), (0, 1, 2))(x, scale, bias)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_evaluation_uses_the_running_averages_as_flax_does():
    x = _input((8, 5, 5, 3))
    stats = {"mean": jnp.array([0.5, -1.0, 2.0]), "var": jnp.array([1.5, 0.25, 4.0])}
    params = {"scale": jnp.array([1.0, 2.0, 0.5]), "bias": jnp.array([0.0, 1.0, -1.0])}
    ours, theirs = (module.apply({"params": params, "batch_stats": stats}, x)
                    for module in (BatchNorm(use_running_average=True),
                                   nn.BatchNorm(use_running_average=True, epsilon=1e-5)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_under_a_named_axis_statistics_and_gradients_span_all_slices_as_flaxs_do():
    x = _input((2, 8, 5, 5, 4))  # two slices of a batch of 8, as two devices would hold them
    ours, theirs = _both(axis_name="batch")
    variables = theirs.init(jax.random.key(0), x[0])
    weights = _input(x.shape[1:], seed=2, offset=0.0)

    def grads(module):
        def loss(params, x):
            y, updates = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                      mutable=["batch_stats"])
            return jnp.sum(jnp.tanh(y) * weights), updates["batch_stats"]

        return jax.vmap(jax.grad(loss, (0, 1), has_aux=True), in_axes=(None, 0), axis_name="batch")(
            variables["params"], x)

    (ours_grads, ours_stats), (flax_grads, flax_stats) = grads(ours), grads(theirs)
    np.testing.assert_allclose(ours_stats["mean"][0], 0.1 * x.mean((0, 1, 2, 3)), rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves((ours_grads, ours_stats)), jax.tree.leaves((flax_grads, flax_stats))):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_half_precision_input_gives_output_of_the_dtype_and_a_gradient_of_the_inputs():
    x = _input((4, 3, 3, 2)).astype(jnp.bfloat16)
    module = BatchNorm(use_running_average=False, dtype=jnp.bfloat16)
    variables = module.init(jax.random.key(0), x)
    y, _ = module.apply(variables, x, mutable=["batch_stats"])
    grad = jax.grad(lambda x: jnp.sum(module.apply(variables, x, mutable=["batch_stats"])[0]
                                      .astype(jnp.float32) ** 2))(x)
    assert y.dtype == jnp.bfloat16 and grad.dtype == jnp.bfloat16
    assert variables["params"]["scale"].dtype == jnp.float32

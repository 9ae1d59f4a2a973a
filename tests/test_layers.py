"""Activations, convolution options and pooling in jaxcnn.models.layers."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.models import layers
from jaxcnn.errors import JaxcnnError

POINTS = np.array([-3.0, -0.5, 0.0, 0.5, 3.0], dtype=np.float32)

FORMULAS = {
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.01 * x),
    "elu": lambda x: np.where(x > 0, x, np.exp(x) - 1),
    "gelu": lambda x: np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x]),
    "linear": lambda x: x,
}


def run_conv(x: jax.Array, **kwargs) -> tuple[jax.Array, dict]:
    """Initialise and apply one `layers.conv` on `x`; return the output and the params."""

    class OneConv(nn.Module):
        @nn.compact
        def __call__(self, x):
            return layers.conv(x, **kwargs)

    y, variables = OneConv().init_with_output(jax.random.key(0), x)
    return y, variables["params"]["Conv_0"]


def test_activation_table_covers_every_formula():
    assert set(layers.ACTIVATIONS) == set(FORMULAS)


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_activation_matches_its_formula(name):
    actual = layers.get_activation(name)(POINTS)
    np.testing.assert_allclose(actual, FORMULAS[name](POINTS), rtol=1e-5, atol=1e-6)


def test_leaky_relu_uses_negative_slope():
    act = layers.get_activation("leaky_relu", negative_slope=0.2)
    np.testing.assert_allclose(act(POINTS), np.where(POINTS > 0, POINTS, 0.2 * POINTS), rtol=1e-6)


def test_unknown_activation_names_it_and_lists_known():
    with pytest.raises(JaxcnnError, match=r"'rleu' \(model\.activation\).*relu"):
        layers.get_activation("rleu")


# 8×8 input, 3×3 kernel: VALID 8-3+1 = 6; SAME 8; padding p gives 8+2p-3+1.
@pytest.mark.parametrize(
    "padding, expected_hw",
    [
        ("VALID", (6, 6)),
        ("SAME", (8, 8)),
        ("same", (8, 8)),
        (0, (6, 6)),
        (1, (8, 8)),
        (2, (10, 10)),
        ((1, 0), (8, 6)),
        (((2, 0), (0, 1)), (8, 7)),
        ([[1, 1], [1, 1]], (8, 8)),  # lists, as ml_collections may give
    ],
)
def test_conv_padding_gives_expected_spatial_size(padding, expected_hw):
    y, _ = run_conv(jnp.ones((1, 8, 8, 2)), features=4, kernel_size=3, padding=padding)
    assert y.shape == (1, *expected_hw, 4)


@pytest.mark.parametrize(
    "options, expected_hw",
    [
        (dict(strides=2, padding="SAME"), (4, 4)),  # ceil(8 / 2)
        (dict(strides=(1, 2), padding="VALID"), (6, 3)),  # (8-3)//1+1, (8-3)//2+1
        (dict(dilation=2, padding="VALID"), (4, 4)),  # effective kernel 5: 8-5+1
        (dict(kernel_size=[1, 3], padding="VALID"), (8, 6)),
    ],
)
def test_conv_strides_dilation_and_kernel_shape_output(options, expected_hw):
    y, _ = run_conv(jnp.ones((1, 8, 8, 2)), **{"features": 4, "kernel_size": 3, **options})
    assert y.shape == (1, *expected_hw, 4)


def test_conv_groups_divide_kernel_params():
    # 4 in, 8 out, 2 groups: each output sees 4/2 channels: 3·3·2·8 = 144 weights + 8 biases.
    _, params = run_conv(jnp.ones((1, 5, 5, 4)), features=8, kernel_size=3, groups=2)
    assert params["kernel"].shape == (3, 3, 2, 8)
    assert params["kernel"].size + params["bias"].size == 152


@pytest.mark.parametrize("features, channels", [(6, 4), (8, 3)])
def test_conv_groups_must_divide_features_and_channels(features, channels):
    with pytest.raises(JaxcnnError, match=r"groups 4 \(model\.groups\)"):
        run_conv(jnp.ones((1, 5, 5, channels)), features=features, kernel_size=3, groups=4)


def test_conv_without_bias_has_only_a_kernel():
    _, params = run_conv(jnp.ones((1, 5, 5, 2)), features=4, kernel_size=3, use_bias=False)
    assert set(params) == {"kernel"}


@pytest.mark.parametrize(
    "options, key",
    [
        (dict(padding="FULL"), "model.padding"),
        (dict(padding=-1), "model.padding"),
        (dict(padding=(1, 1, 1)), "model.padding"),
        (dict(kernel_size=0), "model.kernel_size"),
        (dict(strides=(1, 2, 3)), "model.strides"),
        (dict(dilation=True), "model.dilation"),
    ],
)
def test_conv_rejects_bad_option_values_naming_the_key(options, key):
    with pytest.raises(JaxcnnError, match=key.replace(".", r"\.")):
        run_conv(jnp.ones((1, 5, 5, 2)), **{"features": 4, "kernel_size": 3, **options})


def test_conv_that_shrinks_the_input_to_nothing_raises():
    with pytest.raises(JaxcnnError, match="spatial size"):
        run_conv(jnp.ones((1, 2, 2, 1)), features=4, kernel_size=3, padding="VALID")


def test_pool_max_and_avg_on_a_hand_example():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)  # rows 0-3, 4-7, 8-11, 12-15
    max_2x2 = layers.pool(x, "max", 2)[0, :, :, 0]
    avg_2x2 = layers.pool(x, "avg", 2)[0, :, :, 0]
    np.testing.assert_array_equal(max_2x2, [[5, 7], [13, 15]])
    np.testing.assert_array_equal(avg_2x2, [[2.5, 4.5], [10.5, 12.5]])  # e.g. (0+1+4+5)/4


def test_pool_stride_and_padding_set_output_size():
    x = jnp.ones((1, 5, 5, 1))
    assert layers.pool(x, "max", 3, stride=1).shape == (1, 3, 3, 1)  # 5-3+1
    assert layers.pool(x, "max", 2, stride=2, padding="SAME").shape == (1, 3, 3, 1)  # ceil(5/2)
    assert layers.pool(x, "avg", 2, stride=2, padding=1).shape == (1, 3, 3, 1)  # (5+2-2)//2+1


def test_unknown_pool_kind_names_it():
    with pytest.raises(JaxcnnError, match=r"'mean' \(model\.pool\).*avg, max"):
        layers.pool(jnp.ones((1, 4, 4, 1)), "mean", 2)


def test_batch_norm_updates_running_stats_only_in_train_mode():
    class Norm(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            return layers.batch_norm(x, train)

    x = jax.random.normal(jax.random.key(1), (8, 3, 3, 2)) + 5.0
    variables = Norm().init(jax.random.key(0), x, train=False)
    _, eval_update = Norm().apply(variables, x, train=False, mutable=["batch_stats"])
    _, train_update = Norm().apply(variables, x, train=True, mutable=["batch_stats"])
    mean0 = variables["batch_stats"]["BatchNorm_0"]["mean"]
    np.testing.assert_array_equal(eval_update["batch_stats"]["BatchNorm_0"]["mean"], mean0)
    # momentum 0.9: running mean = 0.9·0 + 0.1·batch mean
    np.testing.assert_allclose(
        train_update["batch_stats"]["BatchNorm_0"]["mean"], 0.1 * x.mean(axis=(0, 1, 2)), rtol=1e-5
    )


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_tiled_pool_fast_path_matches_flax_pooling_and_its_gradient(kind):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 6, 3)), jnp.float32)  # 7 rows -> 3: crops
    flax_pool = {"max": nn.max_pool, "avg": nn.avg_pool}[kind]
    fast = lambda x: layers.pool(x, kind, 2)
    reference = lambda x: flax_pool(x, (2, 2), (2, 2), "VALID")
    np.testing.assert_allclose(fast(x), reference(x), rtol=1e-6, atol=1e-6)
    weights = jnp.arange(2 * 3 * 3 * 3, dtype=jnp.float32).reshape(2, 3, 3, 3)
    grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * weights))(x)
    np.testing.assert_allclose(grad(fast), grad(reference), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("window", [2, 3])
def test_max_pool_gradient_equals_jnp_max_gradient_bitwise_ties_shared_batched_too(window):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 7, 6, 4)).astype(np.float32)
    x[0, :3, :3, 0] = 1.5                  # a whole window tied
    x[1, 0, :2, 1] = 9.0                   # two tied maxima
    x[2, :2, :2, 2] = [[3.0, 3.0], [3.0, 1.0]]  # three
    x = jnp.asarray(x)
    out = (7 // window, 6 // window)
    weights = jnp.asarray(rng.normal(size=(3, *out, 4)).astype(np.float32))

    def reference(x):  # jnp.max over the windows: its gradient splits a window's among its tied maxima
        cropped = x[:, :out[0] * window, :out[1] * window]
        return jnp.max(cropped.reshape(3, out[0], window, out[1], window, 4), axis=(2, 4))

    fast = lambda x: layers.pool(x, "max", window)
    loss = lambda f: lambda x, w: jnp.sum(f(x) * w)
    np.testing.assert_array_equal(fast(x), reference(x))
    expected = jax.grad(loss(reference))(x, weights)
    np.testing.assert_array_equal(jax.grad(loss(fast))(x, weights), expected)
    assert float(expected[0, 0, 0, 0]) == float(weights[0, 0, 0, 0]) / window**2  # shared, not copied
    batched = jax.vmap(jax.grad(loss(fast)))(jnp.stack([x, -x]), jnp.stack([weights, weights]))
    np.testing.assert_array_equal(batched[0], expected)
    np.testing.assert_array_equal(batched[1], jax.grad(loss(reference))(-x, weights))

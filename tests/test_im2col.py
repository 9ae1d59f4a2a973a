"""The im2col, hybrid and shift convolutions equal `lax.conv_general_dilated` (forward and
gradients) and plug into the models without changing their parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxcnn import models
from jaxcnn.models import im2col
from jaxcnn.errors import JaxcnnError

NHWC = ("NHWC", "HWIO", "NHWC")

CASES = [
    # kernel, strides, padding, dilation, groups
    ((3, 3), (1, 1), "SAME", (1, 1), 1),
    ((3, 3), (1, 1), "VALID", (1, 1), 1),
    ((3, 3), (2, 2), "SAME", (1, 1), 1),
    ((2, 3), (2, 1), ((1, 2), (0, 1)), (1, 1), 1),
    ((3, 3), (1, 1), "SAME", (2, 2), 1),
    ((3, 2), (2, 2), "VALID", (2, 1), 1),
    ((3, 3), (1, 1), "SAME", (1, 1), 2),
    ((3, 3), (2, 1), ((1, 1), (2, 0)), (1, 2), 4),
    ((1, 1), (2, 2), "VALID", (1, 1), 1),
    ((5, 5), (1, 1), "SAME", (1, 1), 1),
]


@pytest.mark.parametrize("impl", ["im2col", "shift"])
@pytest.mark.parametrize("kernel,strides,padding,dilation,groups", CASES)
def test_fast_convs_match_lax_conv_forward_and_gradients(impl, kernel, strides, padding, dilation, groups):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 9, 8, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(*kernel, 4 // groups, 8)), jnp.float32)

    def reference(x, w):
        return lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
                                        dimension_numbers=NHWC, feature_group_count=groups)

    def fast(x, w):
        return im2col.IMPLEMENTATIONS[impl](x, w, strides, padding, rhs_dilation=dilation,
                                            dimension_numbers=NHWC, feature_group_count=groups)

    out_shape = jax.eval_shape(reference, x, w).shape
    cotangent = jnp.asarray(rng.normal(size=out_shape), jnp.float32)

    @jax.jit
    def outputs_and_grads(x, w):
        def value(f):
            y, pullback = jax.vjp(f, x, w)
            return (y, *pullback(cotangent))
        return value(fast), value(reference)

    got, want = outputs_and_grads(x, w)
    for g, r in zip(got, want):  # output, d/dx, d/dw
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(jax.jit(fast)(x, w), want[0], rtol=1e-5, atol=1e-4)  # no gradients
    hybrid = jax.jit(jax.value_and_grad(
        lambda x, w: jnp.sum(im2col.hybrid_conv_general_dilated(
            x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=NHWC,
            feature_group_count=groups) * cotangent), (0, 1)))
    value, (dx, dw) = hybrid(x, w)
    np.testing.assert_allclose(value, jnp.sum(want[0] * cotangent), rtol=1e-5)
    np.testing.assert_allclose(dx, want[1], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dw, want[2], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name,shape,options", [
    ("cnn", (28, 28, 1), {}),
    ("resnet20", (8, 8, 3), {"stage_sizes": (1,), "widths": (4,)}),
])
def test_im2col_models_have_the_xla_models_parameters_and_outputs(name, shape, options):
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, *shape)), jnp.float32)
    xla = models.create_model(name, 10, conv_impl="xla", **options)
    fast = models.create_model(name, 10, conv_impl="im2col", **options)
    hybrid = models.create_model(name, 10, conv_impl="hybrid", **options)
    shift = models.create_model(name, 10, conv_impl="shift", **options)
    variables = jax.jit(xla.init)(jax.random.PRNGKey(0), x)
    fast_variables = jax.jit(fast.init)(jax.random.PRNGKey(0), x)
    shapes = lambda v: jax.tree.map(jnp.shape, v)
    assert shapes(fast_variables) == shapes(variables)
    for got, want in zip(jax.tree.leaves(fast_variables), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(got, want)
    want = jax.jit(xla.apply)(variables, x)
    np.testing.assert_allclose(jax.jit(fast.apply)(variables, x), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(jax.jit(shift.apply)(variables, x), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(jax.jit(hybrid.apply)(variables, x), want)  # XLA's forward pass


def test_auto_is_shift_for_few_input_channels_on_cpu_and_xla_otherwise():
    limit = im2col.SHIFT_MAX_CHANNELS
    assert im2col.resolve_conv_impl("auto", "cpu", in_channels=1) == "shift"
    assert im2col.resolve_conv_impl("auto", "cpu", in_channels=limit) == "shift"
    assert im2col.resolve_conv_impl("auto", "cpu", in_channels=limit + 1) == "xla"
    assert im2col.resolve_conv_impl("auto", "cpu") == "xla"  # channels unknown
    for backend in ("gpu", "tpu"):
        assert im2col.resolve_conv_impl("auto", backend, in_channels=1) == "xla"
    assert im2col.resolve_conv_impl("im2col", "cpu", in_channels=1) == "im2col"
    assert im2col.resolve_conv_impl("hybrid", "gpu") == "hybrid"
    assert im2col.resolve_conv_impl("xla", "cpu", in_channels=1) == "xla"


def test_shift_conv_computes_bfloat16_inputs_with_float32_sums():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 1)), jnp.bfloat16)
    w = jnp.asarray(rng.normal(size=(3, 3, 1, 4)), jnp.bfloat16)
    got = im2col.shift_conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)
    want = lax.conv_general_dilated(x.astype(jnp.float32), w.astype(jnp.float32), (1, 1), "SAME",
                                    dimension_numbers=NHWC)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=1e-2, atol=1e-2)


def test_unknown_conv_impl_is_a_user_error_naming_the_key():
    with pytest.raises(JaxcnnError, match="model.conv_impl"):
        models.create_model("cnn", 10, conv_impl="winograd")

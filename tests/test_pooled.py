"""A convolution computed with its activation and pool in one pass (`jaxcnn.models.pooled`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.errors import JaxcnnError
from jaxcnn.models import conv_plan, create_model


def _pooled_plan(name: str, shape: tuple[int, ...], **options) -> tuple[conv_plan.Plan, list]:
    """A forward plan naming "pooled" for every convolution the model can compute so, and the survey."""
    with conv_plan.recorded() as shapes:
        create_model(name, 10, **options).init(jax.random.key(0), jnp.zeros((1, *shape)))
    return tuple((key, "forward", "pooled") for key, _, poolable in shapes if poolable), shapes


def _conv_ops(model, variables, x, train=False) -> int:
    return str(jax.make_jaxpr(lambda v: model.apply(v, x, train=train))(variables)).count("conv_general_dilated")


@pytest.mark.parametrize("name,shape,options", [
    ("cnn", (28, 28, 1), {}),                                               # avg pool, ReLU, SAME
    ("tiny_cnn", (28, 28, 1), {}),                                          # max pool, linear, VALID, 26 -> 13
    ("lenet5", (28, 28, 1), {}),                                            # 5x5, tanh, input padding
    ("cnn", (32, 32, 3), {"pool": "max", "activation": "gelu"}),            # three input channels
    ("cnn", (29, 27, 2), {"padding": ((2, 1), (0, 1)), "kernel_size": (3, 2), "use_bias": False}),  # odd sizes
    ("cnn", (28, 28, 1), {"pool_window": 3, "pool_stride": 3}),            # 28 -> 9, a remainder dropped
])
def test_the_pooled_pass_gives_the_unfused_models_outputs_with_the_same_parameters(name, shape, options):
    plan, shapes = _pooled_plan(name, shape, **options)
    assert plan, shapes  # each of these models has a first layer it can pool
    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, *shape), dtype=np.float32))
    plain, fused = create_model(name, 10, **options), create_model(name, 10, conv_plan=plan, **options)
    variables = plain.init(jax.random.key(0), x[:1])
    fused_variables = fused.init(jax.random.key(0), x[:1])
    assert jax.tree.all(jax.tree.map(lambda a, b: a.shape == b.shape and bool((a == b).all()), variables,
                                     fused_variables))
    expected, got = plain.apply(variables, x), fused.apply(variables, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-6)
    assert _conv_ops(fused, variables, x) == _conv_ops(plain, variables, x) - len(plan)


def test_the_plan_computes_pooled_only_forward_and_only_where_the_model_allows_it():
    plan, shapes = _pooled_plan("cnn", (28, 28, 1))
    x = jnp.zeros((2, 28, 28, 1))
    model = create_model("cnn", 10, conv_plan=plan)
    variables = model.init(jax.random.key(0), x)
    train = lambda m: str(jax.make_jaxpr(lambda v: m.apply(v, x, train=True))(variables))
    assert train(model) == train(create_model("cnn", 10))  # the plan names it for evaluation only
    assert _conv_ops(model, variables, x) == 1
    # A plan that names it for a convolution the model cannot pool (BatchNorm between it and its
    # activation) falls back to the default implementation.
    with_bn = create_model("cnn", 10, batch_norm=True, conv_plan=tuple((k, "forward", "pooled") for k, *_ in shapes))
    bn_variables = with_bn.init(jax.random.key(0), x)
    assert _conv_ops(with_bn, bn_variables, x) == 2


def test_a_pool_window_larger_than_the_pooled_convolutions_output_is_one_clear_error():
    """The convolution's key does not depend on the pool: the plan measured with a 2x2 pool applies."""
    convs = {"padding": "VALID", "blocks": ((8,),)}
    plan, _ = _pooled_plan("cnn", (5, 5, 1), **convs)
    model = create_model("cnn", 10, conv_plan=plan, pool_window=6, pool_stride=6, **convs)
    with pytest.raises(JaxcnnError, match=r"model layer pool of block 1 \(after Conv_0\): input spatial size 3"):
        model.init(jax.random.key(0), jnp.zeros((1, 5, 5, 1)))

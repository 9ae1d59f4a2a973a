"""Fused training (many steps per compiled call) is bitwise equal to one call per step on CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import fused, losses, models, optim
from jaxcnn.data import Split
from jaxcnn.data.device import epoch_order, put_on_device
from jaxcnn.loop import make_train_fn, make_train_many_fn, zero_train_totals
from jaxcnn.state import create_train_state


def small_cnn_state(conv_impl, seed=0):
    model = models.create_model("cnn", 10, blocks=((4,),), hidden=(16,), dropout=0.2, conv_impl=conv_impl)
    tx = optim.create_optimizer({"name": "sgd", "learning_rate": 0.05, "momentum": 0.9},
                                {"name": "constant"}, steps_per_epoch=7, num_epochs=1)
    loss_fn = losses.make_classification_loss("cross_entropy", 10)
    return create_train_state(model, tx, loss_fn, (8, 8, 1), seed)


@pytest.fixture(scope="module")
def split():
    rng = np.random.default_rng(0)
    return put_on_device(Split(rng.integers(0, 256, (7 * 16 + 5, 8, 8, 1), dtype=np.uint8),
                               rng.integers(0, 10, 7 * 16 + 5).astype(np.int32)))


@pytest.mark.parametrize("conv_impl,unroll", [("hybrid", 1), ("im2col", 1), ("auto", None)])
def test_fused_steps_equal_per_step_parameters_including_a_last_partial_call(split, conv_impl, unroll):
    """A rolled scan (im2col convolutions) and the default on CPU (fully unrolled, XLA's
    convolution) are both bitwise equal to one call per step."""
    order = epoch_order(0, 1, len(split), 16)  # 7 steps
    per_step, totals = small_cnn_state(conv_impl), zero_train_totals()
    train_fn = make_train_fn(0.5, 0.5)
    for i in range(7):
        per_step, totals = train_fn(per_step, totals, split, order, i)

    fused_state, fused_totals = small_cnn_state(conv_impl), zero_train_totals()
    fused_fn = make_train_many_fn(0.5, 0.5, unroll=unroll)  # None: unrolled on CPU; 1: a rolled loop
    calls = fused.call_sizes(7, 3)
    assert calls == [(0, 3), (3, 3), (6, 1)]
    losses_per_step = []
    for start, num_steps in calls:
        fused_state, fused_totals, metrics = fused_fn(fused_state, fused_totals, split, order, start,
                                                      num_steps=num_steps)
        assert metrics["loss"].shape == (num_steps,)
        losses_per_step.extend(np.asarray(metrics["loss"]).tolist())

    assert int(fused_state.step) == int(per_step.step) == 7
    for got, want in zip(jax.tree.leaves((fused_state.params, fused_state.opt_state)),
                         jax.tree.leaves((per_step.params, per_step.opt_state))):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    for key in ("loss", "accuracy", "steps"):
        np.testing.assert_array_equal(np.asarray(fused_totals[key]), np.asarray(totals[key]))
    assert np.float32(sum(np.float32(v) for v in losses_per_step)) == pytest.approx(float(totals["loss"]))


def test_input_gate_is_zero_for_every_loss_value():
    losses = jnp.asarray([0.0, 2.5, -1.0, jnp.inf, -jnp.inf, jnp.nan, 3.4e38])
    np.testing.assert_array_equal(jax.vmap(fused.input_gate)(losses), np.zeros(7, np.int32))

import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxcnn.errors import JaxcnnError
from jaxcnn.core.optim import (
    PlateauScheduler,
    create_optimizer,
    default_optimizer_config,
    default_schedule_config,
    learning_rate_in_effect,
    make_plateau_scheduler,
    set_lr_scale,
)

PARAMS = {"kernel": jnp.array([[1.0, -2.0], [3.0, 0.5]]), "bias": jnp.array([1.0, -1.0])}
# On the quadratic 0.5 * Σ w², the gradient is the parameters themselves.
GRADS = PARAMS
GRADS_2 = {"kernel": jnp.array([[0.5, 1.0], [-1.0, 2.0]]), "bias": jnp.array([2.0, 0.25])}


def opt_cfg(**overrides) -> dict:
    return {**default_optimizer_config(), **overrides}


def sched_cfg(**overrides) -> dict:
    return {**default_schedule_config(), **overrides}


def make(opt=None, sched=None, steps_per_epoch=2, num_epochs=5):
    return create_optimizer(opt or opt_cfg(), sched or sched_cfg(), steps_per_epoch, num_epochs)


def run_updates(tx, grads_sequence, params=PARAMS):
    """The updates for each gradient in turn (params held fixed), and the final state."""
    state = tx.init(params)
    updates = []
    for grads in grads_sequence:
        update, state = tx.update(grads, state, params)
        updates.append(update)
    return updates, state


def assert_tree_close(actual, expected, rtol=1e-6, atol=1e-7):
    jax.tree.map(
        lambda a, e: np.testing.assert_allclose(a, e, rtol=rtol, atol=atol), actual, expected
    )


def numpy_tree(fn, *trees):
    return jax.tree.map(lambda *leaves: fn(*(np.asarray(x, np.float64) for x in leaves)), *trees)


# ---------------------------------------------------------------------------- one step by hand


def test_sgd_step_is_minus_lr_times_gradient():
    (update,), _ = run_updates(make(opt_cfg(name="sgd", learning_rate=0.1, momentum=0.0)), [GRADS])
    assert_tree_close(update, numpy_tree(lambda g: -0.1 * g, GRADS))


def test_sgd_momentum_accumulates_a_trace():
    tx = make(opt_cfg(name="sgd", learning_rate=0.1, momentum=0.9))
    updates, _ = run_updates(tx, [GRADS, GRADS_2])
    # m1 = g1, m2 = g2 + 0.9 m1; update = -lr m.
    assert_tree_close(updates[0], numpy_tree(lambda g: -0.1 * g, GRADS))
    assert_tree_close(updates[1], numpy_tree(lambda g1, g2: -0.1 * (g2 + 0.9 * g1), GRADS, GRADS_2))


def test_sgd_nesterov_looks_ahead_along_the_trace():
    tx = make(opt_cfg(name="sgd", learning_rate=0.1, momentum=0.9, nesterov=True))
    updates, _ = run_updates(tx, [GRADS, GRADS_2])
    # m_t = g_t + 0.9 m_{t-1}; update = -lr (g_t + 0.9 m_t).
    assert_tree_close(updates[0], numpy_tree(lambda g: -0.1 * (g + 0.9 * g), GRADS))
    expected = numpy_tree(lambda g1, g2: -0.1 * (g2 + 0.9 * (g2 + 0.9 * g1)), GRADS, GRADS_2)
    assert_tree_close(updates[1], expected)


def test_rmsprop_first_step_divides_by_root_mean_square():
    tx = make(
        opt_cfg(name="rmsprop", learning_rate=0.01, momentum=0.0, rmsprop_decay=0.9, eps=1e-8)
    )
    (update,), _ = run_updates(tx, [GRADS])
    # nu = (1 - 0.9) g²; update = -lr g / sqrt(nu + eps) (optax puts eps inside the root).
    assert_tree_close(
        update, numpy_tree(lambda g: -0.01 * g / np.sqrt(0.1 * g**2 + 1e-8), GRADS), rtol=1e-5
    )


def test_rmsprop_momentum_nesterov_matches_optax_reference():
    tx = make(opt_cfg(name="rmsprop", learning_rate=0.01, momentum=0.5, nesterov=True))
    reference = optax.rmsprop(0.01, decay=0.9, eps=1e-8, momentum=0.5, nesterov=True)
    assert_tree_close(
        run_updates(tx, [GRADS, GRADS_2])[0], run_updates(reference, [GRADS, GRADS_2])[0]
    )


def test_adam_first_step_is_lr_times_sign_of_gradient():
    (update,), _ = run_updates(make(opt_cfg(name="adam", learning_rate=0.01)), [GRADS])
    # Bias-corrected m = g, v = g², so update = -lr g / (|g| + eps).
    assert_tree_close(update, numpy_tree(lambda g: -0.01 * g / (np.abs(g) + 1e-8), GRADS))


def test_adamw_first_step_decays_kernels_only():
    tx = make(opt_cfg(name="adamw", learning_rate=0.01, weight_decay=0.1))
    (update,), _ = run_updates(tx, [GRADS])
    # update = -lr (g / (|g| + eps) + wd w) for the kernel; no decay term for the bias.
    # rtol 1e-5: 1 - b2 = 0.001 is off by ~1e-5 relative in float32.
    kernel, bias = (np.asarray(PARAMS[k]) for k in ("kernel", "bias"))
    np.testing.assert_allclose(
        update["kernel"], -0.01 * (np.sign(kernel) + 0.1 * kernel), rtol=1e-5
    )
    np.testing.assert_allclose(update["bias"], -0.01 * np.sign(bias), rtol=1e-5)


def test_sgd_weight_decay_is_decoupled_and_kernels_only():
    tx = make(opt_cfg(name="sgd", learning_rate=0.5, momentum=0.0, weight_decay=0.1))
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    (update,), _ = run_updates(tx, [zeros])
    np.testing.assert_allclose(update["kernel"], -0.5 * 0.1 * np.asarray(PARAMS["kernel"]))
    np.testing.assert_allclose(update["bias"], [0.0, 0.0])


def test_adam_weight_decay_equals_adamw():
    adam = make(opt_cfg(name="adam", learning_rate=0.01, weight_decay=0.1))
    adamw = make(opt_cfg(name="adamw", learning_rate=0.01, weight_decay=0.1))
    assert_tree_close(
        run_updates(adam, [GRADS, GRADS_2])[0], run_updates(adamw, [GRADS, GRADS_2])[0]
    )


def test_grad_clipping_caps_the_global_norm():
    tx = make(opt_cfg(name="sgd", learning_rate=1.0, momentum=0.0, grad_clip_norm=1.0))
    big = {"kernel": jnp.array([[3.0, 0.0], [0.0, 0.0]]), "bias": jnp.array([4.0, 0.0])}  # norm 5
    small = jax.tree.map(lambda g: g / 10, big)  # norm 0.5, under the cap
    updates, _ = run_updates(tx, [big, small])
    assert_tree_close(updates[0], jax.tree.map(lambda g: -g / 5, big))
    assert_tree_close(updates[1], jax.tree.map(lambda g: -g, small))


# ---------------------------------------------------------------------------- schedules


def lrs_used(sched, num_steps, lr=1.0, steps_per_epoch=2, num_epochs=5):
    """The lr in effect for each of the first `num_steps` updates."""
    tx = make(
        opt_cfg(name="sgd", learning_rate=lr, momentum=0.0), sched, steps_per_epoch, num_epochs
    )
    update = jax.jit(tx.update)
    state, lrs = tx.init(PARAMS), []
    for _ in range(num_steps):
        _, state = update(GRADS, state, PARAMS)
        lrs.append(float(learning_rate_in_effect(state)))
    return lrs


def test_constant_schedule_keeps_the_lr():
    np.testing.assert_allclose(lrs_used(sched_cfg(name="constant"), 4, lr=0.3), [0.3] * 4)


def test_piecewise_schedule_multiplies_at_epoch_boundaries():
    lrs = lrs_used(sched_cfg(name="piecewise", boundaries_epochs=(1, 3), decay_rate=0.1), 8)
    # 2 steps per epoch: boundaries at steps 2 and 6.
    np.testing.assert_allclose(lrs, [1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)


def test_exponential_schedule_decays_by_rate_per_epoch():
    lrs = lrs_used(sched_cfg(name="exponential", decay_rate=0.5), 5)
    np.testing.assert_allclose(lrs, [0.5 ** (step / 2) for step in range(5)], rtol=1e-6)


def test_warmup_cosine_rises_linearly_then_reaches_end_value():
    sched = sched_cfg(name="warmup_cosine", warmup_epochs=1, end_learning_rate=0.1)
    lrs = lrs_used(sched, 12)
    # Warmup over steps 0-2 (0, 1/2, 1); cosine over steps 2-10, halfway at step 6: 0.1 + 0.9 / 2.
    np.testing.assert_allclose(lrs[:3], [0.0, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(lrs[6], 0.55, rtol=1e-6)
    np.testing.assert_allclose(lrs[10:], [0.1, 0.1], rtol=1e-6)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))


def test_warmup_linear_rises_then_falls_linearly_to_the_end_value():
    sched = sched_cfg(name="warmup_linear", warmup_epochs=1, end_learning_rate=0.2)
    lrs = lrs_used(sched, 12)
    # Up over steps 0-2 (0, 1/2, 1); down over steps 2-10 by 0.1 a step to 0.2, then constant.
    np.testing.assert_allclose(lrs[:3], [0.0, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(lrs[2:11], [1.0 - 0.1 * i for i in range(9)], rtol=1e-6)
    np.testing.assert_allclose(lrs[11], 0.2, rtol=1e-6)


def test_warmup_linear_without_warmup_starts_at_the_peak():
    lrs = lrs_used(sched_cfg(name="warmup_linear", warmup_epochs=0), 3, lr=0.5)
    np.testing.assert_allclose(lrs, [0.5, 0.45, 0.4], rtol=1e-6)


def test_learning_rate_in_effect_is_the_lr_of_the_last_update():
    tx = make(
        opt_cfg(name="sgd", learning_rate=1.0, momentum=0.0),
        sched_cfg(name="exponential", decay_rate=0.5),
    )
    state = tx.init(PARAMS)
    for _ in range(3):
        update, state = tx.update(GRADS, state, PARAMS)
        lr = learning_rate_in_effect(state)
        np.testing.assert_allclose(update["bias"], -lr * GRADS["bias"], rtol=1e-6)


def test_set_lr_scale_halves_the_applied_update():
    tx = make(opt_cfg(name="adam", learning_rate=0.01))
    state = tx.init(PARAMS)
    halved = set_lr_scale(state, 0.5)
    full_update, _ = tx.update(GRADS, state, PARAMS)
    half_update, new_state = jax.jit(tx.update)(GRADS, halved, PARAMS)
    assert_tree_close(half_update, jax.tree.map(lambda u: u / 2, full_update))
    np.testing.assert_allclose(jax.jit(learning_rate_in_effect)(new_state), 0.005, rtol=1e-6)
    np.testing.assert_allclose(learning_rate_in_effect(state), 0.01, rtol=1e-6)  # input untouched


def test_config_dict_sections_are_accepted():
    opt = ml_collections.ConfigDict(opt_cfg(name="sgd", learning_rate=0.2, momentum=0.0))
    sched = ml_collections.ConfigDict(sched_cfg(name="piecewise", boundaries_epochs=(1,)))
    np.testing.assert_allclose(lrs_used(sched, 3, lr=0.2), [0.2, 0.2, 0.02], rtol=1e-6)
    (update,), _ = run_updates(create_optimizer(opt, sched, 2, 5), [GRADS])
    assert_tree_close(update, numpy_tree(lambda g: -0.2 * g, GRADS))


# ---------------------------------------------------------------------------- plateau


def test_plateau_decays_after_patience_epochs_without_improvement():
    plateau = PlateauScheduler(factor=0.5, patience=2)
    scales = [plateau.update(loss) for loss in [1.0, 0.9, 0.9, 0.95, 0.95, 0.95]]
    # Best 0.9 at epoch 2; bad epochs 3, 4 -> cut; bad 5, 6 -> cut again.
    assert scales == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25]


def test_plateau_improvement_must_exceed_min_delta():
    plateau = PlateauScheduler(factor=0.5, patience=1, min_delta=0.1)
    assert plateau.update(1.0) == 1.0
    assert plateau.update(0.95) == 0.5  # better, but by less than min_delta: a bad epoch
    assert plateau.update(0.85) == 0.5  # 0.85 < 1.0 - 0.1: an improvement
    assert plateau.best == 0.85


def test_plateau_cooldown_ignores_epochs_after_a_cut():
    plateau = PlateauScheduler(factor=0.5, patience=1, cooldown=2)
    scales = [plateau.update(1.0) for _ in range(5)]
    # Cut at epoch 2; epochs 3 and 4 are the cooldown; epoch 5 is bad again -> cut.
    assert scales == [1.0, 0.5, 0.5, 0.5, 0.25]


def test_plateau_scale_never_goes_below_min_scale():
    plateau = PlateauScheduler(factor=0.1, patience=1, min_scale=0.05)
    assert [plateau.update(1.0) for _ in range(4)] == pytest.approx([1.0, 0.1, 0.05, 0.05])


def test_plateau_state_dict_round_trips_through_json():
    plateau = PlateauScheduler(factor=0.5, patience=2, min_delta=0.01, cooldown=1, min_scale=0.1)
    for loss in [1.0, 1.0, 1.0, 1.0]:
        plateau.update(loss)
    saved = json.loads(json.dumps(plateau.state_dict()))
    restored = PlateauScheduler.from_state_dict(saved)
    assert restored == plateau
    fresh = PlateauScheduler(factor=0.5, patience=2, min_delta=0.01, cooldown=1, min_scale=0.1)
    fresh.load_state_dict(saved)
    assert fresh == plateau
    assert [fresh.update(1.0) for _ in range(3)] == [plateau.update(1.0) for _ in range(3)]
    assert json.dumps(PlateauScheduler(factor=0.5, patience=1).state_dict())  # best None, not inf


def test_make_plateau_scheduler_only_for_plateau_schedule():
    assert make_plateau_scheduler(sched_cfg(name="constant")) is None
    plateau = make_plateau_scheduler(
        sched_cfg(
            name="plateau",
            plateau_factor=0.5,
            plateau_patience=3,
            plateau_min_delta=0.01,
            plateau_cooldown=2,
            plateau_min_scale=0.01,
        )
    )
    assert plateau == PlateauScheduler(
        factor=0.5, patience=3, min_delta=0.01, cooldown=2, min_scale=0.01
    )


def test_plateau_schedule_lr_follows_the_scale():
    tx = make(sched=sched_cfg(name="plateau"), opt=opt_cfg(learning_rate=0.1))
    state = set_lr_scale(tx.init(PARAMS), 0.1)
    _, state = tx.update(GRADS, state, PARAMS)
    np.testing.assert_allclose(learning_rate_in_effect(state), 0.01, rtol=1e-6)


# ---------------------------------------------------------------------------- bad values


def test_bad_learning_rate_message():
    with pytest.raises(JaxcnnError) as err:
        make(opt_cfg(learning_rate=-0.1))
    assert str(err.value) == "optimizer.learning_rate must be > 0, got -0.1"


def test_unknown_optimizer_message():
    with pytest.raises(JaxcnnError) as err:
        make(opt_cfg(name="adm"))
    assert str(err.value) == (
        "unknown optimizer 'adm' (optimizer.name); expected one of: adam, adamw, rmsprop, sgd; did you mean 'adam'?"
    )


@pytest.mark.parametrize(
    "key, value",
    [
        ("learning_rate", 0.0),
        ("learning_rate", "fast"),
        ("weight_decay", -1e-4),
        ("grad_clip_norm", -1.0),
        ("momentum", 1.0),
        ("momentum", -0.1),
        ("nesterov", "yes"),
        ("learing_rate", 0.1),  # a typo is an unknown key
    ],
)
def test_bad_optimizer_value_names_its_key(key, value):
    with pytest.raises(JaxcnnError, match=rf"optimizer\.{key}"):
        make(opt_cfg(**{key: value}))


@pytest.mark.parametrize(
    "key, value",
    [
        ("name", "cosine"),
        ("decay_rate", 0.0),
        ("decay_rate", 1.5),
        ("warmup_epochs", -1),
        ("boundaries_epochs", (3, 2)),
        ("boundaries_epochs", (0, 2)),
        ("boundaries_epochs", 3),
        ("end_learning_rate", -0.1),
        ("plateau_factor", 1.0),
        ("plateau_factor", 0.0),
        ("plateau_patience", 0),
        ("plateau_min_delta", -0.1),
    ],
)
def test_bad_schedule_value_names_its_key(key, value):
    with pytest.raises(JaxcnnError, match=rf"schedule\.{key}"):
        make(sched=sched_cfg(**{key: value}), num_epochs=5)


def test_a_warmup_as_long_as_the_run_is_clipped_to_half_of_it_then_decays():
    """A short run of a preset (1 epoch, a smoke test) trains instead of being refused."""
    tx = make(sched=sched_cfg(name="warmup_cosine", warmup_epochs=5, end_learning_rate=0.0), num_epochs=5)
    state = tx.init(PARAMS)
    rates = []
    for _ in range(10):  # 5 epochs of 2 steps: warm-up over 5 steps, cosine decay over the other 5
        _, state = tx.update(jax.tree.map(jnp.ones_like, PARAMS), state, PARAMS)
        rates.append(float(learning_rate_in_effect(state)))  # the rate of the update just made
    assert rates[0] == 0.0 and max(rates) == pytest.approx(1e-3, rel=1e-6) and rates.index(max(rates)) == 5
    assert rates[-1] < rates[6] < rates[5]
    make(sched=sched_cfg(name="constant", warmup_epochs=5), num_epochs=5)


def test_make_plateau_scheduler_rejects_bad_factor():
    with pytest.raises(JaxcnnError, match=r"schedule\.plateau_factor"):
        make_plateau_scheduler(sched_cfg(name="plateau", plateau_factor=1.5))


def test_defaults_are_plain_values_that_build_an_optimizer():
    for cfg in (default_optimizer_config(), default_schedule_config()):
        assert json.loads(json.dumps(cfg)) == {
            k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()
        }
    assert math.isclose(float(learning_rate_in_effect(make().init(PARAMS))), 1e-3, rel_tol=1e-6)

"""The executor's k-step calls: k steps per compiled call are bitwise the same training as one call
per step on CPU, evaluation in calls of k batches equals one call per batch, and the call plan."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.dispatch import BACKEND_COMPILE_EVENT

from jaxcnn import models
from jaxcnn.core import losses, optim
from jaxcnn.core.augment import AugmentConfig, make_augment
from jaxcnn.core.build import prepare_fn
from jaxcnn.data import Split
from jaxcnn.data.device import epoch_order
from jaxcnn.data.feed import DeviceFeed, HostFeed, chunks
from jaxcnn.core.evaluation import eval_predict, evaluate
from jaxcnn.core.executor import Executor, input_gate, plan_calls
from jaxcnn.core.state import create_train_state
from jaxcnn.core.steps import zero_eval_sums, zero_train_totals

CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"  # a program loaded from the persistent cache


def small_state(model_name, conv_impl="auto"):
    options = {"mlp": {"hidden": (16,), "dropout": 0.2}, "tiny_cnn": {"conv_impl": conv_impl},
               "cnn": {"blocks": ((4,),), "hidden": (16,), "dropout": 0.2, "conv_impl": conv_impl}}[model_name]
    model = models.create_model(model_name, 10, **options)
    tx = optim.create_optimizer({"name": "sgd", "learning_rate": 0.05, "momentum": 0.9},
                                {"name": "constant"}, steps_per_epoch=7, num_epochs=1)
    return create_train_state(model, tx, losses.make_classification_loss("cross_entropy", 10), (8, 8, 1), 0)


@pytest.fixture(scope="module")
def split():
    rng = np.random.default_rng(0)
    return Split(rng.integers(0, 256, (7 * 16 + 5, 8, 8, 1), dtype=np.uint8),
                 rng.integers(0, 10, 7 * 16 + 5).astype(np.int32))


def leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(jax.device_get(tree))]


def train(executor, calls, feed, state, plan):
    """Trains epoch 1 (batch 16) in the calls of `plan`; returns the state and the totals."""
    state, totals = executor.put(state), executor.put(zero_train_totals())
    for (_, n), (inputs, start) in zip(plan, feed.train_calls(0, 1, 16, plan)):
        state, totals = calls.train(state, totals, inputs, start, n)
    return state, totals


@pytest.mark.parametrize("model_name,conv_impl,unroll", [
    ("mlp", "auto", None), ("tiny_cnn", "auto", None), ("cnn", "hybrid", 1), ("cnn", "im2col", 1)])
def test_three_steps_per_call_train_bitwise_like_one_call_per_step_with_augmentation(
        split, model_name, conv_impl, unroll):
    """Fully unrolled on CPU (XLA's convolutions) and a rolled loop (im2col convolutions) alike."""
    executor = Executor("none")
    augment = make_augment(AugmentConfig(crop_padding=1, flip=True, cutout=2))
    calls = executor.compile(prepare_fn(0.5, 0.25, augment), prepare_fn(0.5, 0.25), "cross_entropy", 5, unroll)
    feed = DeviceFeed(split, executor)
    per_step = train(executor, calls, feed, small_state(model_name, conv_impl), plan_calls(0, 7, 0, 1))
    fused = train(executor, calls, feed, small_state(model_name, conv_impl), plan_calls(0, 7, 0, 3))
    assert int(fused[0].step) == int(per_step[0].step) == 7
    assert int(fused[1]["steps"]) == 7
    for got, want in zip(leaves((fused[0].params, fused[0].opt_state, fused[1])),
                         leaves((per_step[0].params, per_step[0].opt_state, per_step[1]))):
        np.testing.assert_array_equal(got, want)


def test_host_fed_calls_train_bitwise_like_on_device_calls(split):
    executor = Executor("none")
    calls = executor.compile(prepare_fn(0.5, 0.25), prepare_fn(0.5, 0.25), "cross_entropy", 5)
    plan = plan_calls(0, 7, 0, 3)
    on_device = train(executor, calls, DeviceFeed(split, executor), small_state("tiny_cnn"), plan)
    host_fed = train(executor, calls, HostFeed(split, executor), small_state("tiny_cnn"), plan)
    for got, want in zip(leaves(host_fed), leaves(on_device)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("feed_type", [DeviceFeed, HostFeed])
def test_evaluation_in_calls_of_k_batches_equals_one_call_per_batch_and_counts_each_example_once_as_the_test_does(
        split, feed_type):
    executor = Executor("none")
    calls = executor.compile(prepare_fn(0.5, 0.25), prepare_fn(0.5, 0.25), "cross_entropy", 5)
    state, feed = executor.put(small_state("tiny_cnn")), feed_type(split, executor)
    per_batch = evaluate(calls, state, feed, 50, 1)  # 117 examples: a padded last batch
    assert evaluate(calls, state, feed, 50, 2) == per_batch and per_batch["count"] == 117
    sums, outputs = eval_predict(calls, state, feed, 50, executor.put(zero_eval_sums()), 2)
    predicted = np.concatenate([o["predicted"].reshape(-1) for o in outputs])[:117]  # the last batch padded
    assert sums["count"] == 117 and float(sums["correct"] / sums["count"]) == pytest.approx(per_batch["accuracy"])
    assert np.mean(predicted == split.labels) == pytest.approx(per_batch["accuracy"])


@pytest.mark.parametrize("feed_type", [DeviceFeed, HostFeed])
def test_a_training_program_compiled_ahead_runs_without_compiling_again_and_only_new_ones_compile(
        split, feed_type):
    """`Calls.compile_train` compiles each program once, before its first call (so that the clock
    times compilation apart from training); the call then runs it: no compilation in between."""
    compiled, listening = [], [True]  # a program compiled, or loaded from the persistent cache
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **_: compiled.append(event) if listening and event == BACKEND_COMPILE_EVENT else None)
    jax.monitoring.register_event_listener(
        lambda event, **_: compiled.append(event) if listening and event == CACHE_HIT_EVENT else None)
    executor = Executor("none")
    calls = executor.compile(prepare_fn(0.5, 0.25), prepare_fn(0.5, 0.25), "cross_entropy", 5)
    state, totals = executor.put(small_state("mlp")), executor.put(zero_train_totals())
    plan = plan_calls(0, 7, 0, 3)  # calls of 3, 3 and 1 steps: two programs
    news = []
    for (_, n), (inputs, start) in zip(plan, feed_type(split, executor).train_calls(0, 1, 16, plan)):
        before = len(compiled)
        news.append(calls.compile_train(state, totals, inputs, start, n))
        assert len(compiled) == before + news[-1]  # compiled exactly when it said so
        state, totals = calls.train(state, totals, inputs, start, n)
        assert len(compiled) == before + news[-1]  # the call compiled nothing more
    listening.clear()
    assert news == [True, False, True] and int(jax.device_get(totals["steps"])) == 7


def test_plan_calls_covers_the_epoch_in_calls_of_at_most_k_steps_with_a_last_partial_one():
    assert plan_calls(0, 7, 0, 3) == [(0, 3), (3, 3), (6, 1)]
    assert plan_calls(0, 4, 100, 10) == [(0, 4)]
    assert chunks(7, 3) == [(0, 3), (3, 3), (6, 1)] and chunks(0, 3) == []


def test_plan_calls_ends_calls_at_log_and_checkpoint_steps():
    # global step 5 at epoch position 0; logging every 7 steps, checkpoints every 10
    calls = plan_calls(0, 20, 5, 4, (7, 10))
    assert calls == [(0, 2), (2, 3), (5, 4), (9, 4), (13, 2), (15, 1), (16, 4)]
    ends = [5 + position + size for position, size in calls]  # the global step after each call
    assert {7, 10, 14, 20, 21}.issubset(ends) and ends[-1] == 25
    assert all(size <= 4 for _, size in calls)


def test_plan_calls_resumes_mid_epoch_and_ignores_a_zero_interval():
    assert plan_calls(5, 9, 45, 3, (0, 0)) == [(5, 3), (8, 1)]
    assert plan_calls(9, 9, 49, 3, (7,)) == []
    assert plan_calls(0, 5, 0, 1, (2,)) == [(i, 1) for i in range(5)]


def test_input_gate_is_zero_for_every_loss_value():
    values = jnp.asarray([0.0, 2.5, -1.0, jnp.inf, -jnp.inf, jnp.nan, 3.4e38])
    np.testing.assert_array_equal(jax.vmap(input_gate)(values), np.zeros(7, np.int32))


def test_an_epoch_order_is_the_same_for_every_feed(split):
    executor = Executor("none")
    host_inputs, _ = next(HostFeed(split, executor).train_calls(0, 1, 16, [(0, 7)]))
    order = np.asarray(epoch_order(0, 1, len(split), 16))
    np.testing.assert_array_equal(np.asarray(host_inputs["label"]), split.labels[order])

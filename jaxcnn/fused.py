"""Fused execution: many training (or evaluation) steps in one compiled call, via `lax.scan`.

One call per step costs a dispatch and a Python round trip each step; on a 2-core CPU that is a
large share of a small model's step. Here one compiled call scans `steps.train_step` over the
batch indices of a slice of the epoch order and gathers every batch from the on-device dataset, so
the host only launches `ceil(steps / steps_per_call)` calls per epoch. The step function is the
same pure `train_step`, in the same order: a rolled scan (`unroll=1`) gives parameters bitwise
equal to one call per step on CPU; the fully unrolled default for convolutional models on CPU
lets XLA compile the steps together: equal within float32 rounding (~1e-8 after a few steps;
tests/test_fused.py).

Inside a rolled scan XLA's CPU backend is ~20x slower on convolutions than outside it, so on CPU
the scan is fully unrolled (`default_unroll`); a rolled scan needs the im2col convolution there
(`model.conv_impl = "im2col"` or `"hybrid"`, see `jaxcnn.im2col`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.compilation import compiler_options
from jaxcnn.data.device import DeviceSplit, normalize
from jaxcnn.state import TrainState
from jaxcnn.steps import eval_step, train_step


def default_unroll(params: Any, backend: str | None = None) -> bool | int:
    """Fully unrolled on CPU for models with convolutions, a rolled loop otherwise.

    XLA's CPU backend runs its fast library convolutions only outside `while` loops: inside a
    rolled scan the Flax-example CNN trained at ~130 images/s, fully unrolled at ~3,600 (one call
    per step: ~2,400). Partial unrolling keeps the loop and stays slow. Unrolling costs compile
    time proportional to `steps_per_call` (the persistent cache keeps it for later runs); models
    without convolutions (no 4-D kernels) are as fast in a rolled loop.
    """
    has_conv = any(jnp.ndim(leaf) >= 4 for leaf in jax.tree.leaves(params))
    return True if has_conv and (backend or jax.default_backend()) == "cpu" else 1


def make_fused_train_fn(mean: float, std: float, unroll: bool | int | None = None) -> Callable:
    """`fn(state, totals, split, order, start, num_steps) -> (state, totals, per_step_metrics)`.

    Runs training steps `start .. start + num_steps - 1` of the epoch `order` (steps, batch) in
    one compiled call; `num_steps` is static (a last, shorter call compiles once more).
    `totals` (sums of loss and accuracy, and the step count) are accumulated on the device;
    `per_step_metrics` holds each step's `loss`, `accuracy` and `learning_rate`, stacked.
    State and totals are donated. `unroll` is `lax.scan`'s (default: `default_unroll`).
    """

    def train_many(state: TrainState, totals: dict, split: DeviceSplit, order: jax.Array,
                   start: jax.Array, num_steps: int):
        indices = lax.dynamic_slice_in_dim(order, start, num_steps, axis=0)

        def body(carry, batch_indices):
            state, totals = carry
            state, metrics = train_step(state, _gather(split, batch_indices, mean, std))
            totals = {"loss": totals["loss"] + metrics["loss"],
                      "accuracy": totals["accuracy"] + metrics["accuracy"],
                      "steps": totals["steps"] + 1}
            return (state, totals), metrics

        steps_unroll = default_unroll(state.params) if unroll is None else unroll
        (state, totals), per_step = lax.scan(body, (state, totals), indices, unroll=steps_unroll)
        return state, totals, per_step

    return jax.jit(train_many, donate_argnums=(0, 1), static_argnames=("num_steps",),
                   compiler_options=compiler_options())


def make_fused_eval_fn(mean: float, std: float) -> Callable:
    """`fn(state, split, order, mask) -> totals`: every evaluation batch in one compiled call."""

    def eval_all(state: TrainState, split: DeviceSplit, order: jax.Array, mask: jax.Array):
        def body(totals, xs):
            batch_indices, batch_mask = xs
            batch = {**_gather(split, batch_indices, mean, std), "mask": batch_mask}
            return jax.tree.map(jnp.add, totals, eval_step(state, batch)), None

        zeros = {"loss_sum": jnp.zeros(()), "correct": jnp.zeros(()), "count": jnp.zeros(())}
        return lax.scan(body, zeros, (order, mask))[0]

    return jax.jit(eval_all, compiler_options=compiler_options())


def _gather(split: DeviceSplit, indices: jax.Array, mean: float, std: float) -> dict[str, jax.Array]:
    """The normalised batch at `indices` of the on-device split."""
    return {"image": normalize(split.images[indices], mean, std), "label": split.labels[indices]}


def call_sizes(total_steps: int, steps_per_call: int) -> list[tuple[int, int]]:
    """(start, num_steps) of each call covering `total_steps` steps; the last may be shorter."""
    return [(start, min(steps_per_call, total_steps - start))
            for start in range(0, total_steps, steps_per_call)]


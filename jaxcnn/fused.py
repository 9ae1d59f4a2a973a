"""Fused execution: many training (or evaluation) steps in one compiled call, via `lax.scan`.

One call per step costs a dispatch and a Python round trip each step; on a 2-core CPU that is a
large share of a small model's step. Here one compiled call scans `steps.train_step` over the
batch indices of a slice of the epoch order and gathers every batch from the on-device dataset, so
the host only launches a few calls per epoch (`config.steps_per_call`). The step is the same pure
`train_step` with the same `prepare` (normalisation, augmentation keyed by the state's step) as one
call per step, in the same order, so with both programs compiled with the same options
(`compilation.compiler_options`) the parameters are bitwise equal on CPU (tests/test_fused*.py)
for models without BatchNorm; with BatchNorm XLA computes the batch statistics inside the scan
slightly differently (equal within float32 rounding).

Inside a rolled scan XLA's CPU backend is 20-40x slower on convolutions than outside it, so on
CPU the scan is fully unrolled (`default_unroll`), and `input_gate` keeps each step's input work
after the previous step.

The strategies (`parallel.Strategy.compile_train_many`) compile the pure bodies here; `plan_calls`
decides which steps each of the loop's calls covers.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.data.device import DeviceSplit
from jaxcnn.errors import JaxcnnError
from jaxcnn.state import TrainState
from jaxcnn.steps import add_to_totals, eval_step, train_step, zero_eval_sums


def default_unroll(params: Any, backend: str | None = None) -> bool | int:
    """Fully unrolled on CPU for models with convolutions, a rolled loop otherwise.

    XLA's CPU backend runs its fast library convolutions only outside `while` loops: inside a
    rolled scan the Flax-example CNN took ~600 ms per step, fully unrolled ~16 ms (one call per
    step: ~25 ms). Partial unrolling keeps the loop and stays slow. Unrolling costs compile
    time proportional to `steps_per_call` (the persistent cache keeps it for later runs); models
    without convolutions (no 4-D kernels) are as fast in a rolled loop.
    """
    has_conv = any(jnp.ndim(leaf) >= 4 for leaf in jax.tree.leaves(params))
    return True if has_conv and (backend or jax.default_backend()) == "cpu" else 1


def input_gate(loss: jax.Array) -> jax.Array:
    """0, computed from the previous step's loss, added to the next step's batch position.

    In an unrolled scan nothing else orders a step's input work (gathering, normalising, the first
    layer's shifted slices) after the previous step, so XLA:CPU ran the input work of all the
    call's steps ahead at once, thrashing the caches: the tiny CNN fused 20 steps per call at 2.2
    ms per step against 1.3 ms one call per step. Made to depend on the previous step's loss, each
    step's input waits for that step's forward pass, and the fused call ran at 1.25 ms per step.
    `loss > inf` is False for every float, NaN included, and XLA cannot fold it away.
    """
    return (loss > jnp.inf).astype(jnp.int32)


def train_many(prepare: Callable, unroll: bool | int | None = None,
               constrain: Callable[[dict], dict] = lambda batch: batch) -> Callable:
    """The pure `fn(state, totals, split, order, start, num_steps) -> (state, totals, per_step_metrics)`.

    Runs training steps `start .. start + num_steps - 1` of the epoch `order` (steps, batch) of the
    on-device `split`: each batch gathered, passed through `prepare(batch, state)` and `constrain`
    (a sharding constraint), and trained on with `train_step`. `totals` accumulate on the device;
    `per_step_metrics` holds each step's `loss`, `accuracy` and `learning_rate`, stacked.
    `unroll` is `lax.scan`'s (None: `default_unroll`). `num_steps` must be static when compiled.
    """

    def fn(state: TrainState, totals: dict, split: DeviceSplit, order: jax.Array, start: jax.Array,
           num_steps: int):
        def body(carry, k):
            state, totals, gate = carry
            batch_indices = lax.dynamic_index_in_dim(order, start + k + gate, keepdims=False)
            batch = constrain({"image": split.images[batch_indices], "label": split.labels[batch_indices]})
            state, metrics = train_step(state, prepare(batch, state))
            return (state, add_to_totals(totals, metrics), input_gate(metrics["loss"])), metrics

        gate = jnp.zeros((), jnp.int32)
        if num_steps == 1:  # XLA:CPU compiles a one-step scan unlike the step itself (~1e-8 apart)
            (state, totals, _), metrics = body((state, totals, gate), 0)
            return state, totals, jax.tree.map(lambda x: x[None], metrics)
        steps_unroll = default_unroll(state.params) if unroll is None else unroll
        (state, totals, _), per_step = lax.scan(body, (state, totals, gate), jnp.arange(num_steps),
                                                unroll=steps_unroll)
        return state, totals, per_step

    return fn


def eval_all(prepare: Callable, unroll: bool | int | None = None) -> Callable:
    """The pure `fn(state, split, order, mask) -> totals`: every evaluation batch of `order`/`mask`
    (`data.device.eval_order`) in one scan, summed in the same order as one call per batch."""

    def fn(state: TrainState, split: DeviceSplit, order: jax.Array, mask: jax.Array):
        def body(totals, xs):
            batch_indices, batch_mask = xs
            batch = {"image": split.images[batch_indices], "label": split.labels[batch_indices],
                     "mask": batch_mask}
            return jax.tree.map(jnp.add, totals, eval_step(state, prepare(batch, state))), None

        steps_unroll = default_unroll(state.params) if unroll is None else unroll
        return lax.scan(body, zero_eval_sums(), (order, mask), unroll=steps_unroll)[0]

    return fn


def plan_calls(position: int, steps_per_epoch: int, step: int, steps_per_call: int,
               intervals: Sequence[int] = ()) -> list[tuple[int, int]]:
    """(first epoch position, number of steps) of each call from epoch `position` to the epoch's end.

    `step` is the global step count before position `position`. A call holds at most
    `steps_per_call` steps and ends early where the global step after it is a multiple of one of
    `intervals` (the logging and checkpoint intervals; 0 = none), so the host sees the totals and
    saves at exactly the steps one call per step would; calls never cross the epoch's end.
    """
    calls = []
    while position < steps_per_epoch:
        size = min(steps_per_call, steps_per_epoch - position)
        for every in intervals:
            if every > 0:
                size = min(size, every - step % every)
        calls.append((position, size))
        position, step = position + size, step + size
    return calls


def call_sizes(total_steps: int, steps_per_call: int) -> list[tuple[int, int]]:
    """(start, num_steps) of each call covering `total_steps` steps; the last may be shorter."""
    return plan_calls(0, total_steps, 0, steps_per_call)


def check_fusable(steps_per_call: int, split: Any) -> None:
    """Fused steps gather their batches from a split on the device."""
    if steps_per_call > 1 and not isinstance(split, DeviceSplit):
        raise JaxcnnError(f"steps_per_call={steps_per_call} needs the training split on the device, but it is fed "
                          "from the host (dataset.input=host, or auto over dataset.device_budget_mb); "
                          "set steps_per_call=1 or dataset.input=device")

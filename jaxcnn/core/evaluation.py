"""Evaluation and the test (evaluation and per-example predictions in one pass) over a whole split,
through the executor's compiled calls.

Both run `BATCHES_PER_CALL` batches per compiled call (a rolled loop: `executor.EVAL_UNROLL`),
whatever the training's `steps_per_call`: on the 2-core CPU the Flax-example CNN evaluated 5
batches of 1000 in one call at 5,600-5,700 images per CPU-second against 4,800 one call per batch
(README, "Speed"). A split of n batches compiles a call of min(n, 10) batches, and one of the rest.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxcnn.data.feed import Feed
from jaxcnn.core.executor import Calls
from jaxcnn.core.state import TrainState
from jaxcnn.core.steps import zero_eval_sums

BATCHES_PER_CALL = 10


def evaluate(calls: Calls, state: TrainState, feed: Feed, batch_size: int,
             steps_per_call: int = BATCHES_PER_CALL, max_batches: int = 0) -> dict[str, float]:
    """Loss and accuracy over every example of `feed` exactly once (the last batch padded and
    masked; with several devices the batch is rounded up to a multiple of them); over the first
    `max_batches` batches only when that is > 0."""
    totals = evaluate_sums(calls, state, feed, batch_size, feed.executor.put(zero_eval_sums()), steps_per_call,
                           max_batches)
    return {key: value.item() for key, value in means(totals).items()}


def means(sums: dict[str, Any]) -> dict[str, np.ndarray]:
    """Loss, accuracy and count from `eval_step`'s fetched sums, one value per member (one for a single run)."""
    sums = {key: np.reshape(value, (-1,)) for key, value in sums.items()}
    return {"loss": sums["loss_sum"] / sums["count"], "accuracy": sums["correct"] / sums["count"],
            "count": sums["count"].astype(int)}


def evaluate_sums(calls: Calls, state: TrainState, feed: Any, batch_size: int, totals: Any,
                  steps_per_call: int = BATCHES_PER_CALL, max_batches: int = 0) -> dict[str, np.ndarray]:
    """`eval_step`'s sums over every example of `feed` (its first `max_batches` batches when > 0),
    added to `totals` (on the device; stacked per member for a run of members), fetched."""
    for inputs, start, num_steps in feed.eval_calls(batch_size, steps_per_call, max_batches):
        totals = calls.evaluate(state, totals, inputs, start, num_steps)
    return jax.device_get(totals)


def eval_predict(calls: Calls, state: TrainState, feed: Any, batch_size: int, totals: Any,
                 steps_per_call: int = BATCHES_PER_CALL, max_batches: int = 0) -> tuple[dict[str, np.ndarray], list]:
    """The test of every example of `feed` (of its first `max_batches` batches when that is > 0) in one
    forward pass: `eval_step`'s sums added to `totals` (stacked per member for a run of members) and
    `predict_step`'s per-example outputs, one (num_steps, batch) dict per call; fetched once, at the end."""
    outputs = []
    for inputs, start, num_steps in feed.eval_calls(batch_size, steps_per_call, max_batches):
        totals, out = calls.test(state, totals, inputs, start, num_steps)
        outputs.append(out)
    return jax.device_get((totals, outputs))

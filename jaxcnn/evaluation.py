"""Evaluation and prediction over a whole split, through the executor's compiled calls."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxcnn.data.feed import Feed
from jaxcnn.executor import Calls
from jaxcnn.state import TrainState
from jaxcnn.steps import zero_eval_sums


def evaluate(calls: Calls, state: TrainState, feed: Feed, batch_size: int, steps_per_call: int = 1) -> dict[str, float]:
    """Loss and accuracy over every example of `feed` exactly once (the last batch padded and
    masked; with several devices the batch is rounded up to a multiple of them)."""
    totals = evaluate_sums(calls, state, feed, batch_size, steps_per_call, feed.executor.put(zero_eval_sums()))
    return {"loss": float(totals["loss_sum"] / totals["count"]),
            "accuracy": float(totals["correct"] / totals["count"]),
            "count": int(totals["count"])}


def evaluate_sums(calls: Calls, state: TrainState, feed: Any, batch_size: int, steps_per_call: int,
                  totals: Any) -> dict[str, np.ndarray]:
    """`eval_step`'s sums over every example of `feed`, added to `totals` (on the device), fetched."""
    for inputs, start, num_steps in feed.eval_calls(batch_size, steps_per_call):
        totals = calls.evaluate(state, totals, inputs, start, num_steps)
    return jax.device_get(totals)


def predict(calls: Calls, state: TrainState, feed: Feed, batch_size: int,
            steps_per_call: int = 1) -> dict[str, np.ndarray]:
    """Per-example `predicted`, `confidence`, `in_top_k` for every example of `feed`, in order.

    The outputs stay on the device until the host fetches them all once, at the end; the padding
    of the last batch is cut off.
    """
    outputs = [calls.predict(state, inputs, start, num_steps=num_steps)
               for inputs, start, num_steps in feed.eval_calls(batch_size, steps_per_call)]
    fetched = jax.device_get(outputs)
    return {key: np.concatenate([o[key].reshape(-1) for o in fetched])[:len(feed)] for key in fetched[0]}

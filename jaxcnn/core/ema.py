"""The exponential moving average (EMA) of the weights (`config.ema.decay`; 0 turns it off).

The averages live in the train state (`EmaTrainState.ema`: params and batch_stats), are updated
inside the compiled training step (no host sync) and are saved with it, so a resumed run carries
them on bitwise. Evaluation, test, predictions and the saved-model commands use them through
`view`: the state with the averages in place of the raw weights, of the same pytree structure, so
the compiled evaluation and prediction calls serve both without a recompile.

The decay warms up as in TensorFlow's `ExponentialMovingAverage(num_updates=...)` and timm's
ModelEma: `min(decay, (1 + t) / (10 + t))` at step t, so the early averages are not dominated by
the random initial weights.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcnn.core.state import EmaTrainState, TrainState


def decay_at(decay: float, step: jax.Array) -> jax.Array:
    """The decay in effect at (0-based) step `step`: `decay` warmed up by `(1 + t) / (10 + t)`."""
    t = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + t) / (10.0 + t))


def average(decay: jax.Array, old: Any, new: Any) -> Any:
    """`decay * old + (1 - decay) * new`, leaf by leaf, in each leaf's own dtype."""
    return jax.tree.map(lambda o, n: (decay * o + (1.0 - decay) * n).astype(o.dtype), old, new)


def updated(before: TrainState, after: TrainState) -> TrainState:
    """`after` (the state a training step produced from `before`) with its averages moved towards
    its new weights; a state without EMA unchanged (its program stays what it was)."""
    if not is_on(after):
        return after
    decay = decay_at(after.ema_decay, before.step)
    return after.replace(ema={"params": average(decay, after.ema["params"], after.params),
                              "batch_stats": average(decay, after.ema["batch_stats"], after.batch_stats)})


def view(state: Any) -> Any:
    """The weights to evaluate: the averages in place of the raw weights when EMA is on (same
    structure, so the same compiled calls run it), else `state` itself."""
    if not is_on(state):
        return state
    return state.replace(params=state.ema["params"], batch_stats=state.ema["batch_stats"])


def is_on(state: Any) -> bool:
    """Whether `state` keeps averages: an `EmaTrainState` with a decay (a float16 run's
    `ScaledTrainState` is one, with no averages when EMA is off)."""
    return isinstance(state, EmaTrainState) and state.ema_decay > 0

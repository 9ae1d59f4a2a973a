"""Dynamic loss scaling, for `config.dtype="float16"` (`config.loss_scale`).

Why: float16 has five exponent bits. Its smallest normal number is 6.1e-5 and its largest 65504,
so the gradients that flow back through float16 activations underflow to zero (or overflow) where
float32 and bfloat16 keep them. Multiplying the loss by a scale S multiplies every gradient by S
(the chain rule is linear), lifting them into float16's range; the float32 gradients of the
parameters are divided by S again before the optimizer sees them, so a step's update is the
unscaled one.

No fixed S suits every model and every stage of training, so S is found as training goes (the
semantics of flax's `DynamicScale` and Keras's `LossScaleOptimizer`): a step whose gradients are
not all finite overflowed. It is skipped (the state keeps its parameters, optimizer state, BatchNorm
statistics and averages; only its step count moves on, as the data does) and S halves, never
below `minimum`; after `growth_interval` finite steps in a row S doubles, probing for the largest
S that does not overflow. The optimizer's own step count (and so its schedule) does not advance
on a skipped step.

The scale's state (`LOSS_SCALE` keys) is an array pytree inside the train state
(`jaxcnn.core.state.ScaledTrainState.loss_scale`): it is checkpointed, resumed bitwise and stacked
per member like the rest. A state without it (float32, bfloat16) is left exactly as it was.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

GROWTH = 2.0  # the factor after `growth_interval` finite steps
BACKOFF = 0.5  # the factor after a step that overflowed


@dataclasses.dataclass(frozen=True)
class Policy:
    """How the scale moves (`config.loss_scale`); hashable, a static field of the state."""

    initial: float = 2.0**15
    growth_interval: int = 2000
    minimum: float = 1.0


def initial(policy: Policy) -> dict[str, jax.Array]:
    """The scale's state before any step: the initial scale, no finite steps in a row, none skipped."""
    return {"scale": jnp.asarray(policy.initial, jnp.float32), "good_steps": jnp.zeros((), jnp.int32),
            "skipped_steps": jnp.zeros((), jnp.int32)}


def scale_of(state: Any) -> jax.Array | None:
    """The state's loss scale; None when it has none (no scaling: the step is left as it was)."""
    loss_scale = getattr(state, "loss_scale", None)
    return None if not loss_scale else loss_scale["scale"]


def scaled(loss: jax.Array, scale: jax.Array | None) -> jax.Array:
    """The loss the gradient is taken of: multiplied by the scale (unchanged without one)."""
    return loss if scale is None else loss * scale


def unscaled(grads: Any, scale: jax.Array | None) -> Any:
    """The gradients of the unscaled loss: each divided by the scale (unchanged without one)."""
    if scale is None:
        return grads
    return jax.tree.map(lambda g: g / scale.astype(g.dtype), grads)


def all_finite(tree: Any) -> jax.Array:
    """Whether every element of every leaf is finite: False means the scaled step overflowed."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def next_scale(loss_scale: dict[str, jax.Array], finite: jax.Array, policy: Policy) -> dict[str, jax.Array]:
    """The scale's state after a step: halved (not below `minimum`) and the step counted as skipped
    when it overflowed; doubled once `growth_interval` finite steps in a row are reached."""
    scale, good = loss_scale["scale"], loss_scale["good_steps"] + 1
    grow = finite & (good >= policy.growth_interval)
    grown = jnp.minimum(scale * GROWTH, jnp.finfo(jnp.float32).max)
    backed_off = jnp.maximum(scale * BACKOFF, policy.minimum)
    return {"scale": jnp.where(finite, jnp.where(grow, grown, scale), backed_off).astype(jnp.float32),
            "good_steps": jnp.where(finite & ~grow, good, 0).astype(jnp.int32),
            "skipped_steps": loss_scale["skipped_steps"] + (~finite).astype(jnp.int32)}


def kept_or_skipped(before: Any, after: Any, grads: Any) -> tuple[Any, jax.Array | None]:
    """`after` (the state a training step made from `before`) when `grads` (unscaled) are finite,
    else `before` with only its step count moved on; its scale moved either way. Second: 1.0 for a
    skipped step, 0.0 for an applied one (None without scaling, where `after` is returned as it is)."""
    if scale_of(before) is None:
        return after, None
    finite = all_finite(grads)
    kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), after, before)
    kept = kept.replace(step=after.step, loss_scale=next_scale(before.loss_scale, finite, before.scaling))
    return kept, 1.0 - finite.astype(jnp.float32)

"""Calls over a stack of members (`jaxcnn.core.members`): the single run's k-step bodies mapped over a
leading member axis (`over_members`), and split over the devices when their count divides the
members' (`split_members`). The executor applies them (`Executor.compile`); nothing else does.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from jaxcnn.data.feed import WHOLE_KEYS, input_gate


def members_in_turn(stacked_params: Any, backend: str | None = None) -> bool:
    """Whether a stack of members runs as a chain of single-member calls rather than `jax.vmap`:
    on CPU for models with convolutions. XLA:CPU runs a vmapped convolution as a grouped one, slower
    per member than the single run's; the chain runs each member's body as the single run does
    (8 members against 8 single runs, one call per step: the Flax-example CNN 0.90× in turn against
    0.57× vmapped, the tiny CNN 1.35× against 0.28×; README, "Seeds and sweeps")."""
    has_conv = any(jnp.ndim(leaf) >= 5 for leaf in jax.tree.leaves(stacked_params))
    return has_conv and (backend or jax.default_backend()) == "cpu"


def _in_turn(body: Callable, own: list, inputs: dict, start: jax.Array, num_steps: int) -> Any:
    """Each member's `body` in turn; member m + 1's batches are gathered after member m's results
    (`input_gate`), so XLA runs the members one after another instead of all at once, which
    thrashes the caches as an unrolled scan's steps did."""
    outs, gate = [], jnp.zeros((), jnp.int32)
    for m in range(jax.tree.leaves(own[0])[0].shape[0]):
        member = [jax.tree.map(lambda x: x[m], tree) for tree in own]
        own_inputs = {key: value if key in WHOLE_KEYS else value[m] for key, value in inputs.items()}
        out = body(*member, own_inputs, start + gate, num_steps)
        floats = [leaf for leaf in jax.tree.leaves(out) if jnp.issubdtype(leaf.dtype, jnp.floating)]
        gate = input_gate(jnp.sum(floats[-1]))
        outs.append(out)
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *outs)


def over_members(body: Callable) -> Callable:
    """`body` (`train_body`, `eval_body`, `eval_predict_body`) for a stack of independent members
    (`jaxcnn.core.members`): `jax.vmap` over the leading axis of its state (and totals) and of every
    input but the shared split (`WHOLE_KEYS`), or the members in turn (`members_in_turn`); the
    call's start and step count are shared. An `active` input (one flag per member) keeps a stopped
    member's state and totals as they were (a select over the whole state, skipped while every
    member trains)."""

    def call(*args, num_steps):
        *own, inputs, start = args
        inputs = dict(inputs)
        active = inputs.pop("active", None)
        alone = jax.tree.leaves(own[0])[0].shape[0] == 1  # one member (on its device): its single-run body
        if alone or members_in_turn(own[0].params):
            out = _in_turn(body, own, inputs, start, num_steps)
        else:
            axes = {key: None if key in WHOLE_KEYS else 0 for key in inputs}
            out = jax.vmap(lambda *a: body(*a, start, num_steps), in_axes=(*[0] * len(own), axes))(*own, inputs)
        if active is None:
            return out
        keep = lambda new, old: jnp.where(active.reshape(active.shape + (1,) * (new.ndim - 1)), new, old)
        return lax.cond(jnp.all(active), lambda: out, lambda: jax.tree.map(keep, out, tuple(own)))

    return call


def split_members(call: Callable, mesh: Mesh, axis: str, num_stacked: int) -> Callable:
    """`call` (an `over_members` call) as `jax.shard_map` over `mesh`'s `axis`: the stacked
    arguments (state, totals) and the per-member inputs split along their member axis, the shared
    split (`WHOLE_KEYS`) whole on every device, so each device runs its own members and nothing
    crosses devices; the outputs stay split along the members."""

    def mapped(*args, num_steps):
        inputs = args[num_stacked]
        specs = (*[P(axis)] * num_stacked, {k: P() if k in WHOLE_KEYS else P(axis) for k in inputs}, P())
        return jax.shard_map(lambda *a: call(*a, num_steps=num_steps), mesh=mesh, in_specs=specs,
                             out_specs=P(axis), check_vma=False)(*args)

    return mapped

"""Members: several models trained in one compiled program, one per seed and swept value.

`config.seeds` (N: the seeds `seed`, ..., `seed + N - 1`; or an explicit tuple) and
`config.sweep.<key>` (a tuple of values of one of `SWEEPABLE`) make a run of members: every
combination of a swept value and a seed, sweep values major (member `v * len(seeds) + s`). Unset
(None, or seeds 0), the run is today's single run, untouched.

Each member has its own initial parameters, epoch order, dropout and augmentation keys (all from
its seed, exactly as a single run with `seed` set to it), and its own validation split, carved from
the training pool as index arrays (`jaxcnn.data.members`). Its swept values are arrays inside the
step: the learning rate as the optimizer's `lr_scale` (the schedule scaled by value / the
configured rate), the weight decay as an injected optimizer hyperparameter, label smoothing and L2
in `TrainState.hyper`. One program runs them all over the stacked state: `jax.vmap`, or on CPU for
convolutional models the members in turn (`member_calls.over_members`, `member_calls.members_in_turn`).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcnn.core import optim
from jaxcnn.errors import JaxcnnError
from jaxcnn.spec import SWEEPABLE, is_int, is_number, not_sweepable
from jaxcnn.core.state import SweptTrainState, TrainState

MAX_SEED = 2**31 - 1  # member seeds are int32 inside the program (jax.random.PRNGKey)


@dataclasses.dataclass(frozen=True)
class Member:
    """One model of a run of members: its index, seed and swept values ((key, value), ...)."""

    index: int
    seed: int
    values: tuple[tuple[str, float], ...] = ()

    @property
    def sweep(self) -> dict[str, float]:
        return dict(self.values)

    @property
    def label(self) -> str:
        return " ".join([*(f"{key.split('.')[-1]}={value:g}" for key, value in self.values), f"seed={self.seed}"])

    def to_json(self) -> dict[str, Any]:
        return {"member": self.index, "seed": self.seed, "sweep": self.sweep}


def seeds_of(config: ml_collections.ConfigDict) -> tuple[int, ...] | None:
    """The members' seeds (None: unset), checked: N >= 1 or a non-empty tuple of distinct seeds."""
    seeds = config.get("seeds")
    if seeds is None or (is_int(seeds) and seeds == 0):
        return None
    if is_int(seeds):
        if seeds < 0:
            raise JaxcnnError(f"seeds must be a number of seeds >= 1 or a tuple of seeds, got {seeds}")
        seeds = tuple(range(config.seed, config.seed + seeds))
    elif isinstance(seeds, (tuple, list)):
        if not seeds:
            raise JaxcnnError("seeds is an empty list; give at least one seed, e.g. --config.seeds=8 or "
                              "--config.seeds=\"(0, 3, 7)\" (leave it unset for one run)")
        if not all(is_int(s) and s >= 0 for s in seeds):
            raise JaxcnnError(f"seeds must be non-negative integers, got {tuple(seeds)}")
        repeated = sorted({s for s in seeds if list(seeds).count(s) > 1})
        if repeated:
            raise JaxcnnError(f"seeds repeats {', '.join(map(str, repeated))} (seeds {tuple(seeds)}); each member "
                              "needs its own seed")
    else:
        raise JaxcnnError(f"seeds must be a number of seeds or a tuple of seeds, e.g. 8 or \"(0, 3, 7)\", "
                          f"got {seeds!r}")
    if max(seeds) > MAX_SEED:
        raise JaxcnnError(f"seeds must be below 2**31 for members, got {max(seeds)}")
    return tuple(int(s) for s in seeds)


def sweep_of(config: ml_collections.ConfigDict) -> dict[str, tuple[float, ...]]:
    """The swept keys and their values, in `SWEEPABLE` order; each checked (numbers, distinct, in range)."""
    section = config.get("sweep")
    if section is None:
        return {}
    for name, sub in section.items():
        unknown = ([f"{name}.{k}" for k in sub.keys() if f"{name}.{k}" not in SWEEPABLE]
                   if isinstance(sub, ml_collections.ConfigDict) else [name])
        if unknown:
            raise JaxcnnError(not_sweepable(unknown[0]))
    swept = {}
    for key in SWEEPABLE:
        section_name, name = key.split(".")
        value = section[section_name][name] if section_name in section else None
        if value is None:
            continue
        values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        swept[key] = _check_values(key, values, config)
    return swept


# The range of each sweepable value: (check, what it must be).
VALUE_RANGES = {"optimizer.learning_rate": (lambda v: v > 0, "> 0"),
                "optimizer.weight_decay": (lambda v: v >= 0, ">= 0"),
                "loss.label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
                "loss.l2": (lambda v: v >= 0, ">= 0")}


def _check_values(key: str, values: tuple, config: ml_collections.ConfigDict) -> tuple[float, ...]:
    if not values:
        raise JaxcnnError(f"sweep.{key} is an empty list; give the values to sweep, e.g. \"(0.01, 0.03, 0.1)\"")
    if not all(is_number(v) for v in values):
        raise JaxcnnError(f"sweep.{key} must be numbers, got {values}")
    if len(set(values)) < len(values):
        raise JaxcnnError(f"sweep.{key} repeats a value ({values}); each value is one group of members")
    check, expected = VALUE_RANGES[key]
    bad = [v for v in values if not check(v)]
    if bad:
        raise JaxcnnError(f"sweep.{key} values must be {expected}, got {bad[0]}")
    if key == "loss.label_smoothing" and config.loss.name != "cross_entropy":
        raise JaxcnnError(f"sweep.loss.label_smoothing needs loss.name 'cross_entropy', got {config.loss.name!r}")
    return tuple(float(v) for v in values)


def members_of(config: ml_collections.ConfigDict) -> list[Member] | None:
    """The run's members (sweep values major, seeds minor), or None for a single run."""
    seeds, swept = seeds_of(config), sweep_of(config)
    if seeds is None and not swept:
        return None
    check_supported(config)
    seeds = seeds or (config.seed,)
    combos = list(itertools.product(*swept.values())) if swept else [()]
    return [Member(i, seed, tuple(zip(swept, combo)))
            for i, (combo, seed) in enumerate(itertools.product(combos, seeds))]


def check_supported(config: ml_collections.ConfigDict) -> None:
    """What a run of members cannot do, refused in one line before any work."""
    if config.get("profile_steps"):
        raise JaxcnnError("profile_steps traces a single run; unset it (or seeds and sweep) to profile")


def is_multi(config: ml_collections.ConfigDict) -> bool:
    """Whether `config` trains members (`seeds` or a sweep set)."""
    return members_of(config) is not None


def swept_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    return tuple(sweep_of(config))


# ---------------------------------------------------------------------------- the stacked state


def stack(trees: Sequence[Any]) -> Any:
    """Pytrees of equal structure stacked along a new leading (member) axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def member_slice(tree: Any, index: int) -> Any:
    """Member `index` of a stacked pytree."""
    return jax.tree.map(lambda leaf: leaf[index], tree)


def init_members(init_one: Any, members: Sequence[Member], learning_rate: float) -> TrainState:
    """The stacked initial state: `init_one(seed)` (a single run's initial state) vmapped over the
    members' seeds, bitwise each single run's, then each member's swept values set."""
    seeds = jnp.asarray([m.seed for m in members], jnp.int32)
    state = jax.jit(jax.vmap(init_one))(seeds)
    return with_sweep_values(state, members, learning_rate, np.ones(len(members)))


def lr_factors(members: Sequence[Member], learning_rate: float) -> np.ndarray:
    """Each member's learning rate over the configured one (1 where the rate is not swept)."""
    return np.asarray([m.sweep.get("optimizer.learning_rate", learning_rate) / learning_rate for m in members])


def with_sweep_values(state: TrainState, members: Sequence[Member], learning_rate: float,
                      plateau_scales: np.ndarray) -> TrainState:
    """`state` with each member's swept values: its lr scale (sweep factor × plateau scale), weight
    decay hyperparameter, label smoothing and L2."""
    scales = lr_factors(members, learning_rate) * np.asarray(plateau_scales)
    opt_state = optim.set_lr_scale(state.opt_state, scales.astype(np.float32))
    swept = members[0].sweep
    if "optimizer.weight_decay" in swept:
        decay = np.asarray([m.sweep["optimizer.weight_decay"] for m in members], np.float32)
        opt_state = optim.set_hyperparam(opt_state, "weight_decay", decay)
    hyper = {key.split(".")[-1]: jnp.asarray([m.sweep[key] for m in members], jnp.float32)
             for key in ("loss.label_smoothing", "loss.l2") if key in swept}
    state = state.replace(opt_state=opt_state)
    return SweptTrainState.of(state, hyper) if hyper else state


def stacked_zeros(tree: Any, num_members: int) -> Any:
    """`tree` (zeros: `zero_train_totals()`, `zero_eval_sums()`) with one copy per member."""
    return jax.tree.map(lambda x: jnp.zeros((num_members, *x.shape), x.dtype), tree)


@jax.jit
def keep_best(improved: jax.Array, variables: Any, best: Any) -> Any:
    """`best` with the members that `improved` replaced by their current `variables`."""
    return jax.tree.map(lambda new, old: jnp.where(improved.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
                        variables, best)

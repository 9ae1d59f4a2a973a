"""The training state: one pytree holding everything that changes during training."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxcnn.core import loss_scale as scaling_module


class TrainState(struct.PyTreeNode):
    """params, batch_stats, opt_state, step and rng; the functions that use them are static fields.

    `rng` is a raw uint32 key: dropout draws from `fold_in(rng, step)`, so a step's randomness
    depends only on the seed and the step number (and survives checkpoint/resume unchanged).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    rng: jax.Array
    apply_fn: Callable = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    loss_fn: Callable = struct.field(pytree_node=False)
    l2: float = struct.field(pytree_node=False, default=0.0)
    # Parameter name patterns kept as they are (`config.freeze`, `jaxcnn.core.finetune`): their
    # BatchNorm statistics too. Static, so a run without any keeps its pytree and checkpoints.
    frozen: tuple = struct.field(pytree_node=False, default=())

    def variables(self, params: Any = None) -> dict[str, Any]:
        """The variables dict for `apply_fn`: params, plus batch_stats when the model has any."""
        variables = {"params": self.params if params is None else params}
        if self.batch_stats:
            variables["batch_stats"] = self.batch_stats
        return variables


class SweptTrainState(TrainState):
    """The state of a member of a sweep of loss values (`jaxcnn.core.members`): `hyper` holds them,
    arrays inside the step ("label_smoothing", "l2"). A single run's `TrainState` has none, so its
    pytree (and its checkpoints) are as they were."""

    hyper: dict[str, jax.Array] = struct.field(default_factory=dict)

    @classmethod
    def of(cls, state: TrainState, hyper: dict[str, jax.Array]) -> SweptTrainState:
        """`state` with `hyper` added; a state that has `hyper` already (an `EmaTrainState`) keeps its class."""
        fields = {name: getattr(state, name) for name in state.__dataclass_fields__}
        kind = type(state) if isinstance(state, SweptTrainState) else cls
        return kind(**{**fields, "hyper": {**fields.get("hyper", {}), **hyper}})


class EmaTrainState(SweptTrainState):
    """A state with the moving averages of its weights (`config.ema.decay` > 0, `jaxcnn.core.ema`):
    `ema` holds {"params", "batch_stats"}. A subclass, so a run without EMA keeps the `TrainState`
    pytree (and its checkpoints); a sweep's values (`hyper`) fit beside the averages."""

    ema: dict[str, Any] = struct.field(default_factory=dict)
    ema_decay: float = struct.field(pytree_node=False, default=0.0)


class ScaledTrainState(EmaTrainState):
    """The state of a `dtype="float16"` run: `loss_scale` holds the dynamic loss scale's arrays
    (`jaxcnn.core.loss_scale`), `scaling` how it moves. A subclass of the EMA state so that one class
    carries every optional field: its `ema` (and `hyper`) are empty unless EMA (a sweep) is on, and
    empty fields hold no arrays. Float32 and bfloat16 runs keep their classes (and checkpoints)."""

    loss_scale: dict[str, jax.Array] = struct.field(default_factory=dict)
    scaling: Any = struct.field(pytree_node=False, default=None)  # a `loss_scale.Policy`


def hyper_of(state: TrainState) -> dict[str, jax.Array]:
    """The swept loss values of a state (`SweptTrainState.hyper`); none for a `TrainState`."""
    return getattr(state, "hyper", {})


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    loss_fn: Callable,
    input_shape: tuple[int, ...],
    seed: int,
    l2: float = 0.0,
    ema_decay: float = 0.0,
    frozen: tuple = (),
    scaling: scaling_module.Policy | None = None,
) -> TrainState:
    """Initialises the model on a dummy batch of `input_shape` (H, W, C) and the optimizer; with
    `ema_decay` > 0 an `EmaTrainState` whose averages start as (copies of) the initial weights; with
    `scaling` (float16) a `ScaledTrainState` whose loss scale starts at `scaling.initial`."""
    def init(key):
        init_key, dropout_key = jax.random.split(key)
        variables = model.init(init_key, jnp.zeros((1, *input_shape), jnp.float32))
        params, batch_stats = variables["params"], variables.get("batch_stats", {})
        fields = dict(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), rng=dropout_key, apply_fn=model.apply, tx=tx, loss_fn=loss_fn,
                      l2=float(l2), frozen=tuple(frozen))
        if not ema_decay and scaling is None:
            return TrainState(**fields)
        # Copies: a buffer in two places of a donated state would be donated twice.
        ema = jax.tree.map(jnp.copy, {"params": params, "batch_stats": batch_stats}) if ema_decay else {}
        if scaling is None:
            return EmaTrainState(**fields, ema=ema, ema_decay=float(ema_decay))
        return ScaledTrainState(**fields, ema=ema, ema_decay=float(ema_decay),
                                loss_scale=scaling_module.initial(scaling), scaling=scaling)

    # One program (from the compilation cache after the first run), not the model's init and then
    # each of the optimizer's zeros and the schedule's values compiled and run one operation at a time.
    return jax.jit(init)(jax.random.PRNGKey(seed))  # the key outside: a seed may not fit in an int32

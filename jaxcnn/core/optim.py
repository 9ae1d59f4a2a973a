"""The optimizers and learning-rate schedules (Optax), and the reduce-on-plateau controller.

Each optimizer and schedule is one entry of its registry (`jaxcnn.spec.OPTIMIZERS`, `SCHEDULES`),
registered here: the name a config gives is looked up, never compared in an if-chain. Their keys,
defaults and ranges are `jaxcnn.spec.OptimizerSpec` and `ScheduleSpec`.

The whole chain is wrapped in `optax.inject_hyperparams`, so the optimizer state holds two
hyperparameters: `learning_rate` (the schedule's value, recomputed from the step count) and
`lr_scale` (a plain number the host may change, e.g. on a plateau). The lr applied is their product.
"""

import copy
import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from jaxcnn.errors import JaxcnnError
from jaxcnn.spec import OPTIMIZERS, SCHEDULES, OptimizerSpec, ScheduleSpec, positive_int

def default_optimizer_config() -> dict:
    """`config.optimizer` with every key at its default (declared in `jaxcnn.spec.OptimizerSpec`)."""
    return OptimizerSpec.defaults()


def default_schedule_config() -> dict:
    """`config.schedule` with every key at its default (declared in `jaxcnn.spec.ScheduleSpec`)."""
    return ScheduleSpec.defaults()


# ---------------------------------------------------------------------------- schedules: name -> builder


@SCHEDULES.register("constant")
@SCHEDULES.register("plateau")  # constant, scaled through lr_scale by the PlateauScheduler
def _constant(lr: float, sched: ScheduleSpec, steps_per_epoch: int, num_epochs: int) -> optax.Schedule:
    return optax.constant_schedule(lr)


@SCHEDULES.register("piecewise")
def _piecewise(lr: float, sched: ScheduleSpec, steps_per_epoch: int, num_epochs: int) -> optax.Schedule:
    steps = {round(b * steps_per_epoch): sched.decay_rate for b in sched.boundaries_epochs}
    return optax.piecewise_constant_schedule(lr, steps)


@SCHEDULES.register("exponential")
def _exponential(lr: float, sched: ScheduleSpec, steps_per_epoch: int, num_epochs: int) -> optax.Schedule:
    # Smooth decay: lr * decay_rate ** (step / steps_per_epoch).
    return optax.exponential_decay(lr, steps_per_epoch, sched.decay_rate)


def _warmup_steps(sched: ScheduleSpec, steps_per_epoch: int, total: int) -> int:
    warmup = round(sched.warmup_epochs * steps_per_epoch)
    return total // 2 if warmup >= total else warmup  # a short run (a smoke test, max_steps): half of it


@SCHEDULES.register("warmup_cosine")
def _warmup_cosine(lr: float, sched: ScheduleSpec, steps_per_epoch: int, num_epochs: int) -> optax.Schedule:
    total = num_epochs * steps_per_epoch
    warmup = _warmup_steps(sched, steps_per_epoch, total)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=lr,
        warmup_steps=warmup,
        decay_steps=total,  # counts the warmup too
        end_value=sched.end_learning_rate,
    )


@SCHEDULES.register("warmup_linear")
def _warmup_linear(lr: float, sched: ScheduleSpec, steps_per_epoch: int, num_epochs: int) -> optax.Schedule:
    """One-cycle (triangular): linear from 0 to `lr` over the warm-up, then linear down to
    `end_learning_rate` at the last step (the warm-up counted), constant after."""
    total = num_epochs * steps_per_epoch
    warmup = _warmup_steps(sched, steps_per_epoch, total)
    decay = optax.linear_schedule(lr, sched.end_learning_rate, max(1, total - warmup))
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


# ---------------------------------------------------------------------------- optimizers: name -> parts


def _kernels_only(params):
    """Weight-decay mask: matrices and conv kernels decay, biases and norm scales do not."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def _decay(opt: OptimizerSpec) -> list[optax.GradientTransformation]:
    """Decoupled decay: added after the preconditioner, so it is scaled by the lr only. A swept
    weight decay is an array (`jaxcnn.core.members`): the decay is always there."""
    swept = not isinstance(opt.weight_decay, (int, float))
    return ([optax.add_decayed_weights(opt.weight_decay, mask=_kernels_only)]
            if swept or opt.weight_decay > 0 else [])


def _trace(opt: OptimizerSpec) -> list[optax.GradientTransformation]:
    return [optax.trace(opt.momentum, nesterov=opt.nesterov)] if opt.momentum > 0 else []


@OPTIMIZERS.register("sgd")
def _sgd(opt: OptimizerSpec, lr: jax.Array) -> list[optax.GradientTransformation]:
    return [*_trace(opt), *_decay(opt), optax.scale_by_learning_rate(lr)]


@OPTIMIZERS.register("rmsprop")
def _rmsprop(opt: OptimizerSpec, lr: jax.Array) -> list[optax.GradientTransformation]:
    """The order of optax.rmsprop: momentum on the lr-scaled step."""
    rms = optax.scale_by_rms(decay=opt.rmsprop_decay, eps=opt.eps)
    return [rms, *_decay(opt), optax.scale_by_learning_rate(lr), *_trace(opt)]


@OPTIMIZERS.register("adam")
def _adam(opt: OptimizerSpec, lr: jax.Array) -> list[optax.GradientTransformation]:
    adam = optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps)
    return [adam, *_decay(opt), optax.scale_by_learning_rate(lr)]


@OPTIMIZERS.register("adamw")
def _adamw(opt: OptimizerSpec, lr: jax.Array) -> list[optax.GradientTransformation]:
    return [optax.adamw(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=_kernels_only)]


def _with_decay(opt: OptimizerSpec, weight_decay: jax.Array) -> OptimizerSpec:
    """`opt` with a swept weight decay: an array inside the step, so past the spec's checks (its
    values were checked with the sweep, `jaxcnn.core.members`)."""
    swept = copy.copy(opt)
    object.__setattr__(swept, "weight_decay", weight_decay)
    return swept


def _make_factory(opt: OptimizerSpec):
    """The inner factory for `inject_hyperparams`; all settings but the lr hyperparams are fixed
    (and the weight decay, when it is given as a hyperparameter: a swept one, `jaxcnn.core.members`)."""
    parts = OPTIMIZERS.lookup(opt.name)

    def factory(learning_rate: jax.Array, lr_scale: jax.Array,
                weight_decay: jax.Array | None = None) -> optax.GradientTransformation:
        lr = learning_rate * lr_scale
        clip = [optax.clip_by_global_norm(opt.grad_clip_norm)] if opt.grad_clip_norm > 0 else []
        return optax.chain(*clip, *parts(opt if weight_decay is None else _with_decay(opt, weight_decay), lr))

    return factory


def create_optimizer(
    optimizer_cfg: Mapping,
    schedule_cfg: Mapping,
    steps_per_epoch: int,
    num_epochs: int,
    grad_accum_steps: int = 1,
    sweep_weight_decay: bool = False,
) -> optax.GradientTransformation:
    """Validate both sections, then build the optimizer with the scheduled lr and `lr_scale` = 1.

    With `grad_accum_steps` k > 1 the optimizer is wrapped in `optax.MultiSteps`: each call adds
    one batch's gradients to a running mean and only every k-th call updates the parameters (the
    others return zero updates), so k batches of size B train like one batch of size k·B. The
    schedule then counts updates, i.e. `steps_per_epoch / k` per epoch.
    """
    if steps_per_epoch < 1:
        raise JaxcnnError(
            f"steps_per_epoch must be >= 1, got {steps_per_epoch}; "
            "the training set must hold at least one batch"
        )
    if num_epochs < 1:
        raise JaxcnnError(f"num_epochs must be >= 1, got {num_epochs}")
    opt, sched = OptimizerSpec.parse(optimizer_cfg), ScheduleSpec.parse(schedule_cfg)
    sched.check_learning_rate(opt.learning_rate)
    positive_int("grad_accum_steps", grad_accum_steps)
    updates_per_epoch = max(1, round(steps_per_epoch / grad_accum_steps))
    schedule = SCHEDULES.lookup(sched.name)(opt.learning_rate, sched, updates_per_epoch, num_epochs)
    swept = {"weight_decay": opt.weight_decay} if sweep_weight_decay else {}  # an array per member (members.py)
    tx = optax.inject_hyperparams(_make_factory(opt))(learning_rate=schedule, lr_scale=1.0, **swept)
    if grad_accum_steps > 1:
        # learning_rate_in_effect / set_lr_scale find the hyperparams inside MultiSteps' inner state.
        tx = optax.MultiSteps(tx, every_k_schedule=grad_accum_steps).gradient_transformation()
    return tx


def _hyperparams(opt_state) -> dict:
    hyperparams = optax.tree_utils.tree_get(opt_state, "hyperparams")
    if hyperparams is None:
        raise ValueError("opt_state holds no injected hyperparams; build it with create_optimizer")
    return hyperparams


def learning_rate_in_effect(opt_state) -> jax.Array:
    """The lr of the last update (schedule value × lr_scale); before any update, of the first."""
    hyperparams = _hyperparams(opt_state)
    return hyperparams["learning_rate"] * hyperparams["lr_scale"]


def set_lr_scale(opt_state, scale: float):
    """A copy of `opt_state` whose next updates use lr = schedule(step) * scale."""
    return set_hyperparam(opt_state, "lr_scale", scale)


def set_hyperparam(opt_state, name: str, value):
    """A copy of `opt_state` with the injected numeric hyperparameter `name` set to `value`."""
    hyperparams = _hyperparams(opt_state)
    new = {**hyperparams, name: jnp.asarray(value, hyperparams[name].dtype)}
    return optax.tree_utils.tree_set(opt_state, hyperparams=new)


# ---------------------------------------------------------------------------- reduce on plateau


@dataclasses.dataclass
class PlateauScheduler:
    """Reduce-on-plateau, on the host, fed the validation loss once per epoch (as in Keras).

    An epoch improves when val_loss < best - min_delta. On the `patience`-th consecutive epoch
    without improvement the scale is multiplied by `factor` (never below `min_scale`); the
    `cooldown` epochs after a cut do not count as bad. Apply the scale with `set_lr_scale`.
    """

    factor: float
    patience: int
    min_delta: float = 0.0
    cooldown: int = 0
    min_scale: float = 0.0
    best: float | None = None
    num_bad_epochs: int = 0
    cooldown_left: int = 0
    scale: float = 1.0

    def update(self, val_loss: float) -> float:
        """Record one epoch's validation loss; return the lr scale to use from now on."""
        val_loss = float(val_loss)
        improved = self.best is None or val_loss < self.best - self.min_delta
        if improved:
            self.best = val_loss
            self.num_bad_epochs = 0
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
        elif not improved:
            self.num_bad_epochs += 1
            if self.num_bad_epochs >= self.patience:
                self.scale = max(self.scale * self.factor, self.min_scale)
                self.num_bad_epochs = 0
                self.cooldown_left = self.cooldown
        return self.scale

    def state_dict(self) -> dict:
        """Settings and state as JSON-able plain values (`best` is None before the first epoch)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, state: Mapping) -> "PlateauScheduler":
        return cls(**state)

    def load_state_dict(self, state: Mapping) -> None:
        """Restore the progress (best, counters, scale) but keep this instance's settings."""
        for key in ("best", "num_bad_epochs", "cooldown_left", "scale"):
            setattr(self, key, state[key])


def make_plateau_scheduler(schedule_cfg: Mapping) -> PlateauScheduler | None:
    """The controller for schedule name "plateau", else None."""
    sched = ScheduleSpec.parse(schedule_cfg)
    if sched.name != "plateau":
        return None
    return PlateauScheduler(
        factor=sched.plateau_factor,
        patience=sched.plateau_patience,
        min_delta=sched.plateau_min_delta,
        cooldown=sched.plateau_cooldown,
        min_scale=sched.plateau_min_scale,
    )

"""The optimizer and learning-rate schedule factory (Optax), and the reduce-on-plateau controller.

The whole chain is wrapped in `optax.inject_hyperparams`, so the optimizer state holds two
hyperparameters: `learning_rate` (the schedule's value, recomputed from the step count) and
`lr_scale` (a plain number the host may change, e.g. on a plateau). The lr applied is their product.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxcnn.errors import JaxcnnError

OPTIMIZER_NAMES = ("adam", "adamw", "rmsprop", "sgd")
SCHEDULE_NAMES = ("constant", "exponential", "piecewise", "plateau", "warmup_cosine", "warmup_linear")


def default_optimizer_config() -> dict:
    return {
        "name": "adam",
        "learning_rate": 1e-3,
        "momentum": 0.0,  # sgd and rmsprop; 0 turns momentum off
        "nesterov": False,  # sgd and rmsprop
        "rmsprop_decay": 0.9,
        "eps": 1e-8,
        "b1": 0.9,
        "b2": 0.999,
        "weight_decay": 0.0,  # decoupled, kernels only
        "grad_clip_norm": 0.0,  # 0 = off
    }


def default_schedule_config() -> dict:
    return {
        "name": "constant",
        "boundaries_epochs": (),  # piecewise: lr *= decay_rate at each of these epochs
        "decay_rate": 0.1,  # piecewise (per boundary) and exponential (per epoch)
        "warmup_epochs": 0.0,  # warmup_cosine, warmup_linear: linear warmup from 0
        "end_learning_rate": 0.0,  # warmup_cosine, warmup_linear: the value reached at the last step
        "plateau_factor": 0.1,
        "plateau_patience": 5,
        "plateau_min_delta": 1e-4,
        "plateau_cooldown": 0,
        "plateau_min_scale": 1e-3,
    }


# ---------------------------------------------------------------------------- config checks


def _complete(section: str, cfg: Mapping, defaults: dict) -> dict:
    """The section's values over the defaults; an unknown key (likely a typo) is an error."""
    unknown = sorted(set(cfg.keys()) - set(defaults))
    if unknown:
        raise JaxcnnError(
            f"unknown key {section}.{unknown[0]}; expected one of: {', '.join(sorted(defaults))}"
        )
    return {**defaults, **{key: cfg[key] for key in cfg.keys()}}


def _number(section: str, values: dict, key: str) -> float:
    value = values[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise JaxcnnError(f"{section}.{key} must be a number, got {value!r}")
    return value


def _check(ok: bool, section: str, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise JaxcnnError(f"{section}.{key} must be {expected}, got {value}")


def _check_name(section: str, name: Any, kind: str, names: tuple[str, ...]) -> None:
    if name not in names:
        raise JaxcnnError(
            f"unknown {kind} {name!r} ({section}.name); expected one of: {', '.join(names)}"
        )


def _optimizer_values(cfg: Mapping) -> dict:
    sec = "optimizer"
    values = _complete(sec, cfg, default_optimizer_config())
    _check_name(sec, values["name"], "optimizer", OPTIMIZER_NAMES)
    lr = _number(sec, values, "learning_rate")
    _check(lr > 0, sec, "learning_rate", "> 0", lr)
    for key in ("weight_decay", "grad_clip_norm"):
        value = _number(sec, values, key)
        _check(value >= 0, sec, key, ">= 0 (0 turns it off)", value)
    for key in ("momentum", "rmsprop_decay", "b1", "b2"):
        value = _number(sec, values, key)
        _check(0 <= value < 1, sec, key, "in [0, 1)", value)
    eps = _number(sec, values, "eps")
    _check(eps > 0, sec, "eps", "> 0", eps)
    nesterov = values["nesterov"]
    _check(isinstance(nesterov, bool), sec, "nesterov", "true or false", repr(nesterov))
    return values


def _schedule_values(cfg: Mapping, learning_rate: float, num_epochs: int) -> dict:
    sec = "schedule"
    values = _complete(sec, cfg, default_schedule_config())
    _check_name(sec, values["name"], "schedule", SCHEDULE_NAMES)
    rate = _number(sec, values, "decay_rate")
    _check(0 < rate <= 1, sec, "decay_rate", "in (0, 1]", rate)
    warmup = _number(sec, values, "warmup_epochs")
    _check(0 <= warmup, sec, "warmup_epochs", ">= 0 (a warm-up as long as the run or longer is clipped to half of it)",
           warmup)
    end_lr = _number(sec, values, "end_learning_rate")
    _check(
        0 <= end_lr <= learning_rate,
        sec,
        "end_learning_rate",
        f"in [0, optimizer.learning_rate ({learning_rate})]",
        end_lr,
    )
    boundaries = values["boundaries_epochs"]
    ok = isinstance(boundaries, (list, tuple)) and all(
        isinstance(b, (int, float)) and not isinstance(b, bool) and b > 0 for b in boundaries
    )
    ok = ok and all(a < b for a, b in zip(boundaries, boundaries[1:]))
    _check(
        ok,
        sec,
        "boundaries_epochs",
        "positive epochs in increasing order, e.g. (30, 60)",
        boundaries,
    )
    _plateau_values(values)
    return values


def _plateau_values(values: dict) -> None:
    sec = "schedule"
    factor = _number(sec, values, "plateau_factor")
    _check(0 < factor < 1, sec, "plateau_factor", "in (0, 1), e.g. 0.1 or 0.5", factor)
    for key, lowest in (("plateau_patience", 1), ("plateau_cooldown", 0)):
        value = values[key]
        _check(
            isinstance(value, int) and not isinstance(value, bool) and value >= lowest,
            sec,
            key,
            f"a whole number of epochs >= {lowest}",
            value,
        )
    delta = _number(sec, values, "plateau_min_delta")
    _check(delta >= 0, sec, "plateau_min_delta", ">= 0", delta)
    min_scale = _number(sec, values, "plateau_min_scale")
    _check(0 <= min_scale <= 1, sec, "plateau_min_scale", "in [0, 1]", min_scale)


# ---------------------------------------------------------------------------- optimizer


def _make_schedule(lr: float, sched: dict, steps_per_epoch: int, num_epochs: int) -> optax.Schedule:
    name = sched["name"]
    if name == "piecewise":
        steps = {
            round(b * steps_per_epoch): sched["decay_rate"] for b in sched["boundaries_epochs"]
        }
        return optax.piecewise_constant_schedule(lr, steps)
    if name == "exponential":
        # Smooth decay: lr * decay_rate ** (step / steps_per_epoch).
        return optax.exponential_decay(lr, steps_per_epoch, sched["decay_rate"])
    total = num_epochs * steps_per_epoch
    warmup = round(sched["warmup_epochs"] * steps_per_epoch)
    if warmup >= total:  # a short run (a smoke test, max_steps): warm up for half of it, then decay
        warmup = total // 2
    if name == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=lr,
            warmup_steps=warmup,
            decay_steps=total,  # counts the warmup too
            end_value=sched["end_learning_rate"],
        )
    if name == "warmup_linear":
        return _warmup_linear(lr, warmup, total, sched["end_learning_rate"])
    return optax.constant_schedule(lr)  # constant, and plateau (scaled through lr_scale)


def _warmup_linear(lr: float, warmup_steps: int, total_steps: int, end_lr: float) -> optax.Schedule:
    """A one-cycle (triangular) schedule: linear from 0 to `lr` over `warmup_steps`, then linear
    down to `end_lr` at `total_steps` (the warmup counted), constant after."""
    decay = optax.linear_schedule(lr, end_lr, max(1, total_steps - warmup_steps))
    if warmup_steps == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), decay], [warmup_steps])


def _kernels_only(params):
    """Weight-decay mask: matrices and conv kernels decay, biases and norm scales do not."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def _make_factory(opt: dict):
    """The inner factory for `inject_hyperparams`; all settings but the lr hyperparams are fixed."""
    name, momentum, wd = opt["name"], opt["momentum"], opt["weight_decay"]

    def factory(learning_rate: jax.Array, lr_scale: jax.Array) -> optax.GradientTransformation:
        lr = learning_rate * lr_scale
        clip = (
            [optax.clip_by_global_norm(opt["grad_clip_norm"])] if opt["grad_clip_norm"] > 0 else []
        )
        # Decoupled decay: added after the preconditioner, so it is scaled by the lr only.
        decay = [optax.add_decayed_weights(wd, mask=_kernels_only)] if wd > 0 else []
        trace = [optax.trace(momentum, nesterov=opt["nesterov"])] if momentum > 0 else []
        if name == "sgd":
            parts = [*trace, *decay, optax.scale_by_learning_rate(lr)]
        elif name == "rmsprop":  # the order of optax.rmsprop: momentum on the lr-scaled step
            rms = optax.scale_by_rms(decay=opt["rmsprop_decay"], eps=opt["eps"])
            parts = [rms, *decay, optax.scale_by_learning_rate(lr), *trace]
        elif name == "adam":
            adam = optax.scale_by_adam(b1=opt["b1"], b2=opt["b2"], eps=opt["eps"])
            parts = [adam, *decay, optax.scale_by_learning_rate(lr)]
        else:
            parts = [
                optax.adamw(
                    lr,
                    b1=opt["b1"],
                    b2=opt["b2"],
                    eps=opt["eps"],
                    weight_decay=wd,
                    mask=_kernels_only,
                )
            ]
        return optax.chain(*clip, *parts)

    return factory


def create_optimizer(
    optimizer_cfg: Mapping,
    schedule_cfg: Mapping,
    steps_per_epoch: int,
    num_epochs: int,
    grad_accum_steps: int = 1,
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
    opt = _optimizer_values(optimizer_cfg)
    sched = _schedule_values(schedule_cfg, opt["learning_rate"], num_epochs)
    if isinstance(grad_accum_steps, bool) or not isinstance(grad_accum_steps, int) or grad_accum_steps < 1:
        raise JaxcnnError(f"grad_accum_steps must be a positive integer, got {grad_accum_steps!r}")
    updates_per_epoch = max(1, round(steps_per_epoch / grad_accum_steps))
    schedule = _make_schedule(opt["learning_rate"], sched, updates_per_epoch, num_epochs)
    tx = optax.inject_hyperparams(_make_factory(opt))(learning_rate=schedule, lr_scale=1.0)
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
    hyperparams = _hyperparams(opt_state)
    new = {**hyperparams, "lr_scale": jnp.asarray(scale, hyperparams["lr_scale"].dtype)}
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
    values = _complete("schedule", schedule_cfg, default_schedule_config())
    _check_name("schedule", values["name"], "schedule", SCHEDULE_NAMES)
    if values["name"] != "plateau":
        return None
    _plateau_values(values)
    return PlateauScheduler(
        factor=values["plateau_factor"],
        patience=values["plateau_patience"],
        min_delta=values["plateau_min_delta"],
        cooldown=values["plateau_cooldown"],
        min_scale=values["plateau_min_scale"],
    )

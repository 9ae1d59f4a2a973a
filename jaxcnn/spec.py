"""The config schema: typed sections with their defaults and checks, the shared checks, the registries.

The ground floor of the package: it imports nothing of jaxcnn but `jaxcnn.errors` and the shared
checks of `jaxcnn.checks` (re-exported here: `spec.positive_int`, `spec.one_of`, ...), so every
module can use it. `parse(config)` turns a whole config (a plain dict or a `ConfigDict`) into a `RunSpec`
of frozen sections; each key is declared once, as a field of its section:

    learning_rate: float = key(1e-3, number(0, low_open=True))   # default, check

That line is the key's default in `config.base_config()` (so in every preset and `--config.KEY=`),
its check in `config.validate_config()`, and its attribute on the parsed section. A new top-level
key is a field of `RunSpec`; a new key of a section a field of that section.

Registries map a name to its behaviour (an optax factory, a loss, an activation, ...). Each is
filled by the module implementing the entries (`home`, imported on the first look-up), so a name
and what it does are one entry; an unknown name lists the known ones, with a "did you mean".
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, ClassVar

from jaxcnn.checks import (  # noqa: F401 (the shared checks, re-exported: spec.positive_int, ...)
    Check, Registry, Section, area_shares, boolean, choice, fail, finite, increasing_epochs, integer, is_int, is_number, key,
    non_negative_int, number, one_of, plain, positive_int, section, sizes, stat, string)
from jaxcnn.errors import JaxcnnError


@dataclasses.dataclass(frozen=True)
class LossEntry:
    """A loss: `make(num_classes, label_smoothing)` is the per-example loss `(logits, labels) -> (batch,)`;
    `output` names the output activation that turns logits into probabilities (a `losses.OUTPUTS` key)."""

    make: Callable[[int, float], Callable[[Any, Any], Any]]
    output: str = "softmax"
    label_smoothing: bool = False  # whether it supports loss.label_smoothing > 0


OPTIMIZERS = Registry("optimizer", "optimizer.name", "jaxcnn.core.optim")  # name -> (OptimizerSpec, lr) -> [optax parts]
SCHEDULES = Registry("schedule", "schedule.name", "jaxcnn.core.optim")  # name -> (lr, ScheduleSpec, steps/epoch, epochs)
LOSSES = Registry("loss", "loss.name", "jaxcnn.core.losses")  # name -> LossEntry
ACTIVATIONS = Registry("activation", "model.activation", "jaxcnn.models.layers")  # name -> x -> y
POOLS = Registry("pool kind", "model.pool", "jaxcnn.models.layers")  # name -> layers.Pool (Flax function, reduction)
DTYPES = Registry("dtype", "dtype", "jaxcnn.core.precision")  # name -> jnp dtype
REGISTRIES = (OPTIMIZERS, SCHEDULES, LOSSES, ACTIVATIONS, POOLS, DTYPES)
PARALLEL = ("auto", "none", "pmap", "sharded")
INPUT_MODES = ("auto", "device", "host", "grain")
MONITORS = ("val_loss", "val_accuracy")
# What a run of members can sweep in one program: values that are arrays inside the step (jaxcnn/core/members.py).
SWEEPABLE = ("optimizer.learning_rate", "optimizer.weight_decay", "loss.label_smoothing", "loss.l2")
input_mode = choice(INPUT_MODES, "input mode", "auto puts the data on the device when it fits dataset.device_budget_mb")

# ---------------------------------------------------------------------------- sections


@dataclasses.dataclass(frozen=True)
class OptimizerSpec(Section):
    KEY: ClassVar[str] = "optimizer"
    name: str = key("adam", OPTIMIZERS)
    learning_rate: float = key(1e-3, number(0, low_open=True))
    momentum: float = key(0.0, number(0, 1, high_open=True))  # sgd and rmsprop; 0 turns momentum off
    nesterov: bool = key(False, boolean)  # sgd and rmsprop
    rmsprop_decay: float = key(0.9, number(0, 1, high_open=True))
    eps: float = key(1e-8, number(0, low_open=True))
    b1: float = key(0.9, number(0, 1, high_open=True))
    b2: float = key(0.999, number(0, 1, high_open=True))
    weight_decay: float = key(0.0, number(0, note=" (0 turns it off)"))  # decoupled, kernels only
    grad_clip_norm: float = key(0.0, number(0, note=" (0 turns it off)"))


@dataclasses.dataclass(frozen=True)
class ScheduleSpec(Section):
    KEY: ClassVar[str] = "schedule"
    name: str = key("constant", SCHEDULES)
    boundaries_epochs: tuple = key((), increasing_epochs)  # piecewise: lr *= decay_rate at each of these epochs
    decay_rate: float = key(0.1, number(0, 1, low_open=True))  # piecewise (per boundary) and exponential (per epoch)
    # warmup_cosine, warmup_linear: linear warm-up from 0
    warmup_epochs: float = key(0.0, number(
        0, note=" (a warm-up as long as the run or longer is clipped to half of it)"))
    end_learning_rate: float = key(0.0, number(0))  # warmup_cosine, warmup_linear: the value at the last step
    plateau_factor: float = key(0.1, number(0, 1, low_open=True, high_open=True, note=", e.g. 0.1 or 0.5"))
    plateau_patience: int = key(5, integer(1, "a whole number of epochs >= 1"))
    plateau_min_delta: float = key(1e-4, number(0))
    plateau_cooldown: int = key(0, integer(0, "a whole number of epochs >= 0"))
    plateau_min_scale: float = key(1e-3, number(0, 1))

    def check_learning_rate(self, learning_rate: float) -> None:
        if self.end_learning_rate > learning_rate:
            fail("schedule.end_learning_rate", f"in [0, optimizer.learning_rate ({learning_rate})]",
                 self.end_learning_rate)


@dataclasses.dataclass(frozen=True)
class LossSpec(Section):
    KEY: ClassVar[str] = "loss"
    name: str = key("cross_entropy", LOSSES)
    label_smoothing: float = key(0.0, number(0, 1, high_open=True, hint="use 0 to turn smoothing off"))
    l2: float = key(0.0, number(0))  # weight of the L2 penalty on the kernels

    def check(self) -> None:
        if self.label_smoothing > 0 and not LOSSES[self.name].label_smoothing:
            supported = ", ".join(repr(n) for n, e in LOSSES.items() if e.label_smoothing)
            raise JaxcnnError(f"loss.label_smoothing is only supported with loss.name {supported}, got "
                              f"{self.label_smoothing} with {self.name!r}; set loss.label_smoothing to 0")


@dataclasses.dataclass(frozen=True)
class EarlyStoppingSpec(Section):
    KEY: ClassVar[str] = "early_stopping"
    enabled: bool = key(False, boolean)
    monitor: str = key("val_loss", choice(MONITORS, "monitor"))
    patience: int = key(3, positive_int)
    min_delta: float = key(0.0, number(0))
    restore_best: bool = key(True, boolean)


@dataclasses.dataclass(frozen=True)
class CheckpointSpec(Section):
    KEY: ClassVar[str] = "checkpoint"
    enabled: bool = key(True, boolean)
    every_steps: int = key(0, integer(0, "an integer >= 0 (0: only at epoch ends)"))
    on_epoch_end: bool = key(True, boolean)
    keep: int = key(2, positive_int)
    keep_best: int = key(1, positive_int)  # >= 1: the best step holds restore_best's and `eval --step best`'s params
    async_save: bool = key(True, boolean)


@dataclasses.dataclass(frozen=True)
class AugmentSpec(Section):
    """`crop_padding`: pad by this many pixels and crop back at a random offset (0: off);
    `flip`: random horizontal flip; `cutout`: zero a random square of this side (0: off);
    `mixup`, `cutmix`: the alpha of the Beta(alpha, alpha) mixing weight (0: off; both on: one of
    the two per step), the loss taking the mixed (soft) targets (jaxcnn/core/augment.py)."""

    KEY: ClassVar[str] = "augment"
    crop_padding: int = key(0, integer(0, "a non-negative integer (0 turns it off)"))
    flip: bool = key(False, boolean)
    cutout: int = key(0, integer(0, "a non-negative integer (0 turns it off)"))
    mixup: float = key(0.0, number(0, note=" (the Beta alpha, e.g. 0.2; 0 turns it off)"))
    cutmix: float = key(0.0, number(0, note=" (the Beta alpha, e.g. 1.0; 0 turns it off)"))
    # (min, max) area share of a random crop resized back to the image size, in the Grain workers
    # on the CPU (dataset.input=grain; jaxcnn/data/records.py); () turns it off.
    random_resized_crop: tuple = key((), area_shares)

    @property
    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.flip or self.cutout > 0


TTA = ("none", "flip")


@dataclasses.dataclass(frozen=True)
class EvalSpec(Section):
    """`tta`: test-time augmentation in evaluation, test and prediction: "flip" averages the logits
    of each image and its mirror image; "none" (the default) evaluates the image alone."""

    KEY: ClassVar[str] = "eval"
    tta: str = key("none", choice(TTA, "test-time augmentation"))


@dataclasses.dataclass(frozen=True)
class EmaSpec(Section):
    """`decay`: the moving average of the weights that evaluation, test and prediction use
    (jaxcnn/core/ema.py), warmed up as min(decay, (1 + t) / (10 + t)); 0 turns it off."""

    KEY: ClassVar[str] = "ema"
    decay: float = key(0.0, number(0, 1, high_open=True, hint="e.g. 0.999; 0 turns it off"))


@dataclasses.dataclass(frozen=True)
class LossScaleSpec(Section):
    """Dynamic loss scaling of a `dtype="float16"` run (jaxcnn/core/loss_scale.py); other dtypes
    ignore it. The loss is multiplied by the scale before the gradient and the gradients divided by
    it; a step whose gradients overflow is skipped and halves the scale (not below `minimum`);
    `growth_interval` finite steps in a row double it."""

    KEY: ClassVar[str] = "loss_scale"
    initial: float = key(2.0**15, number(0, low_open=True, hint="e.g. 32768 (2**15)"))
    growth_interval: int = key(2000, positive_int)
    minimum: float = key(1.0, number(0, low_open=True))

    def check(self) -> None:
        if self.minimum > self.initial:
            fail("loss_scale.minimum", f"<= loss_scale.initial ({self.initial})", self.minimum)


def name_patterns(key: str, value: Any) -> tuple[str, ...]:
    """A tuple of non-empty name patterns (`config.freeze`)."""
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) and v for v in value):
        fail(key, "a tuple of layer name patterns such as (\"Conv_0\", \"Dense_*\")", value)
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class LoggingSpec(Section):
    """Where records go besides `metrics.jsonl` (jaxcnn/files/trackers.py): TensorBoard event files,
    `metrics.csv`, an MLflow run, a W&B run; `experiment` names the MLflow experiment / W&B project."""

    KEY: ClassVar[str] = "logging"
    tensorboard: bool = key(False, boolean)
    csv: bool = key(False, boolean)
    mlflow: bool = key(False, boolean)  # at $MLFLOW_TRACKING_URI; pip install 'jaxcnn[mlflow]'
    wandb: bool = key(False, boolean)  # $WANDB_MODE=offline for no network; pip install 'jaxcnn[wandb]'
    experiment: str = key("jaxcnn", string)


@dataclasses.dataclass(frozen=True)
class DatasetSpec(Section):
    """The keys every dataset has; the dataset's own options (checked by its loader) are `options`."""

    KEY: ClassVar[str] = "dataset"
    name: str = key("digits", string)  # a registered dataset or tfds:NAME (checked by jaxcnn.data)
    val_fraction: float = key(0.1, number(0, 1, high_open=True))
    data_dir: str = key("", string)
    mean: Any = key(0.0, stat)
    std: Any = key(1.0, functools.partial(stat, positive=True))
    per_channel_stats: bool = key(False, boolean)
    download: bool = key(False, boolean)
    input: str = key("auto", input_mode)
    device_budget_mb: float = key(4096.0, number(0, low_open=True, expected="a positive number of MiB"))
    workers: int = key(0, integer(0, "a non-negative number of worker processes (0: decode in the main process)"))
    options: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def parse(cls, values: Any) -> DatasetSpec:
        if isinstance(values, cls):
            return values
        values = plain(values, cls.KEY)
        common = {k: values.pop(k) for k in DATASET_COMMON_KEYS if k in values}
        return cls(**common, options=values)

    def to_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in DATASET_COMMON_KEYS}, **self.options}


DATASET_COMMON_KEYS = tuple(DatasetSpec.defaults())  # the dataset keys that are not the loader's own options


@dataclasses.dataclass(frozen=True)
class ModelSpec(Section):
    """`model.name` (a registered model or an import path) and its options (checked by building it)."""

    KEY: ClassVar[str] = "model"
    name: str = key("cnn", string)
    options: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def parse(cls, values: Any) -> ModelSpec:
        if isinstance(values, cls):
            return values
        values = plain(values, cls.KEY)
        return cls(values.pop("name", "cnn"), values)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}


def model_options(config: Any) -> dict[str, Any]:
    """The model constructor's keyword arguments: `config.model` without its name. Here, beside
    `ModelSpec`, so that `jaxcnn.core.build` reads it without importing `jaxcnn.config` (which builds)."""
    return {k: v for k, v in config.model.items() if k != "name"}


def dataset_options(config: Any) -> dict[str, Any]:
    """The dataset loader's own options: `config.dataset` without the common keys (`DatasetSpec`)."""
    return {k: v for k, v in config.dataset.items() if k not in DATASET_COMMON_KEYS}


def not_sweepable(key: str) -> str:
    """The one-line refusal of sweep key `key` (without the `sweep.` prefix)."""
    return (f"sweep.{key} cannot be swept in one program (only values that are arrays inside the "
            f"training step can); sweepable: {', '.join(SWEEPABLE)}")


def _sweep_values(name: str, value: Any) -> Any:
    """`sweep.optimizer` or `sweep.loss`: a mapping of sweepable keys to None or values (their
    values are checked with the seeds, `members.members_of`)."""
    if value is None:
        return None
    part = name.split(".", 1)[1]
    values = plain(value, name)
    for name_in_part in values:
        if f"{part}.{name_in_part}" not in SWEEPABLE:
            raise JaxcnnError(not_sweepable(f"{part}.{name_in_part}"))
    return values


@dataclasses.dataclass(frozen=True)
class SweepSpec(Section):
    """`sweep.SECTION.KEY=(v0, v1, ...)`: a group of members per value, trained in one program with
    the seeds (jaxcnn/core/members.py); None: not swept. Only the `SWEEPABLE` keys."""

    KEY: ClassVar[str] = "sweep"
    optimizer: Any = key(None, _sweep_values)
    loss: Any = key(None, _sweep_values)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        sections: dict[str, dict[str, Any]] = {}
        for swept in SWEEPABLE:
            section_name, name = swept.split(".")
            sections.setdefault(section_name, {})[name] = None
        return sections

    @classmethod
    def parse(cls, values: Any) -> Any:
        if isinstance(values, cls):
            return values
        values = {**cls.defaults(), **plain(values, cls.KEY)}
        for name in values:
            if name not in ("optimizer", "loss"):
                raise JaxcnnError(not_sweepable(name))
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class RunSpec(Section):
    """The whole config: the top-level keys, then the sections."""

    seed: int = key(0, non_negative_int)
    seeds: Any = key(None)  # N or (s0, s1, ...): one member per seed in one program (members.seeds_of checks it)
    batch_size: int = key(128, positive_int)
    eval_batch_size: int = key(1000, positive_int)
    num_epochs: int = key(10, positive_int)
    log_every_steps: int = key(100, positive_int)
    parallel: str = key("auto", choice(PARALLEL, "parallel strategy"))  # auto: sharded on >1 device (executor.py)
    grad_accum_steps: int = key(1, positive_int)  # > 1: average the gradients of that many batches per update
    # > 1: up to that many training steps per compiled call; 0: chosen by measurement (jaxcnn.core.autotune)
    steps_per_call: int = key(0, integer(0, "a whole number >= 0 (0: chosen by measurement)"))
    max_steps: int = key(0, integer(0, "a whole number >= 0 (0: off)"))  # > 0: stop after that many steps
    limit_eval_batches: int = key(0, integer(0, "a whole number >= 0 (0: off)"))  # > 0: at most that many eval batches
    dtype: str = key("float32", DTYPES)  # computation dtype: float32, bfloat16 or float16 (params stay float32)
    # The persistent compilation cache: "auto" = $XDG_CACHE_HOME/jaxcnn or ~/.cache/jaxcnn (off where
    # that cannot be written), a folder, or '' = off (jaxcnn/runtime/compilation.py).
    compilation_cache_dir: str = key("auto", string)
    on_nonfinite: str = key("stop", choice(("stop", "continue"), "action"))  # a non-finite loss: stop (exit 3) or go on
    deterministic: bool = key(False, boolean)  # GPU: XLA's deterministic ops (jaxcnn/runtime/determinism.py); recorded always
    profile_steps: tuple = key(())  # (FIRST, LAST): a jax.profiler trace of those steps (run_options, profiling)
    init_from: str = key("", string)  # WORKDIR[:STEP]: start from that run's weights (jaxcnn/core/finetune.py)
    freeze: tuple = key((), name_patterns)  # parameter name patterns kept unchanged, BatchNorm statistics too
    dataset: DatasetSpec = section(DatasetSpec)
    augment: AugmentSpec = section(AugmentSpec)
    eval: EvalSpec = section(EvalSpec)
    model: ModelSpec = section(ModelSpec)
    loss: LossSpec = section(LossSpec)
    optimizer: OptimizerSpec = section(OptimizerSpec)
    schedule: ScheduleSpec = section(ScheduleSpec)
    early_stopping: EarlyStoppingSpec = section(EarlyStoppingSpec)
    checkpoint: CheckpointSpec = section(CheckpointSpec)
    ema: EmaSpec = section(EmaSpec)
    loss_scale: LossScaleSpec = section(LossScaleSpec)
    logging: LoggingSpec = section(LoggingSpec)
    sweep: SweepSpec = section(SweepSpec)

    def check(self) -> None:
        self.schedule.check_learning_rate(self.optimizer.learning_rate)
        if self.early_stopping.enabled and self.dataset.val_fraction == 0:
            raise JaxcnnError("early_stopping.enabled needs a validation split; set dataset.val_fraction > 0")


def sections() -> dict[str, type[Section]]:
    """The sections of `RunSpec` by key (`dataset`, `model`, ..., `logging`)."""
    return {f.name: f.default_factory for f in dataclasses.fields(RunSpec) if f.default is dataclasses.MISSING}


def parse(config: Any) -> RunSpec:
    """The whole config (a plain dict or a `ConfigDict`), checked, as typed sections."""
    values = plain(config, "config")
    finite(values)
    return RunSpec.parse(values)

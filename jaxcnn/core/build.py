"""The one place a config becomes a model, an optimizer, a loss and a `TrainState`.

Training (`loop`), saved runs (`saved`: eval, predict), the benchmark and config validation all
build through here, so they cannot disagree on what a config means.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import optax

from jaxcnn import models
from jaxcnn.core import finetune, losses, optim, precision
from jaxcnn.core.augment import MIX_SALT, augment_config, make_augment, make_mix, step_key, with_mirror
from jaxcnn.data.device import normalize
from jaxcnn.data.normalization import Stat
from jaxcnn.core.executor import Prepare
from jaxcnn.core.members import sweep_of
from jaxcnn.spec import model_options
from jaxcnn.core.state import TrainState, create_train_state


@dataclasses.dataclass(frozen=True)
class Parts:
    """What a config builds, before any array exists."""

    model: nn.Module
    tx: optax.GradientTransformation
    loss_fn: Callable

    def init_state(self, config: ml_collections.ConfigDict, input_shape: tuple[int, ...],
                   seed: Any = None) -> TrainState:
        """The initial state (parameters from `config.seed`, or `seed`: a member's, possibly traced)
        for inputs of `input_shape` (H, W, C)."""
        return create_train_state(self.model, self.tx, self.loss_fn, input_shape,
                                  config.seed if seed is None else seed, config.loss.l2,
                                  ema_decay=config.ema.decay, frozen=tuple(config.freeze),
                                  scaling=precision.scaling_of(config))

    def abstract_state(self, config: ml_collections.ConfigDict, input_shape: tuple[int, ...]) -> TrainState:
        """The state's shapes and dtypes only (nothing computed), e.g. to restore a checkpoint into."""
        return jax.eval_shape(lambda: self.init_state(config, input_shape))


def build(config: ml_collections.ConfigDict, num_classes: int, steps_per_epoch: int,
          bn_axis_name: str | None = None, conv_plan: tuple = ()) -> Parts:
    """Model, optimizer (its schedule over `steps_per_epoch` × `num_epochs`) and loss of `config`.
    `bn_axis_name`: BatchNorm's cross-device axis, under pmap (`Executor.bn_axis_name`); `conv_plan`:
    the convolutions measured for this machine (`jaxcnn.core.autotune`)."""
    model = model_of(config, num_classes, bn_axis_name, conv_plan)
    swept = sweep_of(config)  # swept values become arrays inside the step (jaxcnn.core.members)
    tx = optim.create_optimizer(config.optimizer, config.schedule, steps_per_epoch, config.num_epochs,
                                config.grad_accum_steps, sweep_weight_decay="optimizer.weight_decay" in swept)
    tx = finetune.freezing(tx, tuple(config.freeze))  # config.freeze: zero updates for those parameters
    loss_fn = losses.make_classification_loss(config.loss.name, num_classes, config.loss.label_smoothing,
                                              sweep_label_smoothing="loss.label_smoothing" in swept)
    return Parts(model, tx, loss_fn)


def model_of(config: ml_collections.ConfigDict, num_classes: int, bn_axis_name: str | None = None,
             conv_plan: tuple = ()) -> nn.Module:
    """The model of `config` (with convolution plan `conv_plan`)."""
    return models.create_model(config.model.name, num_classes, dtype=precision.compute_dtype(config.dtype),
                               bn_axis_name=bn_axis_name, conv_plan=conv_plan, **model_options(config))


def make_prepare(config: ml_collections.ConfigDict, train: bool) -> Prepare:
    """The run's `prepare`: normalised with `dataset.mean`/`std`; for training also augmented and
    mixed (`config.augment`), for evaluation with the mirror images under `eval.tta="flip"`."""
    if not train:
        flip = tta_of(config) == "flip"
        return prepare_fn(config.dataset.mean, config.dataset.std, extend=with_mirror if flip else None)
    augment = augment_config(config.augment)
    return prepare_fn(config.dataset.mean, config.dataset.std, make_augment(augment), make_mix(augment))


def tta_of(config: ml_collections.ConfigDict) -> str:
    """`config.eval.tta`; "none" for the config of a run written before the key existed."""
    return config.get("eval", {}).get("tta", "none")


def prepare_fn(mean: Stat, std: Stat, augment_fn: Callable | None = None, mix_fn: Callable | None = None,
               extend: Callable[[dict], dict] | None = None) -> Prepare:
    """`prepare(batch, state)`: a uint8 batch normalised, augmented with the step's own key
    (`augment.step_key`) when `augment_fn` is given, then mixed (`augment.make_mix`) when `mix_fn`
    is, then passed through `extend` (evaluation's test-time views)."""

    def prepare(batch: dict, state: TrainState) -> dict:
        images = normalize(batch["image"], mean, std)
        if augment_fn is not None:
            images = augment_fn(images, step_key(state.rng, state.step))
        batch = {**batch, "image": images}
        if mix_fn is not None:
            batch = mix_fn(batch, jax.random.fold_in(step_key(state.rng, state.step), MIX_SALT))
        return extend(batch) if extend is not None else batch

    return prepare

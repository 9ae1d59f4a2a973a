"""A trained model from its workdir's checkpoints: `jaxcnn eval` and `jaxcnn predict`.

The model, optimizer and input pipeline are rebuilt from the config stored in the checkpoint, the
arrays restored into that state, and evaluation runs through the loop's own `evaluate`, so the
numbers are the training run's numbers.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcnn import checkpoint, data, losses, models, optim
from jaxcnn.config import config_from_json, dataset_options, model_options
from jaxcnn.data.device import normalize, put_on_device
from jaxcnn.data.images import load_image
from jaxcnn.errors import JaxcnnError
from jaxcnn.loop import evaluate, make_eval_fn
from jaxcnn.state import TrainState, create_train_state
from jaxcnn.steps import zero_train_totals


@dataclasses.dataclass
class SavedModel:
    """The state of one checkpoint step with the config and dataset facts of its run."""

    workdir: pathlib.Path
    step: int
    config: ml_collections.ConfigDict
    meta: dict[str, Any]
    state: TrainState

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["input_shape"])

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.meta["class_names"])


def _choose_step(manager: Any, which: str | None, meta: dict[str, Any], config: ml_collections.ConfigDict,
                 directory: pathlib.Path) -> int:
    """`which`: "best", "latest", a step number, or None for the step whose parameters the run's
    final test used (the best with early_stopping.restore_best, else the latest)."""
    steps = manager.all_steps()
    latest = max(steps)
    if which is None:
        restores_best = config.early_stopping.enabled and config.early_stopping.restore_best
        return meta["best_step"] if restores_best and meta["best_step"] is not None else latest
    if which == "latest":
        return latest
    if which == "best":
        if meta["best_step"] is None or meta["best_step"] not in steps:
            raise JaxcnnError(f"{directory} has no best checkpoint (the run had no validation split or no "
                              "finished epoch); use --step latest")
        return meta["best_step"]
    try:
        step = int(which)
    except ValueError:
        raise JaxcnnError(f"--step must be best, latest or a step number, got {which!r}") from None
    if step not in steps:
        raise JaxcnnError(f"{directory} has no checkpoint for step {step}; it has steps "
                          f"{', '.join(map(str, sorted(steps)))}")
    return step


def _read(reader: Any, manager: Any, step: int, directory: pathlib.Path, *args: Any) -> Any:
    try:
        return reader(manager, step, *args)
    except Exception as e:  # Orbax and tensorstore raise many types for damaged files
        raise JaxcnnError(f"checkpoint step {step} in {directory} cannot be read ({type(e).__name__}: "
                          f"{str(e)[:200]}); pick another with --step") from e


def load_saved_model(workdir: str | pathlib.Path, step: str | None = None) -> SavedModel:
    """The model saved in `workdir/checkpoints` at `step` (see `_choose_step`); reads only."""
    workdir = pathlib.Path(workdir)
    directory = workdir / checkpoint.CHECKPOINT_DIR
    if not directory.is_dir():
        raise JaxcnnError(f"workdir '{workdir}' has no {checkpoint.CHECKPOINT_DIR}/ folder; pass the "
                          "--workdir of a run trained with checkpoint.enabled=true")
    manager = checkpoint.open_manager(directory, read_only=True)
    try:
        if not manager.all_steps():
            raise JaxcnnError(f"{directory} holds no committed checkpoint; train longer or resume the run first")
        latest_meta = _read(checkpoint.read_meta, manager, manager.latest_step(), directory)
        config = config_from_json(json.dumps(latest_meta["config"]))
        chosen = _choose_step(manager, step, latest_meta, config, directory)
        meta = _read(checkpoint.read_meta, manager, chosen, directory)
        config = config_from_json(json.dumps(meta["config"]))
        num_classes, input_shape = meta["num_classes"], tuple(meta["input_shape"])
        model = models.create_model(config.model.name, num_classes, **model_options(config))
        tx = optim.create_optimizer(config.optimizer, config.schedule, meta["steps_per_epoch"], config.num_epochs)
        loss_fn = losses.make_classification_loss(config.loss.name, num_classes, config.loss.label_smoothing)
        # Shapes only (no initialisation to compute), placed on this process's first device.
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        like = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
            jax.eval_shape(lambda: {"train_state": create_train_state(model, tx, loss_fn, input_shape, config.seed,
                                                                      config.loss.l2),
                                    "totals": zero_train_totals()}))
        restored = _read(checkpoint.read_arrays, manager, chosen, directory, like)
    finally:
        manager.close()
    return SavedModel(workdir, chosen, config, meta, restored["train_state"])


def evaluate_saved(saved: SavedModel, split: str = "test", data_dir: str | None = None) -> dict[str, Any]:
    """Loss and accuracy of the saved model on its dataset's `split` ("test" or "val"), keyed as in
    `summary.json` (`test_accuracy`, `test_loss`, `test_examples`, ...)."""
    if split not in ("test", "val"):
        raise JaxcnnError(f"--split must be test or val, got {split!r}")
    config = saved.config
    dataset = data.load_dataset(config.dataset.name, data_dir=data_dir or config.dataset.data_dir or None,
                                val_fraction=config.dataset.val_fraction, seed=config.seed,
                                **dataset_options(config))
    examples = dataset.test if split == "test" else dataset.val
    if len(examples) == 0:
        raise JaxcnnError(f"the run has no {split} split (dataset.val_fraction is 0); use --split test")
    result = evaluate(make_eval_fn(config.dataset.mean, config.dataset.std), saved.state,
                      put_on_device(examples), config.eval_batch_size)
    return {f"{split}_accuracy": result["accuracy"], f"{split}_loss": result["loss"],
            f"{split}_examples": result["count"], "step": saved.step, "model": config.model.name,
            "dataset": dataset.name, "seed": config.seed}


# ---------------------------------------------------------------------------- predict


def predict(saved: SavedModel, files: Sequence[str | pathlib.Path], top: int = 3) -> list[dict[str, Any]]:
    """For each file, its `top` classes by softmax probability: [{"file", "top": [{"class",
    "name", "probability"}, ...]}, ...]."""
    if not files:
        raise JaxcnnError("predict needs at least one image file")
    config = saved.config
    pixels = np.stack([load_image(f, saved.input_shape) for f in files])
    images = normalize(jnp.asarray(pixels), config.dataset.mean, config.dataset.std)
    logits = jax.jit(lambda s, x: s.apply_fn(s.variables(), x, train=False))(saved.state, images)
    probabilities = np.asarray(jax.nn.softmax(logits.astype(jnp.float32), axis=-1))
    top = max(1, min(top, probabilities.shape[-1]))
    results = []
    for file, row in zip(files, probabilities):
        best = np.argsort(-row, kind="stable")[:top]
        results.append({"file": str(file), "top": [
            {"class": int(c), "name": saved.class_names[c], "probability": float(row[c])} for c in best]})
    return results

"""A trained model from its workdir's checkpoints: `jaxcnn eval` and `jaxcnn predict`.

The model, optimizer and input pipeline are rebuilt from the config stored in the checkpoint, the
arrays restored into that state, and evaluation runs through the loop's own `evaluate`, so the
numbers are the training run's numbers.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcnn import checkpoint, data, losses, models, optim, precision
from jaxcnn.config import config_from_json, dataset_options, model_options
from jaxcnn.data.device import normalize, put_on_device
from jaxcnn.errors import JaxcnnError
from jaxcnn.loop import evaluate, make_eval_fn
from jaxcnn.state import TrainState, create_train_state
from jaxcnn.steps import zero_train_totals

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


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
        dtype = precision.compute_dtype(config.get("dtype", "float32"))  # the run's: eval equals its test
        model = models.create_model(config.model.name, num_classes, dtype=dtype, **model_options(config))
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


def _to_pixels(array: np.ndarray, path: pathlib.Path, input_shape: tuple[int, int, int]) -> np.ndarray:
    """A (H, W) or (H, W, C) array of pixel values 0..255 -> uint8 of `input_shape`, resized
    bilinearly and converted to grey or RGB as the model expects."""
    from PIL import Image

    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise JaxcnnError(f"{path}: expected an image of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                          f"got {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or array.min() < 0 or array.max() > 255:
        raise JaxcnnError(f"{path}: expected pixel values 0..255, got {array.dtype} in "
                          f"[{array.min()}, {array.max()}]; scale the array to 0..255")
    image = Image.fromarray(np.rint(array).astype(np.uint8))
    height, width, channels = input_shape
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    pixels = np.asarray(image, np.uint8)
    return pixels[..., None] if channels == 1 else pixels


def load_image(path: str | pathlib.Path, input_shape: tuple[int, int, int]) -> np.ndarray:
    """A PNG/JPEG (through Pillow) or `.npy` pixel array as uint8 (H, W, C) of `input_shape`."""
    from PIL import Image, UnidentifiedImageError

    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix in IMAGE_SUFFIXES:
            with Image.open(path) as image:
                if "A" in image.getbands() or image.mode == "P":
                    mode = "RGBA"
                else:
                    mode = "L" if len(image.getbands()) == 1 else "RGB"
                array = np.asarray(image.convert(mode))
        else:
            raise JaxcnnError(f"{path}: unsupported file type '{suffix}'; pass .png, .jpg, .jpeg or .npy files")
    except (OSError, ValueError, UnidentifiedImageError) as e:
        raise JaxcnnError(f"{path}: cannot be read as an image: {e}") from e
    if array.ndim == 3 and array.shape[-1] == 4:  # transparency over a black background, as MNIST's
        array = array[..., :3] * (array[..., 3:] / 255.0)
    return _to_pixels(array, path, input_shape)


def classifier(saved: SavedModel) -> Callable[[Any, jax.Array], jax.Array]:
    """`classify(variables, pixels)`: uint8 images (B, H, W, C) of the run's input shape -> float32
    (B, num_classes) class probabilities. Normalised as in training, the model in evaluation mode
    (BatchNorm's running averages, no dropout), the output activation of the run's loss
    (`losses.predict_probabilities`). `jaxcnn predict` and `jaxcnn export` both compute this."""
    apply_fn, mean, std = saved.state.apply_fn, saved.config.dataset.mean, saved.config.dataset.std
    loss_name = saved.config.loss.name

    def classify(variables: Any, pixels: jax.Array) -> jax.Array:
        logits = apply_fn(variables, normalize(pixels, mean, std), train=False)
        return losses.predict_probabilities(loss_name, logits.astype(jnp.float32))

    return classify


def predict(saved: SavedModel, files: Sequence[str | pathlib.Path], top: int = 3) -> list[dict[str, Any]]:
    """For each file, its `top` classes by probability (softmax, or sigmoid for a run trained with
    binary_cross_entropy): [{"file", "top": [{"class", "name", "probability"}, ...]}, ...]."""
    if not files:
        raise JaxcnnError("predict needs at least one image file")
    pixels = np.stack([load_image(f, saved.input_shape) for f in files])
    probabilities = jax.jit(classifier(saved))(saved.state.variables(), jnp.asarray(pixels))
    return top_classes(files, np.asarray(probabilities), saved.class_names, top)


def top_classes(files: Sequence[str | pathlib.Path], probabilities: np.ndarray, class_names: Sequence[str],
                top: int) -> list[dict[str, Any]]:
    """Each file's `top` classes by probability (ties by class index), as `predict` returns them."""
    top = max(1, min(top, probabilities.shape[-1]))
    results = []
    for file, row in zip(files, probabilities):
        best = np.argsort(-row, kind="stable")[:top]
        results.append({"file": str(file), "top": [
            {"class": int(c), "name": class_names[c], "probability": float(row[c])} for c in best]})
    return results

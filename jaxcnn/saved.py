"""A trained model from its workdir's checkpoints: `jaxcnn eval` and `jaxcnn predict`.

The model, optimizer and input pipeline are rebuilt from the config stored in the checkpoint, the
arrays restored into that state, and evaluation runs through the loop's own `evaluate`, so the
numbers are the training run's numbers.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import pathlib
import warnings
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcnn import checkpoint, data, losses
from jaxcnn.build import build, make_prepare
from jaxcnn.config import config_from_json, dataset_options
from jaxcnn.data.device import normalize
from jaxcnn.data.feed import DeviceFeed
from jaxcnn.errors import JaxcnnError
from jaxcnn.evaluation import evaluate
from jaxcnn.executor import Executor
from jaxcnn.metrics import TOP_K
from jaxcnn.state import TrainState
from jaxcnn.steps import zero_train_totals

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# predict refuses larger images (width x height), from the header, before decoding them.
MAX_IMAGE_PIXELS = 64_000_000


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
        if latest_meta.get("members"):
            raise JaxcnnError(f"workdir '{workdir}' trained {len(latest_meta['members'])} members in one program "
                              "(seeds or a sweep); eval, predict and export read a single run: each member's test "
                              "numbers are in its summary.json (members)")
        config = config_from_json(json.dumps(latest_meta["config"]))
        chosen = _choose_step(manager, step, latest_meta, config, directory)
        meta = _read(checkpoint.read_meta, manager, chosen, directory)
        config = config_from_json(json.dumps(meta["config"]))
        parts = build(config, meta["num_classes"], meta["steps_per_epoch"])
        # Shapes only (no initialisation to compute), placed on this process's first device.
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                            {"train_state": parts.abstract_state(config, tuple(meta["input_shape"])),
                             "totals": jax.eval_shape(zero_train_totals)})
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
    executor = Executor("none")
    calls = executor.compile(make_prepare(config, train=False), make_prepare(config, train=False),
                             config.loss.name, TOP_K)
    result = evaluate(calls, executor.put(saved.state), DeviceFeed(examples, executor), config.eval_batch_size)
    return {f"{split}_accuracy": result["accuracy"], f"{split}_loss": result["loss"],
            f"{split}_examples": result["count"], "step": saved.step, "model": config.model.name,
            "dataset": dataset.name, "seed": config.seed}


# ---------------------------------------------------------------------------- predict


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())[:200]


def _check_pixels(array: np.ndarray, path: pathlib.Path) -> np.ndarray:
    """`array` as float32 (H, W) or (H, W, 3|4) pixel values, after checking its shape and size
    (before reading any value, which for a memory-mapped .npy reads the file) and its values."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise JaxcnnError(f"{path}: expected an image of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                          f"got {array.shape}")
    if array.size == 0:
        raise JaxcnnError(f"{path}: the array is empty (shape {array.shape}); expected an image")
    if array.shape[0] * array.shape[1] > MAX_IMAGE_PIXELS:
        raise JaxcnnError(f"{path}: {array.shape[1]}x{array.shape[0]} pixels is over predict's limit of "
                          f"{MAX_IMAGE_PIXELS:,} pixels; resize it first")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise JaxcnnError(f"{path}: expected integer or float pixel values 0..255, got dtype {array.dtype}")
    array = np.asarray(array, np.float32)  # exact for 0..255
    finite = np.isfinite(array)
    if not finite.all():
        raise JaxcnnError(f"{path}: {array.size - int(finite.sum())} of {array.size} values are NaN or "
                          "infinite; expected pixel values 0..255")
    if array.min() < 0 or array.max() > 255:
        raise JaxcnnError(f"{path}: expected pixel values 0..255, got values in "
                          f"[{array.min():g}, {array.max():g}]; scale the array to 0..255")
    return array


def _read_npy(path: pathlib.Path) -> np.ndarray:
    """The array of a .npy file, memory-mapped: its size is checked before its values are read."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # NumPy raises ValueError, OSError, EOFError, ... for a damaged or pickled file
        if "pickle" in str(e) or "Python objects" in str(e):
            raise JaxcnnError(f"{path}: holds pickled Python objects, which jaxcnn never loads; save a numeric "
                              "array with numpy.save(path, uint8_array)") from e
        raise JaxcnnError(f"{path}: cannot be read as a .npy array of numbers ({_one_line(e)}); "
                          "save one with numpy.save(path, uint8_array)") from e
    if not isinstance(array, np.ndarray):  # an .npz archive under a .npy name
        array.close()
        raise JaxcnnError(f"{path}: is an .npz archive, expected one array saved with numpy.save")
    return array


def _read_image(path: pathlib.Path) -> np.ndarray:
    """A PNG/JPEG as an (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA uint8 array; an image over
    `MAX_IMAGE_PIXELS` is refused from its header, before it is decoded."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # jaxcnn's own, lower limit applies
        try:
            with Image.open(path, formats=("PNG", "JPEG")) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise JaxcnnError(f"{path}: {width}x{height} pixels is over predict's limit of "
                                      f"{MAX_IMAGE_PIXELS:,} pixels; resize it first")
                if "A" in image.getbands() or image.mode == "P":
                    mode = "RGBA"
                else:
                    mode = "L" if len(image.getbands()) == 1 else "RGB"
                return np.asarray(image.convert(mode))
        except Image.DecompressionBombError as e:
            raise JaxcnnError(f"{path}: the image is over predict's limit of {MAX_IMAGE_PIXELS:,} pixels; "
                              "resize it first") from e
        except JaxcnnError:
            raise
        except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... for damaged files
            raise JaxcnnError(f"{path}: cannot be read as an image ({_one_line(e)})") from e


def _to_pixels(array: np.ndarray, input_shape: tuple[int, int, int], invert: bool) -> np.ndarray:
    """Checked float pixel values (H, W) or (H, W, 3|4) -> uint8 of `input_shape`: inverted (255 - x)
    with `invert`, transparency composited on black, resized bilinearly, converted to grey or RGB."""
    from PIL import Image

    if array.ndim == 3 and array.shape[-1] == 4:
        colour, alpha = array[..., :3], array[..., 3:] / 255.0
    else:
        colour, alpha = array, 1.0
    if invert:
        colour = 255.0 - colour
    image = Image.fromarray(np.rint(colour * alpha).astype(np.uint8))
    height, width, channels = input_shape
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    pixels = np.asarray(image, np.uint8)
    return pixels[..., None] if channels == 1 else pixels


def load_image(path: str | pathlib.Path, input_shape: tuple[int, int, int], invert: bool = False) -> np.ndarray:
    """A PNG/JPEG (through Pillow) or `.npy` pixel array as uint8 (H, W, C) of `input_shape`;
    with `invert`, dark-on-light pixels become light-on-dark (255 - x), as in MNIST."""
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix != ".npy" and suffix not in IMAGE_SUFFIXES:
        raise JaxcnnError(f"{path}: unsupported file type '{suffix}'; pass .png, .jpg, .jpeg or .npy files")
    if not path.is_file():
        raise JaxcnnError(f"{path}: {'is a folder' if path.is_dir() else 'no such file'}; expected an image file")
    array = _read_npy(path) if suffix == ".npy" else _read_image(path)
    return _to_pixels(_check_pixels(array, path), input_shape, invert)


def check_top(top: int) -> None:
    """`--top` (classes to print per file) must be at least 1; more than the classes prints them all."""
    if isinstance(top, bool) or not isinstance(top, numbers.Integral) or top < 1:
        raise JaxcnnError(f"--top must be a whole number of classes >= 1, got {top!r}")


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


def predict(saved: SavedModel, files: Sequence[str | pathlib.Path], top: int = 3,
            invert: bool = False) -> list[dict[str, Any]]:
    """For each file, its `top` classes (at most all of them) by probability (softmax, or sigmoid for
    a run trained with binary_cross_entropy): [{"file", "top": [{"class", "name", "probability"},
    ...]}, ...]. `invert`: see `load_image`."""
    check_top(top)
    if not files:
        raise JaxcnnError("predict needs at least one image file")
    pixels = np.stack([load_image(f, saved.input_shape, invert) for f in files])
    probabilities = jax.jit(classifier(saved))(saved.state.variables(), jnp.asarray(pixels))
    return top_classes(files, np.asarray(probabilities), saved.class_names, top)


def top_classes(files: Sequence[str | pathlib.Path], probabilities: np.ndarray, class_names: Sequence[str],
                top: int) -> list[dict[str, Any]]:
    """Each file's `top` classes by probability (ties by class index), as `predict` returns them."""
    top = min(top, probabilities.shape[-1])
    results = []
    for file, row in zip(files, probabilities):
        best = np.argsort(-row, kind="stable")[:top]
        results.append({"file": str(file), "top": [
            {"class": int(c), "name": class_names[c], "probability": float(row[c])} for c in best]})
    return results

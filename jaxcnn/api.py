"""The Python API for notebooks and scripts: `train`, `load`, and `Model.predict` on arrays.

    import jaxcnn
    model = jaxcnn.train("digits_cnn", ["num_epochs=5"])          # or a ConfigDict, a dataset=...
    model.summary["test_accuracy"]
    probabilities = model.predict(images)                          # (N, H, W[, C]) uint8 or floats
    model.evaluate(images, labels)["accuracy"]                     # loss, accuracy, test metrics
    model = jaxcnn.train("digits_cnn", callbacks=[MyCallback()])   # jaxcnn.Callback subclasses
    model = jaxcnn.load(model.workdir)                             # the same model from its checkpoints

`predict` computes exactly what `jaxcnn predict` computes (`saved.classifier`): the run's
normalisation, the model in evaluation mode, the output activation of the run's loss; `evaluate`
what the run's test computes (`saved.evaluate_arrays`). With EMA on, both use the moving averages.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import tempfile
from typing import Any, Iterable

import jax
import ml_collections
import numpy as np

from jaxcnn.config import load_config
from jaxcnn.data import Dataset
from jaxcnn.data.arrays import as_images, as_labels
from jaxcnn.errors import JaxcnnError
from jaxcnn.commands.saved import SavedModel, classifier, evaluate_arrays, load_saved_model
from jaxcnn.training.callbacks import Callback, CallbackFailed  # noqa: F401 (jaxcnn.Callback, jaxcnn.CallbackFailed)
from jaxcnn.core.state import TrainState


@dataclasses.dataclass(frozen=True)
class Model:
    """A trained classifier: the run's `summary` (None when loaded from an unfinished run), its
    `state` (params, batch_stats, ...) and `config`, and `predict`."""

    saved: SavedModel
    summary: dict[str, Any] | None

    @property
    def state(self) -> TrainState:
        return self.saved.state

    @property
    def params(self) -> Any:
        return self.saved.state.params

    @property
    def config(self) -> ml_collections.ConfigDict:
        return self.saved.config

    @property
    def workdir(self) -> pathlib.Path:
        return self.saved.workdir

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.saved.class_names

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.saved.input_shape

    def _pixels(self, images: Any) -> np.ndarray:
        pixels = as_images(images, "images")
        if pixels.shape[1:] != self.input_shape:
            raise JaxcnnError(f"images: expected (N, {', '.join(map(str, self.input_shape))}) like the training "
                              f"data, got {tuple(np.shape(images))}; resize them first")
        return pixels

    def evaluate(self, images: Any, labels: Any, batch_size: int = 1000) -> dict[str, Any]:
        """{"loss", "accuracy", "count", "metrics"} of `images` (as for `predict`) with their class
        indices `labels` (N,): `metrics` as `summary.json`'s `test_metrics` (per class, confusion
        matrix, calibration, macro F1, top-5 accuracy with more than 5 classes)."""
        pixels = self._pixels(images)
        return evaluate_arrays(self.saved, pixels, as_labels(labels, "labels", len(pixels)), batch_size)

    def predict(self, images: Any, batch_size: int = 1000) -> np.ndarray:
        """Class probabilities (N, num_classes) of `images`: (N, H, W) or (N, H, W, C) at the run's
        input shape, uint8 0..255 or floats in [0, 1] or [0, 255] (like `Dataset.from_arrays`)."""
        pixels = self._pixels(images)
        classify = self.saved.jit(classifier(self.saved))
        variables = self.saved.state.variables()
        return np.concatenate([np.asarray(classify(variables, pixels[i:i + batch_size]))
                               for i in range(0, len(pixels), batch_size)])


def train(config: str | ml_collections.ConfigDict | None = None, overrides: Iterable[str] = (), *,
          workdir: str | pathlib.Path | None = None, dataset: Dataset | None = None, data_dir: str | None = None,
          quiet: bool = True, callbacks: Iterable[Callback] = ()) -> Model:
    """Trains like `jaxcnn train` and returns the model. `config`: a preset name, a config file, or a
    ConfigDict (default: the default preset); `overrides`: `KEY=VALUE` strings as after `--config.`;
    `workdir`: default a new temporary folder (its path is `model.workdir`); `dataset`: an
    already built dataset, e.g. `Dataset.from_arrays(x_train, y_train, x_test, y_test)`; `callbacks`:
    `jaxcnn.Callback`s (`jaxcnn.training.callbacks`)."""
    from jaxcnn.config import apply_overrides
    from jaxcnn.core import members
    from jaxcnn.training.loop import fit

    if isinstance(config, ml_collections.ConfigDict):
        config = ml_collections.ConfigDict(config.to_dict(), type_safe=False)
        config.lock()
        apply_overrides(config, overrides)  # checked once, as every run's config, by `fit`
    else:
        config = load_config(config, overrides)
    if members.is_multi(config):  # several states: `jaxcnn train` writes them, a Model holds one
        raise JaxcnnError("seeds and sweep train several models; jaxcnn.train returns one: use `jaxcnn train`")
    workdir = pathlib.Path(workdir) if workdir is not None else pathlib.Path(tempfile.mkdtemp(prefix="jaxcnn-"))
    trained = fit(config, workdir, data_dir=data_dir, quiet=quiet, dataset=dataset, callbacks=callbacks)
    state = jax.device_get(trained.state)  # plain arrays: the model works on any device from here
    meta = {"input_shape": trained.input_shape, "class_names": trained.class_names}
    return Model(SavedModel(trained.workdir, trained.summary["steps"], trained.config, meta, state), trained.summary)


def load(workdir: str | pathlib.Path, step: str | int | None = None) -> Model:
    """The model of a saved run: `step` "best", "latest", a step number, or None for the parameters
    the run's final test used (as `jaxcnn eval`)."""
    saved = load_saved_model(workdir, None if step is None else str(step))
    summary_file = pathlib.Path(workdir) / "summary.json"
    return Model(saved, json.loads(summary_file.read_text()) if summary_file.is_file() else None)

"""Datasets: the registry, `load_dataset`, and the `Dataset`/`Split` containers the trainer consumes.

Every dataset is uint8 images (N, H, W, C) with int32 labels; a validation split is carved from
the training split by the run seed, and the test split is never touched.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import pathlib
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from jaxcnn.data import synthetic
from jaxcnn.data.digits import load_digits
from jaxcnn.data.mnist import load_fashion_mnist, load_mnist
from jaxcnn.data.splits import Split, check_val_fraction, train_val_split
from jaxcnn.errors import JaxcnnError

__all__ = ["DATASETS", "DATA_DIR_ENV", "Dataset", "DatasetSource", "Split", "list_datasets",
           "load_dataset", "resolve_data_dir", "train_val_split"]

DATA_DIR_ENV = "JAXCNN_DATA_DIR"


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A loaded dataset: train/val/test splits plus what a model needs to know about its labels."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(self.train.images.shape[1:])


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """A registered dataset: `load(data_dir, seed, **options)` returns (train, test, class_names)."""

    load: Callable[..., tuple[Split, Split, tuple[str, ...]]]
    options: tuple[str, ...] = ()


def resolve_data_dir(data_dir: str | os.PathLike | None) -> pathlib.Path:
    """`data_dir` if given (non-empty), else `$JAXCNN_DATA_DIR`; the folder holding one subfolder per dataset."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV)
    if not chosen:
        raise JaxcnnError(
            f"data directory: none given; pass --data-dir DIR or set {DATA_DIR_ENV}=DIR, "
            "where DIR has one subfolder per dataset (e.g. DIR/mnist/ with the four IDX .gz files)")
    return pathlib.Path(chosen).expanduser()


DATASETS = MappingProxyType({
    "digits": DatasetSource(lambda data_dir, seed: load_digits()),
    "fashion_mnist": DatasetSource(lambda data_dir, seed: load_fashion_mnist(resolve_data_dir(data_dir))),
    "mnist": DatasetSource(lambda data_dir, seed: load_mnist(resolve_data_dir(data_dir))),
    "synthetic": DatasetSource(lambda data_dir, seed, **options: synthetic.load_synthetic(seed, **options),
                               options=synthetic.OPTIONS),
})


def list_datasets() -> tuple[str, ...]:
    """Names accepted by `load_dataset`, sorted."""
    return tuple(sorted(DATASETS))


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None, val_fraction: float = 0.1,
                 seed: int = 0, **options: Any) -> Dataset:
    """Load dataset `name` and carve `val_fraction` of its training split into a validation split.

    `seed` picks the validation examples (and draws the synthetic data); `options` are the
    dataset's own (only `synthetic` has any). Bad names, options or files raise `JaxcnnError`.
    """
    if name not in DATASETS:
        raise JaxcnnError(
            f"dataset.name: unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}; pick one of those")
    source = DATASETS[name]
    unknown = sorted(set(options) - set(source.options))
    if unknown:
        raise JaxcnnError(
            f"dataset.{unknown[0]}: unknown option for dataset {name!r}; "
            f"known options: {', '.join(source.options) or 'none'}; remove it or fix its spelling")
    check_val_fraction(val_fraction)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise JaxcnnError(f"seed: expected a non-negative integer, got {seed!r}; set e.g. seed=0")
    train, test, class_names = source.load(data_dir, seed, **options)
    train, val = train_val_split(train, val_fraction, seed)
    return Dataset(name, train, val, test, len(class_names), class_names)

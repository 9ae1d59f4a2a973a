"""Datasets: the registry, `load_dataset`, and the `Dataset`/`Split` containers the trainer consumes.

Every dataset is uint8 images (N, H, W, C) with int32 labels; a validation split is carved from
the training split by the run seed, and the test split is never touched.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import pathlib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from jaxcnn.data import cifar, digits, download, mnist, synthetic, tfds
from jaxcnn.data.cifar import load_cifar10, load_cifar100
from jaxcnn.data.digits import load_digits
from jaxcnn.data.mnist import load_fashion_mnist, load_mnist
from jaxcnn.data.splits import Split, check_val_fraction, train_val_split
from jaxcnn.errors import JaxcnnError

__all__ = ["DATASETS", "DATA_DIR_ENV", "Dataset", "DatasetSource", "Split", "check_dataset_name",
           "expected_input_shape", "list_datasets", "load_dataset", "reads_files", "resolve_data_dir",
           "train_val_split"]

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
    """A registered dataset: `load(data_dir, seed, **options)` returns (train, test, class_names);
    `fetch(data_dir)`, when the dataset can be downloaded, gets what is missing (`download=True`);
    `image_shape` is the (H, W, C) of its images when it is fixed (None: set by its options)."""

    load: Callable[..., tuple[Split, Split, tuple[str, ...]]]
    options: tuple[str, ...] = ()
    fetch: Callable[[str | os.PathLike | None], None] | None = None
    image_shape: tuple[int, int, int] | None = None
    reads_files: bool = True  # False: made in memory, the data directory plays no part


def resolve_data_dir(data_dir: str | os.PathLike | None) -> pathlib.Path:
    """`data_dir` if given (non-empty), else `$JAXCNN_DATA_DIR`; the folder holding one subfolder per dataset."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV)
    if not chosen:
        raise JaxcnnError(
            f"data directory: none given; pass --data-dir DIR or set {DATA_DIR_ENV}=DIR, "
            "where DIR has one subfolder per dataset (e.g. DIR/mnist/ with the four IDX .gz files)")
    return pathlib.Path(chosen).expanduser()


def _downloader(name: str) -> Callable[[str | os.PathLike | None], None]:
    return lambda data_dir: download.ensure_downloaded(name, resolve_data_dir(data_dir))


DATASETS = MappingProxyType({
    "cifar10": DatasetSource(lambda data_dir, seed: load_cifar10(resolve_data_dir(data_dir)),
                             fetch=_downloader("cifar10"), image_shape=cifar.IMAGE_SHAPE),
    "cifar100": DatasetSource(lambda data_dir, seed: load_cifar100(resolve_data_dir(data_dir)),
                              fetch=_downloader("cifar100"), image_shape=cifar.IMAGE_SHAPE),
    "digits": DatasetSource(lambda data_dir, seed: load_digits(), image_shape=digits.IMAGE_SHAPE, reads_files=False),
    "fashion_mnist": DatasetSource(lambda data_dir, seed: load_fashion_mnist(resolve_data_dir(data_dir)),
                                   fetch=_downloader("fashion_mnist"), image_shape=mnist.IMAGE_SHAPE),
    "mnist": DatasetSource(lambda data_dir, seed: load_mnist(resolve_data_dir(data_dir)),
                           fetch=_downloader("mnist"), image_shape=mnist.IMAGE_SHAPE),
    "synthetic": DatasetSource(lambda data_dir, seed, **options: synthetic.load_synthetic(seed, **options),
                               options=synthetic.OPTIONS, reads_files=False),
})


def list_datasets() -> tuple[str, ...]:
    """Names accepted by `load_dataset`, sorted; any `tfds:NAME` is accepted too."""
    return tuple(sorted(DATASETS))


def check_dataset_name(name: object) -> None:
    """Raise unless `name` is a registered dataset or `tfds:NAME`."""
    if isinstance(name, str) and (name in DATASETS or (name.startswith(tfds.PREFIX) and name != tfds.PREFIX)):
        return
    raise JaxcnnError(
        f"dataset.name: unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}, "
        f"or {tfds.PREFIX}NAME for a TensorFlow-Datasets dataset; pick one of those")


def expected_input_shape(section: Mapping[str, Any]) -> tuple[int, int, int] | None:
    """The (H, W, C) of the images the dataset of config section `section` (`config.dataset`) will
    have, known before loading it: fixed for the built-in datasets, `image_shape` for synthetic;
    None where only loading tells (`tfds:NAME`). Lets the model's shapes be checked before any data
    loads (`models.check_input_shape`)."""
    name = section["name"]
    check_dataset_name(name)
    if name == "synthetic":
        return synthetic.check_image_shape(section["image_shape"])
    return DATASETS[name].image_shape if name in DATASETS else None


def reads_files(name: str) -> bool:
    """Whether dataset `name` is read from the data directory (a run records that directory)."""
    return _source(name).reads_files


def _source(name: str) -> DatasetSource:
    if name.startswith(tfds.PREFIX):
        tfds_name = name[len(tfds.PREFIX):]
        return DatasetSource(
            lambda data_dir, seed, **options: tfds.load_tfds(tfds_name, resolve_data_dir(data_dir), **options),
            options=tfds.OPTIONS,
            fetch=lambda data_dir: tfds.prepare_tfds(tfds_name, resolve_data_dir(data_dir)))
    return DATASETS[name]


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None, val_fraction: float = 0.1,
                 seed: int = 0, download: bool = False, **options: Any) -> Dataset:
    """Load dataset `name` and carve `val_fraction` of its training split into a validation split.

    `seed` picks the validation examples (and draws the synthetic data); `options` are the
    dataset's own (`synthetic`'s generator options, `tfds:NAME`'s split names). `download` first
    fetches missing files of a dataset that has public mirrors (or prepares a TFDS dataset).
    Bad names, options or files raise `JaxcnnError`.
    """
    check_dataset_name(name)
    source = _source(name)
    unknown = sorted(set(options) - set(source.options))
    if unknown:
        raise JaxcnnError(
            f"dataset.{unknown[0]}: unknown option for dataset {name!r}; "
            f"known options: {', '.join(source.options) or 'none'}; remove it or fix its spelling")
    check_val_fraction(val_fraction)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise JaxcnnError(f"seed: expected a non-negative integer, got {seed!r}; set e.g. seed=0")
    if download and source.fetch is not None:
        source.fetch(data_dir)
    train, test, class_names = source.load(data_dir, seed, **options)
    train, val = train_val_split(train, val_fraction, seed)
    return Dataset(name, train, val, test, len(class_names), class_names)

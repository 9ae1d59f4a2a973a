"""Datasets: the registry, `load_dataset`, and the `Dataset`/`Split` containers the trainer consumes.

Every dataset is uint8 images (N, H, W, C) with int32 labels; a validation split is carved from
the training split by the run seed, and the test split is never touched.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from jaxcnn.data import array_records, arrays, cifar, digits, download, image_folder, mnist, synthetic, tfds
from jaxcnn.data.cifar import load_cifar10, load_cifar100
from jaxcnn.data.digits import load_digits
from jaxcnn.data.mnist import load_fashion_mnist, load_mnist
from jaxcnn.data.splits import Split, check_val_fraction, train_val_split
from jaxcnn.errors import JaxcnnError
from jaxcnn.spec import DATASET_COMMON_KEYS, is_int

__all__ = ["DATASETS", "DATA_DIR_ENV", "Dataset", "DatasetSource", "Split", "check_dataset_name", "dataset_defaults",
           "expected_input_shape", "expected_num_classes", "list_datasets", "load_dataset", "reads_files",
           "register_dataset", "resolve_data_dir", "train_val_split"]

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

    @classmethod
    def from_arrays(cls, x_train: Any, y_train: Any, x_test: Any = None, y_test: Any = None,
                    class_names: Sequence[str] | None = None, *, test_fraction: float = 0.2, seed: int = 0,
                    name: str = "arrays") -> Dataset:
        """A dataset from NumPy arrays: images (N, H, W) or (N, H, W, C), uint8 0..255 or floats in
        [0, 1] or [0, 255]; labels integer class indices (N,). Without `x_test`/`y_test` a stratified
        `test_fraction` (chosen by `seed`) is held out. Its validation split is empty: `load_dataset`
        carves one out of train (`val_fraction`). Bad arrays raise `JaxcnnError`."""
        train, test, names = arrays.dataset_arrays(x_train, y_train, x_test, y_test, class_names,
                                                   test_fraction=test_fraction, seed=seed)
        return cls(name, train, _empty(train), test, len(names), names)


def _empty(split: Split) -> Split:
    return Split(split.images[:0], split.labels[:0])


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """A registered dataset: `load(data_dir, seed, **options)` returns (train, test, class_names) or
    a `Dataset`; `options` are the names it takes, `defaults` their values in a new `config.dataset`;
    `fetch(data_dir)`, when the dataset can be downloaded, gets what is missing (`download=True`);
    `image_shape` is the (H, W, C) of its images and `num_classes` its number of classes, when fixed
    (None: set by its options or files)."""

    load: Callable[..., tuple[Split, Split, tuple[str, ...]] | Dataset]
    options: tuple[str, ...] = ()
    fetch: Callable[[str | os.PathLike | None], None] | None = None
    image_shape: tuple[int, int, int] | None = None
    num_classes: int | None = None
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # False: the data directory plays no part (made in memory, or read from `dataset.path` as
    # image_folder and arrays are, or by a registered loader): a run needs and records no data dir.
    reads_files: bool = True
    # True: `load` takes `lazy=True` and then returns images that are read when indexed
    # (`records.FileImages`, `array_records.RecordImages`), for the Grain feed (`dataset.input=grain`).
    lazy: bool = False


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


_DATASETS: dict[str, DatasetSource] = {
    "cifar10": DatasetSource(lambda data_dir, seed: load_cifar10(resolve_data_dir(data_dir)),
                             fetch=_downloader("cifar10"), image_shape=cifar.IMAGE_SHAPE,
                             num_classes=cifar.CIFAR10.num_classes),
    "cifar100": DatasetSource(lambda data_dir, seed: load_cifar100(resolve_data_dir(data_dir)),
                              fetch=_downloader("cifar100"), image_shape=cifar.IMAGE_SHAPE,
                              num_classes=cifar.CIFAR100.num_classes),
    "digits": DatasetSource(lambda data_dir, seed: load_digits(), image_shape=digits.IMAGE_SHAPE,
                            num_classes=len(digits.CLASS_NAMES), reads_files=False),
    "fashion_mnist": DatasetSource(lambda data_dir, seed: load_fashion_mnist(resolve_data_dir(data_dir)),
                                   fetch=_downloader("fashion_mnist"), image_shape=mnist.IMAGE_SHAPE,
                                   num_classes=len(mnist.FASHION_MNIST_CLASS_NAMES)),
    "mnist": DatasetSource(lambda data_dir, seed: load_mnist(resolve_data_dir(data_dir)),
                           fetch=_downloader("mnist"), image_shape=mnist.IMAGE_SHAPE,
                           num_classes=len(mnist.MNIST_CLASS_NAMES)),
    "synthetic": DatasetSource(lambda data_dir, seed, **options: synthetic.load_synthetic(seed, **options),
                               options=synthetic.OPTIONS, defaults=synthetic.DEFAULTS, reads_files=False),
    "image_folder": DatasetSource(lambda data_dir, seed, **options: image_folder.load_image_folder(seed, **options),
                                  options=image_folder.OPTIONS, defaults=image_folder.DEFAULTS, reads_files=False,
                                  lazy=True),
    "array_record": DatasetSource(lambda data_dir, seed, **options: array_records.load_array_record(seed, **options),
                                  options=array_records.OPTIONS, defaults=array_records.DEFAULTS, reads_files=False,
                                  lazy=True),
    "arrays": DatasetSource(lambda data_dir, seed, **options: arrays.load_arrays(seed, **options),
                            options=arrays.OPTIONS, defaults=arrays.DEFAULTS, reads_files=False),
}
DATASETS = MappingProxyType(_DATASETS)  # read-only view; add entries with `register_dataset`


def register_dataset(name: str, loader: Callable[..., Dataset], defaults: Mapping[str, Any] | None = None, *,
                     replace: bool = False) -> None:
    """Make `loader` available as `dataset.name = name`.

    `loader(seed=..., **options)` returns a `Dataset` (e.g. `Dataset.from_arrays(...)`); its options
    are the keys of `defaults`, which become `config.dataset` keys with those values (set them with
    `--config.dataset.KEY=VALUE`). When the returned dataset has no validation examples, `load_dataset`
    carves `val_fraction` of its training split into one. `replace=True` replaces an entry.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise JaxcnnError(f"register_dataset: invalid name {name!r}; expected a name like my_data")
    if name in _DATASETS and not replace:
        raise JaxcnnError(f"register_dataset: dataset {name!r} is already registered; pass replace=True to replace it")
    if not callable(loader):
        raise JaxcnnError(f"register_dataset({name!r}): loader must be a function returning a Dataset, got {loader!r}")
    defaults = dict(defaults or {})
    clash = sorted(set(defaults) & set(DATASET_COMMON_KEYS))
    if clash:
        raise JaxcnnError(f"register_dataset({name!r}): option {clash[0]!r} is a common dataset key; rename it")

    def load(data_dir: Any, seed: int, **options: Any) -> Dataset:
        dataset = loader(seed=seed, **options)
        if not isinstance(dataset, Dataset):
            raise JaxcnnError(f"dataset {name!r}: its loader returned a {type(dataset).__name__}, not a "
                              "jaxcnn.Dataset; return e.g. Dataset.from_arrays(x_train, y_train, x_test, y_test)")
        return dataclasses.replace(dataset, name=name)

    _DATASETS[name] = DatasetSource(load, options=tuple(defaults), defaults=MappingProxyType(defaults),
                                    reads_files=False)


def dataset_defaults(name: str) -> dict[str, Any]:
    """The loader options of dataset `name` with their defaults (for `config.dataset`)."""
    if isinstance(name, str) and name.startswith(tfds.PREFIX):
        return dict(tfds.DEFAULTS)
    source = _DATASETS.get(name)
    return dict(source.defaults) if source is not None else {}


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
    return _known_before_loading(section, "image_shape", synthetic.check_image_shape)


def expected_num_classes(section: Mapping[str, Any]) -> int | None:
    """The number of classes of the dataset of `section`, known before loading it as
    `expected_input_shape` is (`num_classes` for synthetic). Lets the config check build the model
    the run will train."""
    return _known_before_loading(section, "num_classes", synthetic.check_num_classes)


def _known_before_loading(section: Mapping[str, Any], key: str, check_synthetic: Callable[[Any], Any]) -> Any:
    """`DatasetSource.<key>` of the section's dataset; for synthetic, its option `key` (checked)."""
    name = section["name"]
    check_dataset_name(name)
    if name == "synthetic":
        return check_synthetic(section[key])
    return getattr(DATASETS[name], key) if name in DATASETS else None


def reads_files(name: str) -> bool:
    """Whether dataset `name` is read from the data directory (a run records that directory)."""
    return _source(name).reads_files


def _source(name: str) -> DatasetSource:
    if name.startswith(tfds.PREFIX):
        tfds_name = name[len(tfds.PREFIX):]
        return DatasetSource(
            lambda data_dir, seed, **options: tfds.load_tfds(tfds_name, resolve_data_dir(data_dir), **options),
            options=tfds.OPTIONS,
            fetch=lambda data_dir: tfds.prepare_tfds(tfds_name, resolve_data_dir(data_dir)), lazy=True)
    return DATASETS[name]


def load_dataset(name: str | Dataset, *, data_dir: str | os.PathLike | None = None, val_fraction: float = 0.1,
                 seed: int = 0, download: bool = False, lazy: bool = False, **options: Any) -> Dataset:
    """Load dataset `name` and carve `val_fraction` of its training split into a validation split.

    `seed` picks the validation examples (and draws the synthetic data); `options` are the
    dataset's own (`synthetic`'s generator options, `tfds:NAME`'s split names, `image_folder`'s
    path, ...). `download` first fetches missing files of a dataset that has public mirrors (or
    prepares a TFDS dataset). `name` may also be an already built `Dataset` (`Dataset.from_arrays`):
    then `data_dir`, `download` and `options` are not used, and a validation split is carved unless
    it has one. `lazy`: a dataset that can (`image_folder`, `array_record`, `tfds:NAME`) keeps its
    images as files or records, decoded when read (`dataset.input=grain`); the others load as they
    always do. Bad names, options or files
    raise `JaxcnnError`.
    """
    check_val_fraction(val_fraction)
    if not is_int(seed) or seed < 0:
        raise JaxcnnError(f"seed: expected a non-negative integer, got {seed!r}; set e.g. seed=0")
    if isinstance(name, Dataset):
        return _with_val_split(name, val_fraction, seed)
    check_dataset_name(name)
    source = _source(name)
    unknown = sorted(set(options) - set(source.options))
    if unknown:
        raise JaxcnnError(
            f"dataset.{unknown[0]}: unknown option for dataset {name!r}; "
            f"known options: {', '.join(source.options) or 'none'}; remove it or fix its spelling")
    if download and source.fetch is not None:
        source.fetch(data_dir)
    loaded = source.load(data_dir, seed, **options, **({"lazy": True} if lazy and source.lazy else {}))
    if not isinstance(loaded, Dataset):
        train, test, class_names = loaded
        loaded = Dataset(name, train, _empty(train), test, len(class_names), class_names)
    return _with_val_split(loaded, val_fraction, seed)


def _with_val_split(dataset: Dataset, val_fraction: float, seed: int) -> Dataset:
    """`dataset` with `val_fraction` of its training split as the validation split, unless it has one."""
    if len(dataset.val) > 0:
        return dataset
    train, val = train_val_split(dataset.train, val_fraction, seed)
    return dataclasses.replace(dataset, train=train, val=val)

"""Any TensorFlow-Datasets image-classification dataset: `dataset.name = "tfds:NAME"` (extra `[tfds]`).

Reading goes through TFDS's random-access data sources (ArrayRecord files, no TensorFlow needed).
Preparing a dataset that is not yet prepared (`--download`) runs TFDS's `download_and_prepare` with
`file_format="array_record"`, which needs TensorFlow. Offline, put the dataset's original files in
`DATA_DIR/tfds/manual/NAME/` (TFDS checks their sha256) and run with `--download` again.

Decoded splits are cached as `.npy` files in `DATA_DIR/tfds/jaxcnn_cache/NAME/VERSION/` and
memory-mapped on later runs, so they start fast and a large dataset need not fit in memory. With
`dataset.input=grain` nothing is decoded ahead: the Grain workers read the prepared ArrayRecord
files record by record through `tfds.data_source` (`TfdsReader`); only the labels are cached.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from jaxcnn.data.splits import Split
from jaxcnn.errors import JaxcnnError

PREFIX = "tfds:"
OPTIONS = ("train_split", "test_split")
DEFAULTS = {"train_split": "train", "test_split": "test"}
_INSTALL = 'pip install "jaxcnn[tfds]"'


def tfds_dir(root: Path) -> Path:
    """Where TFDS keeps prepared datasets (its `data_dir`) under the jaxcnn data directory."""
    return root / "tfds"


def manual_dir(root: Path, name: str) -> Path:
    """Where to put a dataset's original files for offline preparation."""
    return tfds_dir(root) / "manual" / name


def load_tfds(name: str, root: Path, train_split: str = "train", test_split: str = "test",
              lazy: bool = False) -> tuple[Split, Split, tuple[str, ...]]:
    """(train, test, class_names) of TFDS dataset `name`, prepared under `DATA_DIR/tfds/`. `lazy`
    (`dataset.input=grain`): the images read record by record from the prepared ArrayRecord files
    through `tfds.data_source` (`TfdsReader`), decoded in the Grain workers; only the labels are
    read here (once, then cached). Else every image is decoded into the `.npy` cache."""
    builder = _builder(name, root)
    image_key, label_key = _feature_keys(builder, name)
    cache = tfds_dir(root) / "jaxcnn_cache" / name / str(builder.info.version)
    label_feature = builder.info.features[label_key]
    keys = (image_key, label_key, label_feature.num_classes)
    load = _lazy_split if lazy else _cached_split
    train, test = (load(builder, name, root, split, cache, *keys) for split in (train_split, test_split))
    return train, test, tuple(label_feature.names)


class TfdsReader:
    """The examples of a prepared TFDS split through `tfds.data_source` (its ArrayRecord files, no
    TensorFlow), the image left encoded: `array_records.RecordImages` decodes it with Pillow where it
    is read (a Grain worker). Opened on the first read in each process, pickled as its arguments."""

    def __init__(self, name: str, data_dir: str, split: str, image_key: str, label_key: str):
        self.args, self._source = (name, str(data_dir), split, image_key, label_key), None

    def __getstate__(self) -> dict[str, Any]:
        return {"args": self.args}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(*state["args"])

    def _open(self) -> Any:
        if self._source is None:
            tfds = _tfds()
            name, data_dir, split, image_key, _ = self.args
            self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                                            decoders={image_key: tfds.decode.SkipDecoding()},
                                            builder_kwargs={"file_format": "array_record"})
        return self._source

    def __len__(self) -> int:
        return len(self._open())

    def where(self, index: int) -> str:
        return f"dataset.name {PREFIX}{self.args[0]}: split {self.args[2]!r}, example {index}"

    def read(self, index: int) -> tuple[bytes, int]:
        """(encoded image bytes, label) of example `index`."""
        example = self._open()[index]
        return bytes(example[self.args[3]]), int(example[self.args[4]])


def _cache_stem(cache: Path, split: str) -> Path:
    """The cache files' path without suffix: the split's name made safe, and its hash."""
    return cache / (re.sub(r"[^A-Za-z0-9._-]", "_", split) + "-" + hashlib.sha1(split.encode()).hexdigest()[:8])


def _lazy_split(builder: Any, name: str, root: Path, split: str, cache: Path, image_key: str,
                label_key: str, num_classes: int) -> Split:
    from jaxcnn.data.array_records import RecordImages

    _data_source(builder, name, root, split)  # one line when the split is not prepared
    reader = TfdsReader(name, tfds_dir(root), split, image_key, label_key)
    labels_path = Path(f"{_cache_stem(cache, split)}.labels.npy")
    if not labels_path.is_file():
        labels = np.asarray([reader.read(i)[1] for i in range(len(reader))], np.int32)
        _check_labels(labels, name, split, num_classes)
        labels_path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=labels_path.parent, suffix=".npy.part")
        with os.fdopen(fd, "wb") as f:
            np.save(f, labels, allow_pickle=False)
        os.replace(temp, labels_path)
    labels = np.load(labels_path, allow_pickle=False)
    return Split(RecordImages(reader, tuple(builder.info.features[image_key].shape), np.arange(len(labels))), labels)


def _check_labels(labels: np.ndarray, name: str, split: str, num_classes: int) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise JaxcnnError(f"dataset.name {PREFIX}{name}: split {split!r} has label {labels[bad[0]]} "
                          f"outside 0..{num_classes - 1}; the prepared data is corrupt, prepare it again")


def prepare_tfds(name: str, root: Path) -> None:
    """Downloads and prepares dataset `name` (ArrayRecord) unless it already is; needs TensorFlow."""
    builder = _builder(name, root)
    if builder.is_prepared():
        return
    missing = missing_preparation_packages()
    if missing:
        raise JaxcnnError(
            f"dataset.name {PREFIX}{name}: not prepared in {tfds_dir(root)}, and preparing it needs "
            f"{' and '.join(missing)} (pip install {' '.join(missing)}); install it, or prepare the dataset "
            f"elsewhere with file_format='array_record' and copy {tfds_dir(root) / name}/ here")
    import tensorflow_datasets as tfds

    manual = manual_dir(root, name)
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual)))
    except Exception as e:  # TFDS raises many kinds (network, checksum, manual-download) for one cause
        raise JaxcnnError(
            f"dataset.name {PREFIX}{name}: TFDS could not download and prepare it ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); without network, put its original files "
            f"{_expected_files(builder)} into {manual}/ and run again with --download") from e


def missing_preparation_packages() -> list[str]:
    """The packages TFDS's preparation needs that are not installed (TensorFlow is not in `[tfds]`)."""
    return [m for m in ("tensorflow", "importlib_resources") if importlib.util.find_spec(m) is None]


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise JaxcnnError(f"dataset.name {PREFIX}...: needs tensorflow-datasets, which is not installed; "
                          f"{_INSTALL}") from None
    return tfds


def _builder(name: str, root: Path) -> Any:
    tfds = _tfds()
    if not name:
        raise JaxcnnError(f"dataset.name: '{PREFIX}' needs a dataset name, e.g. {PREFIX}mnist")
    try:
        return tfds.builder(name, data_dir=os.fspath(tfds_dir(root)), file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError:
        raise JaxcnnError(f"dataset.name {PREFIX}{name}: TFDS has no dataset {name!r}; "
                          "see https://www.tensorflow.org/datasets/catalog for the names") from None


def _feature_keys(builder: Any, name: str) -> tuple[str, str]:
    """(image key, label key): the supervised keys, else 'image' and 'label'; checked to be an
    image of fixed size and a class label."""
    import tensorflow_datasets as tfds

    keys = builder.info.supervised_keys
    image_key, label_key = keys if isinstance(keys, tuple) and len(keys) == 2 else ("image", "label")
    features = builder.info.features
    image, label = (features[key] if key in features.keys() else None for key in (image_key, label_key))
    if not isinstance(image, tfds.features.Image) or not isinstance(label, tfds.features.ClassLabel):
        kinds = {key: type(features[key]).__name__ for key in features.keys()}
        raise JaxcnnError(f"dataset.name {PREFIX}{name}: not an image-classification dataset: jaxcnn needs an "
                          f"Image input and a ClassLabel label ({image_key!r} and {label_key!r} here), its "
                          f"features are {kinds}; pick another dataset")
    if None in image.shape or image.np_dtype != np.uint8:
        raise JaxcnnError(f"dataset.name {PREFIX}{name}: images are {image.shape} {np.dtype(image.np_dtype)}; "
                          "jaxcnn needs uint8 images of one fixed size; pick another dataset")
    return image_key, label_key


def _cached_split(builder: Any, name: str, root: Path, split: str, cache: Path, image_key: str,
                  label_key: str, num_classes: int) -> Split:
    stem = _cache_stem(cache, split)
    images_path, labels_path = Path(f"{stem}.images.npy"), Path(f"{stem}.labels.npy")
    if not (images_path.is_file() and labels_path.is_file()):
        _decode_to_cache(builder, name, root, split, images_path, labels_path, image_key, label_key, num_classes)
    try:
        images = np.load(images_path, mmap_mode="r", allow_pickle=False)
        labels = np.load(labels_path, allow_pickle=False)
        return Split(images, labels)
    except (OSError, ValueError) as e:
        raise JaxcnnError(f"{images_path}: unreadable cache ({e}); delete {cache}/ and run again") from e


def _decode_to_cache(builder: Any, name: str, root: Path, split: str, images_path: Path, labels_path: Path,
                     image_key: str, label_key: str, num_classes: int) -> None:
    source = _data_source(builder, name, root, split)
    n = len(source)
    shape = builder.info.features[image_key].shape
    print(f"decoding {PREFIX}{name} split {split!r} ({n} examples) into {images_path.parent}",
          file=sys.stderr, flush=True)
    images_path.parent.mkdir(parents=True, exist_ok=True)
    labels = np.empty(n, np.int32)
    image_fd, image_temp = tempfile.mkstemp(dir=images_path.parent, suffix=".npy.part")
    label_fd, label_temp = tempfile.mkstemp(dir=images_path.parent, suffix=".npy.part")
    os.close(image_fd), os.close(label_fd)
    try:
        images = np.lib.format.open_memmap(image_temp, mode="w+", dtype=np.uint8, shape=(n, *shape))
        for i in range(n):
            example = source[i]
            images[i] = example[image_key]
            labels[i] = example[label_key]
        images.flush()
        del images
        _check_labels(labels, name, split, num_classes)
        with open(label_temp, "wb") as f:
            np.save(f, labels, allow_pickle=False)
        os.replace(label_temp, labels_path)
        os.replace(image_temp, images_path)
    finally:
        for temp in (image_temp, label_temp):
            if os.path.exists(temp):
                os.unlink(temp)


def _data_source(builder: Any, name: str, root: Path, split: str) -> Any:
    """The builder's data source of `split`, or one line saying how to prepare it."""
    try:
        return builder.as_data_source(split=split)
    except (KeyError, ValueError, NotImplementedError, FileNotFoundError) as e:
        raise JaxcnnError(
            f"dataset.name {PREFIX}{name}: split {split!r} is not available in {tfds_dir(root)} ({e}); "
            "prepare the dataset with --download (needs TensorFlow), or set dataset.train_split / "
            "dataset.test_split to splits it has") from None


def _expected_files(builder: Any) -> str:
    """The original files TFDS wants, with size and sha256, from its checksum table."""
    infos = builder.url_infos or {}  # reading TFDS's checksum table needs importlib_resources
    return ", ".join(f"{info.filename or url.rsplit('/', 1)[-1]} ({int(info.size):,} bytes, sha256 {info.checksum}) "
                     f"from {url}" for url, info in infos.items()) or "(see the dataset's page in the TFDS catalog)"

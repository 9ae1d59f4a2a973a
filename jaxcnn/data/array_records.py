"""Images in ArrayRecord files: `dataset.name=array_record`, `dataset.path=DIR` (extra `[grain]`).

    DIR/meta.json             {"format": "jaxcnn-array-record", "version": 1,
                               "class_names": [...], "image_shape": [H, W, C]}
    DIR/train.array_record    one record per example (below), in order
    DIR/train.labels.npy      the records' labels, int32 (so that loading reads no record)
    DIR/test.array_record, DIR/test.labels.npy

A record is `b"JXR1"`, the label as a 4-byte little-endian unsigned integer, then the bytes of an
image file (PNG, JPEG, ... anything Pillow reads): readable without TensorFlow or protobuf, by any
ArrayRecord reader. Images are decoded when read (by the Grain feed's workers with
`dataset.input=grain`; all at load otherwise) and resized to `image_shape`, or to
`dataset.image_size` when set. `jaxcnn pack FOLDER DIR` writes such files from an image folder
(`pack_image_folder`), `pack_arrays` from NumPy arrays.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from jaxcnn.data.images import image_from_bytes
from jaxcnn.data.records import LazyImages
from jaxcnn.data.splits import Split
from jaxcnn.errors import JaxcnnError

OPTIONS = ("path", "image_size")
DEFAULTS = {"path": "", "image_size": None}
FORMAT, VERSION = "jaxcnn-array-record", 1
MAGIC = b"JXR1"
_LABEL = struct.Struct("<I")
HEADER_SIZE = len(MAGIC) + _LABEL.size
PARTS = ("train", "test")
_EXTRA = "pip install 'jaxcnn[grain]'"
_HOW = "write it with `jaxcnn pack IMAGE_FOLDER DIR`"


def encode_record(image: bytes, label: int) -> bytes:
    """One example as a record: magic, label, image file bytes."""
    return MAGIC + _LABEL.pack(int(label)) + bytes(image)


def decode_record(record: bytes, where: str) -> tuple[bytes, int]:
    """(image file bytes, label) of a record; one line naming `where` when it is not one of ours."""
    if len(record) < HEADER_SIZE or record[:len(MAGIC)] != MAGIC:
        raise JaxcnnError(f"{where}: not a jaxcnn image record (expected {MAGIC!r}, a 4-byte label, then the "
                          f"image file's bytes); {_HOW}")
    return record[HEADER_SIZE:], _LABEL.unpack_from(record, len(MAGIC))[0]


class ArrayRecordReader:
    """The records of one ArrayRecord file, through Grain's `ArrayRecordDataSource`, opened on the
    first read in each process: pickled into a Grain worker as its path only."""

    def __init__(self, path: str):
        self.path, self._source = str(path), None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])

    def _open(self) -> Any:
        if self._source is None:
            try:
                from grain.sources import ArrayRecordDataSource
            except ImportError as e:
                raise JaxcnnError(f"dataset.name=array_record needs the grain package; {_EXTRA}") from e
            self._source = ArrayRecordDataSource(self.path)
        return self._source

    def __len__(self) -> int:
        return len(self._open())

    def where(self, index: int) -> str:
        return f"{self.path}: record {index}"

    def read(self, index: int) -> tuple[bytes, int]:
        """(image file bytes, label) of record `index`."""
        return decode_record(self._open()[index], self.where(index))


class RecordImages(LazyImages):
    """The images of a reader's records (`ArrayRecordReader`, `tfds.TfdsReader`), each read and
    decoded when indexed (`records.LazyImages`)."""

    def __init__(self, reader: Any, shape: tuple[int, int, int], rows: np.ndarray):
        self.reader = reader
        super().__init__(shape, rows)

    def pixels(self, row: int, native: bool) -> np.ndarray:
        data, _ = self.reader.read(row)
        return image_from_bytes(data, self.reader.where(row), self.image_shape, native)


# ---------------------------------------------------------------------------------------------- reading


def load_array_record(seed: int, path: str = "", image_size: Any = None,
                      lazy: bool = False) -> tuple[Split, Split, tuple[str, ...]]:
    """(train, test, class_names) of the folder `path` (see the module doc). `lazy`: the images as
    `RecordImages`, decoded when read; else decoded into memory here."""
    from jaxcnn.data.arrays import check_path
    from jaxcnn.data.image_folder import check_image_size

    size = check_image_size(image_size)
    root = check_path(path, "DIR")
    meta = read_meta(root)
    shape = (*size, meta["image_shape"][2]) if size else tuple(meta["image_shape"])
    train, test = (open_split(root, part, shape, len(meta["class_names"])) for part in PARTS)
    if not lazy:
        train, test = (Split(np.asarray(s.images), s.labels) for s in (train, test))
    return train, test, tuple(meta["class_names"])


def read_meta(root: pathlib.Path) -> dict[str, Any]:
    """DIR/meta.json, checked: our format and version, class names, an (H, W, C) image shape."""
    file = root / "meta.json"
    if not file.is_file():
        raise JaxcnnError(f"dataset.path: {file} does not exist; dataset.name=array_record needs a folder with "
                          f"meta.json, train.array_record and test.array_record; {_HOW}")
    try:
        meta = json.loads(file.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise JaxcnnError(f"{file}: cannot be read as JSON ({e}); {_HOW}") from e
    shape = meta.get("image_shape") if isinstance(meta, dict) else None
    names = meta.get("class_names") if isinstance(meta, dict) else None
    ok = (isinstance(meta, dict) and meta.get("format") == FORMAT and meta.get("version") == VERSION
          and isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)
          and isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)
          and shape[2] in (1, 3))
    if not ok:
        raise JaxcnnError(f"{file}: expected {{\"format\": \"{FORMAT}\", \"version\": {VERSION}, \"class_names\": "
                          f"[at least 2 names], \"image_shape\": [H, W, 1 or 3]}}; {_HOW}")
    return meta


def open_split(root: pathlib.Path, part: str, shape: tuple[int, int, int], num_classes: int) -> Split:
    """Split `part` as `RecordImages`, after checking its labels and its first record."""
    records, labels_file = root / f"{part}.array_record", root / f"{part}.labels.npy"
    for file in (records, labels_file):
        if not file.is_file():
            raise JaxcnnError(f"dataset.path: {file} does not exist; {_HOW}")
    try:
        labels = np.load(labels_file, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise JaxcnnError(f"{labels_file}: cannot be read as a .npy array ({e}); {_HOW}") from e
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or not len(labels):
        raise JaxcnnError(f"{labels_file}: expected a non-empty 1-D array of integer labels, got {labels.dtype} "
                          f"{labels.shape}; {_HOW}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise JaxcnnError(f"{labels_file}: labels must be 0..{num_classes - 1} (meta.json's class_names), "
                          f"got {labels.min()}..{labels.max()}")
    reader = ArrayRecordReader(str(records))
    try:
        count = len(reader)
    except JaxcnnError:
        raise
    except Exception as e:  # array_record raises RuntimeError/ValueError/OSError for a file not its own
        raise JaxcnnError(f"{records}: cannot be read as an ArrayRecord file ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); {_HOW}") from e
    if count != len(labels):
        raise JaxcnnError(f"{records}: holds {count} records but {labels_file.name} has {len(labels)} labels; {_HOW}")
    images = RecordImages(reader, shape, np.arange(count))
    _, label = reader.read(0)  # the first record's format and image, checked before any training
    images[0]
    if label != labels[0]:
        raise JaxcnnError(f"{reader.where(0)}: label {label}, but {labels_file.name} says {labels[0]}; {_HOW}")
    return Split(images, labels.astype(np.int32))


# ---------------------------------------------------------------------------------------------- writing


def write_array_records(out: str | os.PathLike, parts: dict[str, Iterable[tuple[bytes, int]]],
                        class_names: Sequence[str], image_shape: tuple[int, int, int]) -> dict[str, int]:
    """Writes `parts` ({"train": (image bytes, label)..., "test": ...}) into the folder `out` in the
    format of the module doc (meta.json last: a folder without it was not finished). Returns the
    number of records of each part."""
    try:
        from array_record.python.array_record_module import ArrayRecordWriter
    except ImportError as e:
        raise JaxcnnError(f"writing ArrayRecord files needs the array_record package; {_EXTRA}") from e
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)
    counts = {}
    for part in PARTS:
        labels = []
        writer = ArrayRecordWriter(str(out / f"{part}.array_record"), "group_size:1")  # 1: fastest random reads
        try:
            for data, label in parts[part]:
                writer.write(encode_record(data, label))
                labels.append(label)
        finally:
            writer.close()
        np.save(out / f"{part}.labels.npy", np.asarray(labels, np.int32), allow_pickle=False)
        counts[part] = len(labels)
    meta = {"format": FORMAT, "version": VERSION, "class_names": list(class_names), "image_shape": list(image_shape)}
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return counts


def pack_image_folder(folder: str | os.PathLike, out: str | os.PathLike, image_size: Any = None,
                      test_fraction: float = 0.2, seed: int = 0) -> dict[str, int]:
    """An image folder (as `dataset.name=image_folder` reads it: its train/ and test/, else a seeded,
    stratified `test_fraction` held out) as ArrayRecord files in `out`, each image file's bytes as
    they are (decoded, and resized to `image_size` or the images' one size, when read)."""
    from jaxcnn.data import image_folder
    from jaxcnn.data.arrays import check_test_fraction
    from jaxcnn.data.splits import stratified_holdout

    size = image_folder.check_image_size(image_size)
    check_test_fraction(test_fraction)
    root = pathlib.Path(folder).expanduser()
    if not root.is_dir():
        raise JaxcnnError(f"{root}: not a folder; expected an image folder with one subfolder of images per class")
    files, labels, class_names, num_train = image_folder.scan(root)
    shape, _, _ = image_folder.read_headers(root, files, size, skip_bad_images=False)
    if (root / "test").is_dir():
        kept, held = np.arange(num_train), np.arange(num_train, len(files))
    else:
        kept, held = stratified_holdout(labels, test_fraction, seed)

    def examples(indices: np.ndarray) -> Iterable[tuple[bytes, int]]:
        return ((pathlib.Path(files[i]).read_bytes(), int(labels[i])) for i in indices)

    return write_array_records(out, {"train": examples(kept), "test": examples(held)}, class_names, shape)


def pack_arrays(out: str | os.PathLike, x_train: Any, y_train: Any, x_test: Any = None, y_test: Any = None,
                class_names: Sequence[str] | None = None, *, test_fraction: float = 0.2,
                seed: int = 0) -> dict[str, int]:
    """NumPy arrays (as `Dataset.from_arrays` takes them) as ArrayRecord files in `out`, each image
    encoded as PNG (lossless)."""
    from jaxcnn.data.arrays import dataset_arrays

    train, test, names = dataset_arrays(x_train, y_train, x_test, y_test, class_names,
                                        test_fraction=test_fraction, seed=seed)
    parts = {"train": _png_examples(train), "test": _png_examples(test)}
    return write_array_records(out, parts, names, tuple(train.images.shape[1:]))


def _png_examples(split: Split) -> Iterable[tuple[bytes, int]]:
    from PIL import Image

    for pixels, label in zip(split.images, split.labels):
        buffer = io.BytesIO()
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, format="PNG")
        yield buffer.getvalue(), int(label)

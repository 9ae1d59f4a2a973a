"""NumPy arrays as a dataset: `Dataset.from_arrays(...)` from Python, `dataset.name=arrays` from a `.npz`.

Images: (N, H, W) or (N, H, W, C), channels last. uint8 (or any integer type) holds pixel values
0..255. Floats are read by the range of the whole array: within [0, 1] they are scaled by 255 (the
usual "normalised" images); within [0, 255] they are pixel values; anything else (negative values,
standardised data, NaN) is refused. Labels: integer class indices 0..K-1, shape (N,).
Without test arrays, a seeded, stratified `test_fraction` of the training arrays is the test split.
"""

from __future__ import annotations

import numbers
import pathlib
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxcnn.data.splits import Split, stratified_holdout
from jaxcnn.errors import JaxcnnError

OPTIONS = ("path", "test_fraction")
DEFAULTS = {"path": "", "test_fraction": 0.2}
NPZ_KEYS = ("images", "labels", "test_images", "test_labels")


def as_images(array: Any, where: str) -> np.ndarray:
    """uint8 (N, H, W, C) from (N, H, W) or (N, H, W, C) pixels (see the module doc for floats)."""
    array = np.asarray(array)
    if array.ndim not in (3, 4) or array.shape[0] == 0 or 0 in array.shape:
        raise JaxcnnError(f"{where}: expected images of shape (N, H, W) or (N, H, W, C) with N > 0, "
                          f"got shape {array.shape}")
    if array.ndim == 4 and array.shape[1] in (1, 3) and array.shape[3] not in (1, 3, 4):
        raise JaxcnnError(f"{where}: shape {array.shape} looks channels-first (N, C, H, W); jaxcnn needs "
                          "channels last: pass images.transpose(0, 2, 3, 1)")
    real = np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    if array.dtype == np.bool_ or not real:  # complex pixels too: their imaginary part would be dropped
        raise JaxcnnError(f"{where}: expected pixel values (uint8 0..255 or floats), got dtype {array.dtype}")
    low, high = array.min(), array.max()
    if np.issubdtype(array.dtype, np.floating):
        if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high > 255:
            raise JaxcnnError(f"{where}: float pixels must lie in [0, 1] or [0, 255], got [{low:g}, {high:g}]; "
                              "pass the raw images, not standardised ones (jaxcnn normalises them itself)")
        array = np.rint(array * 255.0 if high <= 1 else array)
    elif low < 0 or high > 255:
        raise JaxcnnError(f"{where}: pixel values must lie in 0..255, got [{low}, {high}]")
    images = array.astype(np.uint8)
    return images[..., None] if images.ndim == 3 else images


def as_labels(array: Any, where: str, count: int) -> np.ndarray:
    """int32 (N,) class indices, checked to be integers >= 0, one per image."""
    array = np.asarray(array)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise JaxcnnError(f"{where}: expected class indices of shape (N,), got shape {array.shape}"
                          + ("; one-hot labels? pass labels.argmax(1)" if array.ndim == 2 else ""))
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise JaxcnnError(f"{where}: expected integer class indices, got dtype {array.dtype}; "
                          "pass labels.astype(int) if they are whole numbers")
    if len(array) != count:
        raise JaxcnnError(f"{where}: {len(array)} labels for {count} images; give one label per image")
    if array.min() < 0:
        raise JaxcnnError(f"{where}: negative label {array.min()}; labels are class indices 0..K-1")
    if array.max() > np.iinfo(np.int32).max:
        raise JaxcnnError(f"{where}: label {array.max()} is out of range; labels are class indices 0..K-1")
    return array.astype(np.int32)


def dataset_arrays(x_train: Any, y_train: Any, x_test: Any = None, y_test: Any = None,
                   class_names: Sequence[str] | None = None, *, test_fraction: float = 0.2, seed: int = 0,
                   names: Sequence[str] = ("x_train", "y_train", "x_test", "y_test"), prefix: str = ""
                   ) -> tuple[Split, Split, tuple[str, ...]]:
    """(train, test, class_names) from arrays, checked; error messages call them `prefix` + `names`."""
    check_test_fraction(test_fraction)
    if (x_test is None) != (y_test is None):
        given, missing = (names[2], names[3]) if y_test is None else (names[3], names[2])
        raise JaxcnnError(f"{prefix}{given} given without {missing}; give both or neither")
    names = [prefix + name for name in names]
    images = as_images(x_train, names[0])
    labels = as_labels(y_train, names[1], len(images))
    if x_test is None:
        kept, held = stratified_holdout(labels, test_fraction, seed)
        train, test = Split(images[kept], labels[kept]), Split(images[held], labels[held])
    else:
        test_images = as_images(x_test, names[2])
        if test_images.shape[1:] != images.shape[1:]:
            raise JaxcnnError(f"{names[2]}: images of shape {test_images.shape[1:]}, but {names[0]} has "
                              f"{images.shape[1:]}; both need the same (H, W, C)")
        train = Split(images, labels)
        test = Split(test_images, as_labels(y_test, names[3], len(test_images)))
    return train, test, _class_names(class_names, train, test, names[1])


def _class_names(class_names: Sequence[str] | None, train: Split, test: Split, where: str) -> tuple[str, ...]:
    top = int(max(train.labels.max(), test.labels.max(initial=0)))
    if class_names is None:
        _check_no_empty_class(train, test, top, where)
        class_names = [str(c) for c in range(top + 1)]
    class_names = tuple(str(name) for name in class_names)
    if top >= len(class_names):
        raise JaxcnnError(f"{where}: label {top} is out of range for {len(class_names)} class names; "
                          f"labels must lie in 0..{len(class_names) - 1}")
    if len(class_names) < 2:
        raise JaxcnnError(f"{where}: only one class; a classifier needs labels of at least two classes")
    if len(test) == 0:
        raise JaxcnnError(f"{where}: the test split is empty; give more examples or a larger test_fraction")
    return class_names


def _check_no_empty_class(train: Split, test: Split, top: int, where: str) -> None:
    """Without class names the classes are 0..the largest label: each must have an example, so
    that one stray label (1,000,000) cannot build a model of a million classes."""
    present = np.union1d(np.unique(train.labels), np.unique(test.labels))
    if len(present) < top + 1:
        empty = top + 1 - len(present)
        raise JaxcnnError(f"{where}: label {top} makes {top + 1} classes, {empty} of them without any example; "
                          "labels are class indices 0..K-1 (renumber them, or pass class_names to declare "
                          "classes without examples)")


def check_test_fraction(value: Any, key: str = "test_fraction") -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 < value < 1
    if not ok:
        raise JaxcnnError(f"dataset.{key}: expected a number in (0, 1), got {value!r}; set e.g. dataset.{key}=0.2")


def check_path(path: Any, what: str) -> pathlib.Path:
    """`dataset.path` as an existing path, else one line saying what to set."""
    if not isinstance(path, (str, pathlib.Path)) or not str(path):
        raise JaxcnnError(f"dataset.path: not set; set --config.dataset.path={what}")
    resolved = pathlib.Path(path).expanduser()
    if not resolved.exists():
        raise JaxcnnError(f"dataset.path: {resolved} does not exist; set --config.dataset.path={what}")
    return resolved


def load_arrays(seed: int, path: str = "", test_fraction: float = 0.2) -> tuple[Split, Split, tuple[str, ...]]:
    """(train, test, class_names) from an `.npz` with `images`, `labels`, optionally `test_images`,
    `test_labels` and `class_names` (strings), as written by `np.savez`."""
    file = check_path(path, "FILE.npz")
    try:
        archive = np.load(file, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an .npz archive")
        with archive:
            arrays = {key: archive[key] for key in archive.files if key in (*NPZ_KEYS, "class_names")}
            found = sorted(archive.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise JaxcnnError(f"{file}: cannot be read as an .npz archive of arrays ({e}); write it with "
                          "np.savez(path, images=..., labels=...) (class_names as a string array)") from e
    missing = [key for key in ("images", "labels") if key not in arrays]
    if missing:
        raise JaxcnnError(f"{file}: has no {' or '.join(missing)} array (it has: {', '.join(found) or 'nothing'}); "
                          "write it with np.savez(path, images=..., labels=...)")
    names = arrays.get("class_names")
    if names is not None and (names.ndim != 1 or names.dtype.kind not in "US"):
        raise JaxcnnError(f"{file}: class_names must be a 1-D array of strings, got {names.dtype} {names.shape}")
    return dataset_arrays(arrays["images"], arrays["labels"], arrays.get("test_images"), arrays.get("test_labels"),
                          None if names is None else [str(n) for n in names], test_fraction=test_fraction,
                          seed=seed, names=NPZ_KEYS, prefix=f"{file}: ")

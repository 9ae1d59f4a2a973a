"""A folder of images, one subfolder per class: `dataset.name=image_folder`, `dataset.path=DIR`.

    DIR/cat/001.png, DIR/dog/a.jpg, ...              classes: the subfolder names, sorted
    DIR/train/cat/..., DIR/test/cat/...              or a given train/test split

Without `train/` and `test/`, a seeded, stratified `test_fraction` of each class is the test split.
Images (PNG, JPEG, BMP, GIF, TIFF, WebP; in class subfolders at any depth) are decoded with Pillow,
grey if every image is grey else RGB, resized to `image_size` (default: their own size, which must
then be the same for all). They are decoded once into a uint8 `.npy` in `DIR/.jaxcnn-cache/` (or,
when DIR is not writable, `~/.cache/jaxcnn/image_folder/`), memory-mapped by later runs; the cache is
keyed by the file list with sizes and modification times and rebuilt when any of them changes.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Any

import numpy as np

from jaxcnn.data.arrays import check_path, check_test_fraction
from jaxcnn.data.images import IMAGE_SUFFIXES, load_image, read_header
from jaxcnn.data.paths import not_a_regular_file
from jaxcnn.data.records import FileImages
from jaxcnn.data.splits import Split, stratified_holdout
from jaxcnn.errors import JaxcnnError

OPTIONS = ("path", "image_size", "test_fraction", "skip_bad_images")
DEFAULTS = {"path": "", "image_size": None, "test_fraction": 0.2, "skip_bad_images": False}
CACHE_DIR = ".jaxcnn-cache"
CACHE_VERSION = 1
_ANNOUNCE_FROM = 1000  # print a line before decoding at least this many images


def load_image_folder(seed: int, path: str = "", image_size: Any = None, test_fraction: float = 0.2,
                      skip_bad_images: bool = False, lazy: bool = False) -> tuple[Split, Split, tuple[str, ...]]:
    """(train, test, class_names) of the folder `path` (see the module doc). `lazy`: the images as
    `FileImages`, decoded when read (by the Grain feed's workers), not into the cache; only the
    files' headers are read here."""
    size = check_image_size(image_size)
    check_test_fraction(test_fraction)
    if not isinstance(skip_bad_images, bool):
        raise JaxcnnError(f"dataset.skip_bad_images: expected true or false, got {skip_bad_images!r}")
    root = check_path(path, "DIR")
    if not root.is_dir():
        raise JaxcnnError(f"dataset.path: {root} is not a folder; image_folder needs a folder with one "
                          "subfolder of images per class")
    files, labels, class_names, num_train = scan(root)
    if lazy:
        shape, good, _ = read_headers(root, files, size, skip_bad_images)
        images = FileImages([str(files[i]) for i in good], shape)
        labels, num_train = labels[good], int(np.sum(np.asarray(good) < num_train))
    else:
        images, labels, num_train = cached_pixels(root, files, labels, num_train, size, skip_bad_images)
    given = (root / "test").is_dir()  # train/ and test/ folders give the split
    if given:
        train, test = Split(images[:num_train], labels[:num_train]), Split(images[num_train:], labels[num_train:])
    else:
        kept, held = stratified_holdout(labels, test_fraction, seed)
        train, test = Split(images[kept], labels[kept]), Split(images[held], labels[held])
    if len(test) == 0 or len(train) == 0:
        raise JaxcnnError(f"dataset.path: {root}: the {'test' if len(train) else 'train'} split has no readable "
                          f"images; add images{'' if given else ' or raise dataset.test_fraction'}")
    return train, test, class_names


def check_image_size(value: Any) -> tuple[int, int] | None:
    """None (keep the images' size), an int (square) or (height, width)."""
    if value is None or value == "" or value == ():
        return None
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    ok = (isinstance(pair, (tuple, list)) and len(pair) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair))
    if not ok:
        raise JaxcnnError(f"dataset.image_size: expected (height, width) in pixels, got {value!r}; "
                          "set e.g. dataset.image_size=(28, 28), or leave it unset to keep the images' size")
    return int(pair[0]), int(pair[1])


def _images_under(folder: pathlib.Path) -> list[pathlib.Path]:
    """Image files below `folder` at any depth, skipping hidden files and folders, sorted."""
    found = []
    for parent, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [pathlib.Path(parent, n) for n in names
                  if not n.startswith(".") and pathlib.Path(n).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found)


def _class_folders(folder: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """{class name: its images} for the subfolders of `folder` that hold images."""
    classes = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = _images_under(sub)
        if images:
            classes[sub.name] = images
    return classes


def scan(root: pathlib.Path) -> tuple[list[pathlib.Path], np.ndarray, tuple[str, ...], int]:
    """(files, labels, class_names, num_train): the train part's files first, then the test part's."""
    has_train, has_test = (root / "train").is_dir(), (root / "test").is_dir()
    if has_train != has_test:
        there, missing = ("train", "test") if has_train else ("test", "train")
        raise JaxcnnError(f"dataset.path: {root} has {there}/ but no {missing}/; give both (each with one "
                          f"subfolder per class) or neither")
    train = _class_folders(root / "train" if has_train else root)
    test = _class_folders(root / "test") if has_test else {}
    where = root / "train" if has_train else root
    if not train:
        raise JaxcnnError(f"dataset.path: {where} has no images; expected one subfolder per class holding "
                          f"image files ({', '.join(IMAGE_SUFFIXES)})")
    if len(train) < 2:
        raise JaxcnnError(f"dataset.path: {where} has only one class folder with images ({next(iter(train))!r}); "
                          "a classifier needs at least two")
    extra = sorted(set(test) - set(train))
    if extra:
        raise JaxcnnError(f"dataset.path: {root / 'test' / extra[0]} is a class with no folder in {root / 'train'}; "
                          "the test classes must be among the training classes")
    class_names = tuple(train)
    files, labels = [], []
    for part in (train, test):
        for label, name in enumerate(class_names):
            files += part.get(name, [])
            labels += [label] * len(part.get(name, []))
    return files, np.asarray(labels, np.int32), class_names, sum(map(len, train.values()))


def _cache_key(root: pathlib.Path, files: list[pathlib.Path], labels: np.ndarray, num_train: int,
               size: tuple[int, int] | None, skip_bad_images: bool) -> str:
    """`SIZE-HASH`: one cache per image size (and skip setting), the hash of the files' paths, labels,
    sizes and modification times; a newer hash for the same SIZE replaces the older one."""
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, num_train]).encode())
    for file, label in zip(files, labels.tolist()):
        digest.update(f"{file.relative_to(root)}\0{label}\0{_stamp(file)}\n".encode())
    tag = f"{size[0]}x{size[1]}" if size else "native"
    return f"{tag}{'-skip' if skip_bad_images else ''}-{digest.hexdigest()[:24]}"


def _stamp(file: pathlib.Path) -> str:
    """Size and modification time of a regular file; for anything else (a dangling or looping
    link, a FIFO) what it is, so the key is made without failing and decoding names the file."""
    if not_a_regular_file(file):
        return not_a_regular_file(file) or ""
    stat = file.stat()
    return f"{stat.st_size}\0{stat.st_mtime_ns}"


def _cache_parents(root: pathlib.Path) -> list[pathlib.Path]:
    """Where caches of `root` may live: in it, else in the user's cache folder."""
    user = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache")
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return [root / CACHE_DIR, user / "jaxcnn" / "image_folder" / tag]


def cached_pixels(root: pathlib.Path, files: list[pathlib.Path], labels: np.ndarray, num_train: int,
                  size: tuple[int, int] | None, skip_bad_images: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """(images memory-mapped, labels, num_train) from the cache, decoding the folder into it first
    when it has no entry for the current file list."""
    key = _cache_key(root, files, labels, num_train, size, skip_bad_images)
    for parent in _cache_parents(root):
        loaded = _read_cache(parent / key)
        if loaded is not None:
            return _report_skipped(root, *loaded)
    for parent in _cache_parents(root):
        created = not parent.exists()  # removed again when decoding fails: a failed start leaves nothing
        try:
            parent.mkdir(parents=True, exist_ok=True)
            staging = pathlib.Path(tempfile.mkdtemp(prefix=f"{key}.tmp-", dir=parent))
            staging.chmod(0o755)  # mkdtemp's 0o700 would hide the cache from other users
        except OSError:
            continue  # not writable: the next place
        try:
            decode_into(staging, root, files, labels, num_train, size, skip_bad_images)
            _commit(staging, parent, key)
        except OSError as e:
            raise JaxcnnError(f"dataset.path: {root}: cannot write the decoded images to {parent} ({e}); "
                              "free some space or make the folder writable") from e
        except JaxcnnError:
            shutil.rmtree(staging, ignore_errors=True)
            if created:
                _remove_empty(parent)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return _report_skipped(root, *_read_cache(parent / key))
    raise JaxcnnError(f"dataset.path: {root}: cannot write the decoded images to any of "
                      f"{', '.join(map(str, _cache_parents(root)))}; make one of them writable")


def _remove_empty(folder: pathlib.Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (another run's cache) or already gone


def _report_skipped(root: pathlib.Path, images: np.ndarray, labels: np.ndarray, meta: dict) -> tuple:
    if meta["skipped"]:
        print(f"jaxcnn: warning: dataset.path {root}: skipped {meta['skipped']} unreadable image(s) "
              f"(dataset.skip_bad_images=true), the first: {meta['first_skipped']}", file=sys.stderr, flush=True)
    return images, labels, meta["num_train"]


def _read_cache(folder: pathlib.Path) -> tuple[np.ndarray, np.ndarray, dict] | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        images = np.load(folder / "images.npy", mmap_mode="r", allow_pickle=False)
        labels = np.load(folder / "labels.npy", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if images.dtype != np.uint8 or images.ndim != 4 or labels.shape != images.shape[:1]:
        return None
    return images, labels, meta


def _commit(staging: pathlib.Path, parent: pathlib.Path, key: str) -> None:
    """Renames the finished `staging` folder to `parent/key` and removes older caches of the folder."""
    try:
        os.replace(staging, parent / key)
    except OSError:
        if not (parent / key).is_dir():  # else another process wrote the same cache first
            raise
    prefix = key.rpartition("-")[0] + "-"
    for old in parent.iterdir():
        stale = old.name.startswith(prefix) and old.name.count("-") == key.count("-")
        if stale and old.name != key and old.is_dir() and ".tmp-" not in old.name:
            shutil.rmtree(old, ignore_errors=True)


def _attempt(function: Any, *args: Any) -> tuple[Any, str | None]:
    """(result, None), or (None, the one-line message) when the file cannot be read."""
    try:
        return function(*args), None
    except JaxcnnError as e:
        return None, str(e)


def read_headers(root: pathlib.Path, files: list[pathlib.Path], size: tuple[int, int] | None,
                 skip_bad_images: bool) -> tuple[tuple[int, int, int], list[int], dict[int, str]]:
    """(H, W, C) of the split, the readable files' indices and the unreadable ones' messages, from
    the files' headers (grey if every image is grey; the size given, else the images' one size)."""
    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        headers = list(pool.map(lambda f: _attempt(read_header, f), files))
    bad = {i: error for i, (_, error) in enumerate(headers) if error}
    good = [i for i in range(len(files)) if i not in bad]
    if (bad and not skip_bad_images) or not good:
        raise JaxcnnError(next(iter(bad.values())) + "; fix or remove it, or set dataset.skip_bad_images=true")
    height, width = size or _common_size(root, files, headers, good)
    return (height, width, 1 if all(headers[i][0][2] for i in good) else 3), good, bad


def decode_into(folder: pathlib.Path, root: pathlib.Path, files: list[pathlib.Path], labels: np.ndarray,
                num_train: int, size: tuple[int, int] | None, skip_bad_images: bool) -> None:
    """Decodes `files` into `folder/images.npy` (uint8 N×H×W×C), with `labels.npy` and `meta.json`."""
    shape, good, bad = read_headers(root, files, size, skip_bad_images)
    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        if len(good) >= _ANNOUNCE_FROM:
            print(f"decoding {len(good)} images of {root} into {folder.parent}", file=sys.stderr, flush=True)
        images = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=np.uint8, shape=(len(good), *shape))

        def decode_row(row: int) -> str | None:
            pixels, error = _attempt(load_image, files[good[row]], shape)
            if pixels is not None:
                images[row] = pixels
            return error

        errors = {good[row]: e for row, e in enumerate(pool.map(decode_row, range(len(good)))) if e}
    bad.update(errors)
    if errors and (not skip_bad_images or len(errors) == len(good)):
        raise JaxcnnError(errors[min(errors)] + "; fix or remove it, or set dataset.skip_bad_images=true")
    kept = np.asarray([i for i in good if i not in errors], np.int64)
    images.flush()
    if errors:
        _drop_rows(folder / "images.npy", images, [row for row, i in enumerate(good) if i not in errors])
    del images
    np.save(folder / "labels.npy", labels[kept], allow_pickle=False)
    first = str(files[min(bad)].relative_to(root)) if bad else None
    meta = {"num_train": int(np.sum(kept < num_train)), "skipped": len(bad), "first_skipped": first}
    (folder / "meta.json").write_text(json.dumps(meta))


def _common_size(root: pathlib.Path, files: list[pathlib.Path], headers: list, good: list[int]) -> tuple[int, int]:
    """The one (height, width) of all the images, else one line asking for `dataset.image_size`."""
    first = good[0]
    size = headers[first][0][:2]
    other = next((i for i in good if headers[i][0][:2] != size), None)
    if other is not None:
        h, w = headers[other][0][:2]
        raise JaxcnnError(f"dataset.path: {root}: images of different sizes ({files[first].relative_to(root)} is "
                          f"{size[0]}x{size[1]}, {files[other].relative_to(root)} is {h}x{w}, height x width); "
                          "set dataset.image_size=(H, W) to resize them all")
    return size


def _drop_rows(path: pathlib.Path, images: np.ndarray, rows: list[int], chunk: int = 4096) -> None:
    """Rewrites the `.npy` at `path` with only `rows` of `images` (the unreadable ones left out)."""
    temp = path.with_suffix(".part.npy")
    kept = np.lib.format.open_memmap(temp, mode="w+", dtype=np.uint8, shape=(len(rows), *images.shape[1:]))
    for start in range(0, len(rows), chunk):
        kept[start:start + chunk] = images[rows[start:start + chunk]]
    kept.flush()
    del kept
    os.replace(temp, path)

"""IDX files (the MNIST format), gzipped or raw, read with every header field checked.

Layout: a 4-byte magic number (0x00, 0x00, type code, ndim), then ndim big-endian int32 sizes,
then the uint8 payload, exactly as many bytes as the product of the sizes.

A gzipped file, once checked and decompressed, is kept decoded as `.npy` in the user cache folder
(`decoded/` beside the compilation cache, keyed by the file's path, size and modification time):
decompressing MNIST's training images took 0.15 s of every run's start. The `.npy` is mapped, not
read: a read-only array whose pages load as they are used, aligned so that on the CPU the device
array is the mapping itself, not a copy (reading and copying took 0.03-0.07 s of each start; README,
"Start-up"). A kept file is only ever replaced whole (`os.replace`), never rewritten in place, so a
mapping stays valid.
`JAXCNN_DECODED_CACHE=0` turns it off; an unwritable cache folder is skipped silently.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from jaxcnn.data.splits import Split
from jaxcnn.data.paths import not_a_regular_file
from jaxcnn.errors import JaxcnnError

UINT8_TYPE_CODE = 0x08
NUM_CLASSES = 10
_KINDS = {1: "labels", 3: "images"}


DECODED_CACHE_ENV = "JAXCNN_DECODED_CACHE"


def read_idx(path: str | os.PathLike, expect_ndim: int | None = None) -> np.ndarray:
    """The uint8 array stored in the IDX file at `path` (`.gz` files are decompressed, once: see the
    module doc).

    `expect_ndim` (1 for labels, 3 for images) makes a file of any other kind an error.
    """
    path = Path(path)
    cached = decoded_cache_file(path)
    if cached is not None:
        try:
            array = np.asarray(np.load(cached, mmap_mode="r"))  # read-only, paged in as used
            if array.dtype == np.uint8 and expect_ndim in (None, array.ndim):
                return array
        except (OSError, ValueError):
            pass  # absent or unreadable: decoded again below
    array = _decode(path, expect_ndim)
    if cached is not None:
        _keep_decoded(cached, array)
    return array


def decoded_cache_file(path: Path) -> Path | None:
    """Where the decoded array of gzipped `path` is kept; None for raw files (read as fast as a
    `.npy`), for files that cannot be looked at (the decoding reports why) and with the cache off."""
    if path.suffix != ".gz" or os.environ.get(DECODED_CACHE_ENV, "1") == "0":
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    from jaxcnn.runtime.compilation import default_cache_dir

    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    return default_cache_dir() / "decoded" / f"{hashlib.sha256(key).hexdigest()[:32]}.npy"


def _keep_decoded(cached: Path, array: np.ndarray) -> None:
    """Writes the `.npy` atomically (another process may write the same one); skipped if it can't be."""
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f".{cached.stem}.{os.getpid()}.npy")
        np.save(partial, array)
        os.replace(partial, cached)
    except OSError:
        pass


def _decode(path: Path, expect_ndim: int | None) -> np.ndarray:
    """The checked array of the IDX file at `path`, read and decompressed."""
    data = _read_bytes(path)
    ndim = _check_magic(path, data, expect_ndim)
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise JaxcnnError(
            f"{path}: truncated header: magic number says {ndim} dims ({header_size}-byte header) "
            f"but file holds {len(data)} bytes{_after(path)}; re-download it")
    dims = struct.unpack(f">{ndim}i", data[4:header_size])
    for axis, size in enumerate(dims):
        if size <= 0:
            raise JaxcnnError(
                f"{path}: invalid header: size of dimension {axis} is {size}, expected a positive number; "
                "re-download it")
    expected = header_size + math.prod(dims)
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else f"{len(data) - expected} trailing bytes"
        raise JaxcnnError(
            f"{path}: {problem}: header says {_describe(dims)} ({expected} bytes) "
            f"but file holds {len(data)} bytes{_after(path)}; re-download it")
    return np.frombuffer(data, np.uint8, offset=header_size).reshape(dims).copy()


def load_idx_dataset(directory: str | os.PathLike, prefix_train: str = "train",
                     prefix_test: str = "t10k") -> tuple[Split, Split]:
    """(train, test) splits from the four MNIST-style IDX files in `directory`.

    Files are `<prefix>-images-idx3-ubyte[.gz]` and `<prefix>-labels-idx1-ubyte[.gz]`;
    images get a channel axis, (N, H, W, 1).
    """
    directory = Path(directory)
    stems = [f"{prefix}-{kind}" for prefix in (prefix_train, prefix_test)
             for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]
    train_images, train_labels, test_images, test_labels = _locate(directory, stems)
    train = _load_pair(train_images, train_labels)
    test = _load_pair(test_images, test_labels)
    if train.images.shape[1:] != test.images.shape[1:]:
        raise JaxcnnError(
            f"{test_images}: images are {_hw(test.images)} but {train_images} has {_hw(train.images)}; "
            "the files come from different datasets, re-download them")
    return train, test


def _read_bytes(path: Path) -> bytes:
    problem = not_a_regular_file(path)
    if problem:
        problem = "file not found" if problem == "does not exist" else problem
        raise JaxcnnError(f"{path}: {problem}; expected an IDX file there, check the path")
    data = path.read_bytes()
    if path.suffix != ".gz":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise JaxcnnError(f"{path}: corrupt gzip file ({exc}); re-download it") from None


def _check_magic(path: Path, data: bytes, expect_ndim: int | None) -> int:
    """The number of dimensions announced by the magic number, after checking it."""
    if len(data) < 4:
        raise JaxcnnError(
            f"{path}: not an IDX file: {len(data)} bytes{_after(path)}, too short for the 4-byte magic number; "
            "re-download it")
    zeros, type_code, ndim = data[:2], data[2], data[3]
    if zeros == b"\0\0" and type_code == UINT8_TYPE_CODE and ndim >= 1 and expect_ndim in (None, ndim):
        return ndim
    if expect_ndim is None:
        expected = "0x000008NN (uint8 data with NN dims)"
    else:
        expected = f"0x{UINT8_TYPE_CODE << 8 | expect_ndim:08x} (uint8 {_KINDS.get(expect_ndim, 'data')})"
    raise JaxcnnError(
        f"{path}: bad magic number 0x{int.from_bytes(data[:4], 'big'):08x}, expected {expected}; "
        "check that this is the right file, or re-download it")


def _load_pair(images_path: Path, labels_path: Path) -> Split:
    images = read_idx(images_path, expect_ndim=3)
    labels = read_idx(labels_path, expect_ndim=1)
    if len(images) != len(labels):
        raise JaxcnnError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; "
            "the files do not belong together, re-download them")
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        raise JaxcnnError(
            f"{labels_path}: label {labels[bad[0]]} at index {bad[0]} is outside 0..{NUM_CLASSES - 1} "
            f"({bad.size} such labels); re-download it")
    return Split(images[..., None], labels.astype(np.int32))


def _locate(directory: Path, stems: list[str]) -> list[Path]:
    """The path of each file stem, gzipped if present, else raw; one error listing all expected paths."""
    found = [next((p for p in (directory / f"{s}.gz", directory / s) if p.is_file()), None) for s in stems]
    if None in found:
        if not directory.is_dir():
            problem = "directory not found"
        else:
            problem = "; ".join(_what_is_there(directory, s) for s, p in zip(stems, found) if p is None)
        expected = ", ".join(str(directory / f"{s}.gz") for s in stems)
        raise JaxcnnError(
            f"{directory}: {problem}; expected the IDX files {expected} (or the same without .gz); "
            f"put them there, or point --data-dir / JAXCNN_DATA_DIR at the folder that holds {directory.name}/")
    return found


def _what_is_there(directory: Path, stem: str) -> str:
    """'missing NAME.gz', or what stands at its path instead of a file (a folder, a FIFO, a dangling
    link), so that a user does not look for a file that seems to be there."""
    for path in (directory / f"{stem}.gz", directory / stem):
        problem = not_a_regular_file(path)
        if problem != "does not exist":
            return f"{path.name} {problem}"
    return f"missing {stem}.gz"


def _describe(dims: tuple[int, ...]) -> str:
    if len(dims) == 1:
        return f"{dims[0]} labels"
    if len(dims) == 3:
        return f"{dims[0]} images of {dims[1]}x{dims[2]}"
    return f"an array of shape {'x'.join(map(str, dims))}"


def _after(path: Path) -> str:
    return " after decompression" if path.suffix == ".gz" else ""


def _hw(images: np.ndarray) -> str:
    return f"{images.shape[1]}x{images.shape[2]}"

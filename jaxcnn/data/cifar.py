"""CIFAR-10 and CIFAR-100 from their canonical *binary* releases, parsed with NumPy.

The Python release of CIFAR is a set of pickles, and unpickling a crafted file runs code, so it is
never read. The binary release is fixed-length records:

- CIFAR-10 (`cifar-10-batches-bin/`): `data_batch_1.bin` ... `data_batch_5.bin`, `test_batch.bin`;
  each record is 1 label byte then 3,072 pixel bytes.
- CIFAR-100 (`cifar-100-binary/`): `train.bin`, `test.bin`; each record is a coarse-label byte, a
  fine-label byte, then 3,072 pixel bytes. jaxcnn trains on the 100 fine labels.

Pixels are channel-major (1,024 red, 1,024 green, 1,024 blue, each 32x32 row-major) and become
(N, 32, 32, 3). Files are looked for in `DATA_DIR/cifar10/` (or `cifar100/`), in the release's own
folder inside it, or in the release's own folder directly under `DATA_DIR`.
"""

from __future__ import annotations

import dataclasses
import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from jaxcnn.data.splits import Split
from jaxcnn.errors import JaxcnnError

IMAGE_SHAPE = (32, 32, 3)
PIXEL_BYTES = 32 * 32 * 3
CIFAR10_CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
                       "dog", "frog", "horse", "ship", "truck")


@dataclasses.dataclass(frozen=True)
class BinaryRelease:
    """The layout of one CIFAR binary release."""

    folder: str                    # the dataset's folder under the data directory
    release_folder: str            # the folder the release's archive unpacks to
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_bytes: int               # bytes before the pixels in each record
    label_offset: int              # which of those bytes is the label jaxcnn uses
    num_classes: int
    names_file: str | None         # the release's class-name list (one per line), if it has one

    @property
    def record_bytes(self) -> int:
        return self.label_bytes + PIXEL_BYTES

    @property
    def files(self) -> tuple[str, ...]:
        return self.train_files + self.test_files


CIFAR10 = BinaryRelease("cifar10", "cifar-10-batches-bin",
                        tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",),
                        label_bytes=1, label_offset=0, num_classes=10, names_file=None)
CIFAR100 = BinaryRelease("cifar100", "cifar-100-binary", ("train.bin",), ("test.bin",),
                         label_bytes=2, label_offset=1, num_classes=100, names_file="fine_label_names.txt")


def load_cifar10(root: Path) -> tuple[Split, Split, tuple[str, ...]]:
    """(train, test, class_names) of CIFAR-10 from the binary release under `root`."""
    return _load(CIFAR10, root)


def load_cifar100(root: Path) -> tuple[Split, Split, tuple[str, ...]]:
    """(train, test, class_names) of CIFAR-100 (fine labels) from the binary release under `root`."""
    return _load(CIFAR100, root)


def read_records(path: str | os.PathLike, release: BinaryRelease) -> Split:
    """The images and labels of one binary file, after checking it holds whole records and valid labels."""
    path = Path(path)
    data = np.fromfile(path, np.uint8)
    if data.size == 0 or data.size % release.record_bytes:
        whole, extra = divmod(data.size, release.record_bytes)
        problem = "empty" if data.size == 0 else (
            f"{data.size} bytes is {whole} whole {release.record_bytes}-byte records plus {extra} bytes "
            "(truncated or not a CIFAR binary file)")
        raise JaxcnnError(f"{path}: {problem}; expected {release.record_bytes}-byte records "
                          f"({release.label_bytes} label byte(s) + {PIXEL_BYTES} pixels); re-download it")
    records = data.reshape(-1, release.record_bytes)
    labels = records[:, release.label_offset].astype(np.int32)
    bad = np.flatnonzero(labels >= release.num_classes)
    if bad.size:
        raise JaxcnnError(
            f"{path}: label {labels[bad[0]]} in record {bad[0]} is outside 0..{release.num_classes - 1} "
            f"({bad.size} such records); the file is corrupt or from another dataset, re-download it")
    images = records[:, release.label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Split(np.ascontiguousarray(images), labels)


def find_release(release: BinaryRelease, root: Path) -> Path | None:
    """The folder holding every file of `release`, or None."""
    for folder in (root / release.folder, root / release.folder / release.release_folder,
                   root / release.release_folder):
        if all((folder / name).is_file() for name in release.files):
            return folder
    return None


def extract_release(release: BinaryRelease, archive: Path, destination: Path) -> None:
    """Copies the release's data files out of its `.tar.gz` archive into `destination`.

    Only the expected members are read, by exact name, and written under names chosen here (no
    path from the archive is used), each through a temporary file renamed when complete.
    """
    wanted = release.files + ((release.names_file,) if release.names_file else ())
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in wanted:
                try:
                    member = tar.getmember(f"{release.release_folder}/{name}")
                except KeyError:
                    if name == release.names_file:
                        continue
                    raise JaxcnnError(f"{archive}: has no member {release.release_folder}/{name}; "
                                      "it is not the CIFAR binary release, delete it and re-download") from None
                if not member.isfile():
                    raise JaxcnnError(f"{archive}: member {member.name} is not a regular file; "
                                      "delete the archive and re-download it")
                _write_atomically(destination / name, tar.extractfile(member))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise JaxcnnError(f"{archive}: cannot be unpacked ({e}); delete it and re-download") from e


def _write_atomically(path: Path, source) -> None:
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            while chunk := source.read(1 << 20):
                out.write(chunk)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def _load(release: BinaryRelease, root: Path) -> tuple[Split, Split, tuple[str, ...]]:
    folder = find_release(release, root)
    if folder is None:
        expected = ", ".join(release.files)
        raise JaxcnnError(
            f"{root / release.folder}: CIFAR binary files not found; expected {expected} in "
            f"{root / release.folder}/ (or in its {release.release_folder}/ subfolder, or in "
            f"{root / release.release_folder}/); put the files of the binary release there, or pass "
            f"--download")
    train = _concatenate([read_records(folder / name, release) for name in release.train_files])
    test = _concatenate([read_records(folder / name, release) for name in release.test_files])
    return train, test, _class_names(release, folder)


def _concatenate(splits: list[Split]) -> Split:
    if len(splits) == 1:
        return splits[0]
    return Split(np.concatenate([s.images for s in splits]), np.concatenate([s.labels for s in splits]))


def _class_names(release: BinaryRelease, folder: Path) -> tuple[str, ...]:
    if release.names_file is None:
        return CIFAR10_CLASS_NAMES
    path = folder / release.names_file
    if not path.is_file():
        return tuple(str(c) for c in range(release.num_classes))
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if len(names) != release.num_classes:
        raise JaxcnnError(f"{path}: {len(names)} class names, expected {release.num_classes} (one per line); "
                          "re-download it or delete it (numbers are used instead)")
    return names

"""Download when asked (`--download`, `dataset.download`): fetch a dataset's missing canonical files.

Each file is fetched from the first mirror that answers, hashed while it streams into a temporary
file next to its destination, and renamed into place only when its sha256 equals the published one.
A failed or refused download leaves nothing behind, and nothing half-written is ever resumed.
Without network the error lists the files, their checksums and the folder to put them in.

`RELEASES` is the one table of mirrors and checksums (tests point it at a server on 127.0.0.1).
The checksums are the published ones: MNIST and Fashion-MNIST as in TFDS's checksum tables (they
equal the sha256 of the files in shared/data); the CIFAR archives as in TFDS's tables, whose md5
(c32a1d4ab5d03f1284b67883e8d87530 for CIFAR-10) is the one on the CIFAR page.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

from jaxcnn.data import cifar
from jaxcnn.errors import JaxcnnError

TIMEOUT_S = 30.0
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    name: str      # the file's name on the mirror and in the dataset folder
    sha256: str
    size: int      # bytes, for the messages


@dataclasses.dataclass(frozen=True)
class Release:
    """A dataset's canonical files, where to get them, and how to tell the dataset is already there."""

    folder: str                              # subfolder of the data directory
    mirrors: tuple[str, ...]                 # base URLs, tried in order; a file's URL is base + name
    files: tuple[RemoteFile, ...]
    present: Callable[[Path], bool]          # root -> whether the dataset can already be loaded
    unpack: Callable[[Path], None] | None = None  # run on the dataset folder after downloading


def _idx_present(folder: str) -> Callable[[Path], bool]:
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    return lambda root: all((root / folder / f"{s}.gz").is_file() or (root / folder / s).is_file() for s in stems)


def _idx_files(sums: dict[str, tuple[str, int]]) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(name, digest, size) for name, (digest, size) in sums.items())


def _cifar_unpack(release: cifar.BinaryRelease, archive: str) -> Callable[[Path], None]:
    return lambda folder: cifar.extract_release(release, folder / archive, folder)


RELEASES = MappingProxyType({
    "mnist": Release(
        "mnist",
        ("https://storage.googleapis.com/cvdf-datasets/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
        _idx_files({
            "train-images-idx3-ubyte.gz": ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422),
            "train-labels-idx1-ubyte.gz": ("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881),
            "t10k-images-idx3-ubyte.gz": ("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877),
            "t10k-labels-idx1-ubyte.gz": ("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542),
        }),
        _idx_present("mnist")),
    "fashion_mnist": Release(
        "fashion_mnist",
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        _idx_files({
            "train-images-idx3-ubyte.gz": ("3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", 26421880),
            "train-labels-idx1-ubyte.gz": ("a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 29515),
            "t10k-images-idx3-ubyte.gz": ("346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 4422102),
            "t10k-labels-idx1-ubyte.gz": ("67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 5148),
        }),
        _idx_present("fashion_mnist")),
    "cifar10": Release(
        "cifar10", ("https://www.cs.toronto.edu/~kriz/",),
        (RemoteFile("cifar-10-binary.tar.gz",
                    "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd", 170052171),),
        lambda root: cifar.find_release(cifar.CIFAR10, root) is not None,
        _cifar_unpack(cifar.CIFAR10, "cifar-10-binary.tar.gz")),
    "cifar100": Release(
        "cifar100", ("https://www.cs.toronto.edu/~kriz/",),
        (RemoteFile("cifar-100-binary.tar.gz",
                    "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec", 168513733),),
        lambda root: cifar.find_release(cifar.CIFAR100, root) is not None,
        _cifar_unpack(cifar.CIFAR100, "cifar-100-binary.tar.gz")),
})


def ensure_downloaded(name: str, root: Path, log: Callable[[str], None] | None = None) -> None:
    """Makes dataset `name` loadable from `root`, downloading (and unpacking) what is missing.

    Files already in place are checked against their checksum before use. Raises `JaxcnnError`
    listing every file that could not be fetched, with where to put it by hand.
    """
    release = RELEASES[name]
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    if release.present(root):
        return
    folder = root / release.folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JaxcnnError(f"{folder}: cannot be created ({e.strerror}); pass a writable --data-dir") from e
    failures = []
    for remote in release.files:
        path = folder / remote.name
        if path.is_file():
            _check_existing(path, remote)
            continue
        reasons = []
        for base in release.mirrors:
            url = base + remote.name
            log(f"downloading {url} ({remote.size / 1e6:.1f} MB) -> {path}")
            try:
                fetch(url, path, remote.sha256)
                break
            except (OSError, http.client.HTTPException, ValueError) as e:  # ValueError: checksum
                reasons.append(f"{url}: {e}")
        else:
            failures.append((remote, reasons))
    if failures:
        listing = "; ".join(f"{r.name} ({r.size:,} bytes, sha256 {r.sha256})" for r, _ in failures)
        why = "; ".join(reason for _, reasons in failures for reason in reasons)
        raise JaxcnnError(
            f"{name}: could not download {len(failures)} file(s) ({why}); without network, put {listing} "
            f"into {folder}/ and run again")
    if release.unpack is not None:
        release.unpack(folder)


def fetch(url: str, path: Path, sha256: str) -> None:
    """Downloads `url` to `path` through a temporary file, keeping it only if its sha256 matches.

    Raises OSError when the transfer fails and ValueError when the checksum differs; either way no
    file is left behind (neither `path` nor the temporary file).
    """
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        digest = hashlib.sha256()
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise ValueError(f"sha256 {digest.hexdigest()} differs from the published {sha256}; refused")
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_existing(path: Path, remote: RemoteFile) -> None:
    actual = sha256_of(path)
    if actual != remote.sha256:
        raise JaxcnnError(f"{path}: sha256 {actual} differs from the published {remote.sha256}; "
                          "the file is corrupt or another version: delete it and run again with --download")

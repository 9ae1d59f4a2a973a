"""Download when asked: against an HTTP server on 127.0.0.1 serving generated files."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import socket
import threading
from pathlib import Path
from types import MappingProxyType

import pytest

from conftest import real_data_dir, requires_mnist
from jaxcnn.data import download, load_dataset
from jaxcnn.data.download import Release, RemoteFile, sha256_of
from jaxcnn.errors import JaxcnnError
from test_cifar import release_archive, write_cifar10
from test_data import IDX_FILES, fake_mnist_dir


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def served(tmp_path):
    """(folder, base URL): files put in the folder are served at base URL + name."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=folder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


def mnist_release(folder: Path, mirrors: tuple[str, ...], wrong: str | None = None) -> Release:
    """The real `mnist` release entry, with checksums of the generated files in `folder` (`wrong`
    gets a wrong one) and the given mirrors."""
    files = tuple(RemoteFile(f"{stem}.gz", "0" * 64 if f"{stem}.gz" == wrong else sha256_of(folder / f"{stem}.gz"),
                             (folder / f"{stem}.gz").stat().st_size) for stem in IDX_FILES)
    return dataclasses.replace(download.RELEASES["mnist"], mirrors=mirrors, files=files)


def use_release(monkeypatch, name: str, release: Release) -> None:
    monkeypatch.setattr(download, "RELEASES", MappingProxyType({**download.RELEASES, name: release}))


def test_download_fetches_verifies_and_then_loads(tmp_path, served, monkeypatch):
    mirror, url = served
    fake_mnist_dir(mirror)
    use_release(monkeypatch, "mnist", mnist_release(mirror, (url,)))
    dataset = load_dataset("mnist", data_dir=tmp_path / "data", val_fraction=0.0, download=True)
    assert len(dataset.train) == 30 and len(dataset.test) == 10
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == sorted(f"{s}.gz" for s in IDX_FILES)


def test_wrong_checksum_is_refused_and_leaves_no_file(tmp_path, served, monkeypatch):
    mirror, url = served
    fake_mnist_dir(mirror)
    use_release(monkeypatch, "mnist", mnist_release(mirror, (url,), wrong="train-labels-idx1-ubyte.gz"))
    with pytest.raises(JaxcnnError, match=r"could not download 1 file\(s\) \(.*train-labels-idx1-ubyte.gz: "
                                          r"sha256 [0-9a-f]{64} differs from the published 0{64}; refused"):
        load_dataset("mnist", data_dir=tmp_path / "data", download=True)
    left = sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir())
    assert "train-labels-idx1-ubyte.gz" not in left and not [n for n in left if n.endswith(".part")]


def test_offline_lists_the_files_and_where_to_put_them(tmp_path, monkeypatch):
    fake_mnist_dir(tmp_path / "gen")
    use_release(monkeypatch, "mnist", mnist_release(tmp_path / "gen", (closed_port_url(),)))
    with pytest.raises(JaxcnnError) as caught:
        load_dataset("mnist", data_dir=tmp_path / "data", download=True)
    message = str(caught.value)
    assert "could not download 4 file(s)" in message
    assert f"into {tmp_path / 'data' / 'mnist'}/" in message
    for stem in IDX_FILES:
        assert f"{stem}.gz (" in message
    assert not list((tmp_path / "data" / "mnist").iterdir())


def test_next_mirror_is_tried_when_one_fails(tmp_path, served, monkeypatch):
    mirror, url = served
    fake_mnist_dir(mirror)
    use_release(monkeypatch, "mnist", mnist_release(mirror, (url + "missing/", url)))
    assert len(load_dataset("mnist", data_dir=tmp_path / "data", val_fraction=0.0, download=True).train) == 30


def test_present_dataset_needs_no_network(tmp_path, monkeypatch):
    fake_mnist_dir(tmp_path / "data" / "mnist")
    use_release(monkeypatch, "mnist", mnist_release(tmp_path / "data" / "mnist", (closed_port_url(),)))
    assert len(load_dataset("mnist", data_dir=tmp_path / "data", val_fraction=0.0, download=True).test) == 10


def test_cifar10_archive_is_downloaded_and_unpacked(tmp_path, served, monkeypatch):
    mirror, url = served
    images, labels = write_cifar10(tmp_path / "gen")
    archive = release_archive(mirror / "cifar-10-binary.tar.gz",
                              {f"cifar-10-batches-bin/{p.name}": p.read_bytes() for p in (tmp_path / "gen").iterdir()})
    release = dataclasses.replace(download.RELEASES["cifar10"], mirrors=(url,), files=(
        RemoteFile(archive.name, sha256_of(archive), archive.stat().st_size),))
    use_release(monkeypatch, "cifar10", release)
    dataset = load_dataset("cifar10", data_dir=tmp_path / "data", val_fraction=0.0, download=True)
    assert dataset.train.images.shape == (20, 32, 32, 3)
    assert dataset.train.labels.tolist() == labels.tolist()


def test_corrupt_file_already_in_place_is_reported_not_replaced(tmp_path, monkeypatch):
    folder = fake_mnist_dir(tmp_path / "data" / "mnist")
    release = mnist_release(folder, (closed_port_url(),))
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"corrupt")
    use_release(monkeypatch, "mnist", release)
    with pytest.raises(JaxcnnError, match="train-images-idx3-ubyte.gz: sha256 .* differs from the published"):
        load_dataset("mnist", data_dir=tmp_path / "data", download=True)
    assert (folder / "train-images-idx3-ubyte.gz").read_bytes() == b"corrupt"


@requires_mnist
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_published_checksums_match_the_canonical_files(name):
    for remote in download.RELEASES[name].files:
        assert sha256_of(real_data_dir() / name / remote.name) == remote.sha256

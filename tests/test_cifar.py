"""CIFAR-10/100 binary files: parsing, the accepted folders, and each corrupt variant's error."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from jaxcnn.data import load_dataset
from jaxcnn.data.cifar import CIFAR10, CIFAR10_CLASS_NAMES, CIFAR100, extract_release, read_records
from jaxcnn.errors import JaxcnnError


def cifar_records(images: np.ndarray, labels: np.ndarray, coarse: np.ndarray | None = None) -> bytes:
    """Binary-release records of `images` (N, 32, 32, 3): label byte(s), then channel-major pixels."""
    pixels = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    heads = [labels[:, None]] if coarse is None else [coarse[:, None], labels[:, None]]
    return np.concatenate([*heads, pixels], axis=1).astype(np.uint8).tobytes()


def write_cifar10(folder: Path, per_file: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The six CIFAR-10 files with `per_file` random records each; returns the train images/labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    all_images, all_labels = [], []
    for name in CIFAR10.files:
        images = rng.integers(0, 256, (per_file, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, per_file).astype(np.uint8)
        (folder / name).write_bytes(cifar_records(images, labels))
        if name in CIFAR10.train_files:
            all_images.append(images), all_labels.append(labels)
    return np.concatenate(all_images), np.concatenate(all_labels)


def test_cifar10_loads_images_in_hwc_order_with_labels(tmp_path):
    images, labels = write_cifar10(tmp_path / "cifar10")
    dataset = load_dataset("cifar10", data_dir=tmp_path, val_fraction=0.0)
    assert dataset.train.images.shape == (20, 32, 32, 3) and dataset.test.images.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(dataset.train.images, images)
    np.testing.assert_array_equal(dataset.train.labels, labels.astype(np.int32))
    assert dataset.class_names == CIFAR10_CLASS_NAMES and dataset.num_classes == 10


def test_record_layout_is_label_then_red_green_blue_planes(tmp_path):
    record = np.zeros(1 + 3072, np.uint8)
    record[0] = 7
    record[1 + 0 * 1024 + 5 * 32 + 6] = 11  # red of pixel (5, 6)
    record[1 + 1 * 1024 + 5 * 32 + 6] = 22  # green
    record[1 + 2 * 1024 + 31 * 32 + 0] = 33  # blue of pixel (31, 0)
    (tmp_path / "one.bin").write_bytes(record.tobytes())
    split = read_records(tmp_path / "one.bin", CIFAR10)
    assert split.labels.tolist() == [7]
    assert split.images[0, 5, 6].tolist() == [11, 22, 0] and split.images[0, 31, 0, 2] == 33


@pytest.mark.parametrize("layout", ["cifar10/cifar-10-batches-bin", "cifar-10-batches-bin"])
def test_cifar10_is_found_in_the_release_folder_name_too(tmp_path, layout):
    write_cifar10(tmp_path / layout)
    assert len(load_dataset("cifar10", data_dir=tmp_path, val_fraction=0.0).train) == 20


def test_cifar100_uses_fine_labels_and_the_release_names(tmp_path):
    folder = tmp_path / "cifar100" / "cifar-100-binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    fine, coarse = np.array([0, 99, 5, 42, 7, 3]), np.array([19, 0, 1, 2, 3, 4])
    for name in ("train.bin", "test.bin"):
        (folder / name).write_bytes(cifar_records(images, fine, coarse))
    (folder / "fine_label_names.txt").write_text("\n".join(f"class{i}" for i in range(100)) + "\n\n")
    dataset = load_dataset("cifar100", data_dir=tmp_path, val_fraction=0.0)
    assert dataset.train.labels.tolist() == fine.tolist()
    np.testing.assert_array_equal(dataset.test.images, images)
    assert dataset.num_classes == 100 and dataset.class_names[99] == "class99"


def test_missing_files_error_names_the_folder_and_the_files(tmp_path):
    with pytest.raises(JaxcnnError, match=r"cifar10: CIFAR binary files not found; expected data_batch_1.bin.*"
                                          r"test_batch.bin.*--download"):
        load_dataset("cifar10", data_dir=tmp_path)


@pytest.mark.parametrize("cut, message", [
    (100, "6046 bytes is 1 whole 3073-byte records plus 2973 bytes"),
    (3073 * 2, "empty"),
])
def test_truncated_file_is_a_clear_error(tmp_path, cut, message):
    write_cifar10(tmp_path / "cifar10", per_file=2)
    path = tmp_path / "cifar10" / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(JaxcnnError, match=f"data_batch_3.bin: ({message}).*re-download it"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_label_out_of_range_is_a_clear_error(tmp_path):
    write_cifar10(tmp_path / "cifar10", per_file=2)
    path = tmp_path / "cifar10" / "test_batch.bin"
    data = bytearray(path.read_bytes())
    data[3073] = 10  # the second record's label
    path.write_bytes(bytes(data))
    with pytest.raises(JaxcnnError, match=r"test_batch.bin: label 10 in record 1 is outside 0..9"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_wrong_number_of_class_names_is_a_clear_error(tmp_path):
    folder = tmp_path / "cifar100"
    folder.mkdir()
    records = cifar_records(np.zeros((1, 32, 32, 3), np.uint8), np.array([1]), np.array([0]))
    for name in ("train.bin", "test.bin"):
        (folder / name).write_bytes(records)
    (folder / "fine_label_names.txt").write_text("a\nb\n")
    with pytest.raises(JaxcnnError, match="fine_label_names.txt: 2 class names, expected 100"):
        load_dataset("cifar100", data_dir=tmp_path)


def release_archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def test_extract_release_copies_only_the_data_files(tmp_path):
    source = tmp_path / "src"
    write_cifar10(source)
    members = {f"cifar-10-batches-bin/{n}": (source / n).read_bytes() for n in CIFAR10.files}
    members["../evil.bin"] = b"x"
    archive = release_archive(tmp_path / "cifar-10-binary.tar.gz", members)
    out = tmp_path / "out"
    out.mkdir()
    extract_release(CIFAR10, archive, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(CIFAR10.files)
    assert not (tmp_path / "evil.bin").exists()


def test_extract_release_rejects_an_archive_without_the_release(tmp_path):
    archive = release_archive(tmp_path / "a.tar.gz", {"other/file.txt": b"hello"})
    with pytest.raises(JaxcnnError, match="has no member cifar-10-batches-bin/data_batch_1.bin"):
        extract_release(CIFAR10, archive, tmp_path)
    assert not list(tmp_path.glob(".*.part"))


def test_cifar100_without_names_file_numbers_the_classes(tmp_path):
    folder = tmp_path / "cifar100"
    folder.mkdir()
    records = cifar_records(np.zeros((2, 32, 32, 3), np.uint8), np.array([1, 2]), np.array([0, 0]))
    for name in CIFAR100.files:
        (folder / name).write_bytes(records)
    assert load_dataset("cifar100", data_dir=tmp_path, val_fraction=0.0).class_names[:3] == ("0", "1", "2")

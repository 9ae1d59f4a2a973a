"""Datasets: the IDX reader and its error messages, splits, digits, synthetic, the registry, real MNIST."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import real_data_dir, requires_mnist
from jaxcnn.data import Split, expected_input_shape, expected_num_classes, list_datasets, load_dataset, resolve_data_dir, train_val_split
from jaxcnn.data.idx import decoded_cache_file, load_idx_dataset, read_idx
from jaxcnn.errors import JaxcnnError

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file holding `array` (uint8); `magic` overrides the computed magic number."""
    magic = 0x0800 | array.ndim if magic is None else magic
    return struct.pack(f">I{array.ndim}i", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write(path: Path, payload: bytes) -> Path:
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def fake_mnist_dir(directory: Path, n_train: int = 30, n_test: int = 10, hw: int = 28) -> Path:
    """A folder with the four gzipped IDX files of a tiny MNIST look-alike (label i % 10)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write(directory / f"{prefix}-images-idx3-ubyte.gz", idx_bytes(rng.integers(0, 256, (n, hw, hw))))
        write(directory / f"{prefix}-labels-idx1-ubyte.gz", idx_bytes(np.arange(n) % 10))
    return directory


def indexed_split(n: int) -> Split:
    """A split whose example i has pixels encoding i (two bytes) and label i % 10."""
    i = np.arange(n)
    images = np.stack([i // 256, i % 256], axis=-1).astype(np.uint8).reshape(n, 1, 1, 2)
    return Split(images, (i % 10).astype(np.int32))


def indices_of(split: Split) -> np.ndarray:
    return split.images[:, 0, 0, 0].astype(int) * 256 + split.images[:, 0, 0, 1]


# --- IDX reader -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["images.idx3", "images.idx3.gz"])
def test_read_idx_reads_raw_and_gzipped_files(tmp_path, name):
    images = np.random.default_rng(1).integers(0, 256, (5, 3, 4)).astype(np.uint8)
    path = write(tmp_path / name, idx_bytes(images))
    np.testing.assert_array_equal(read_idx(path, expect_ndim=3), images)


def test_a_gzipped_file_is_decoded_once_and_again_when_it_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    images = np.random.default_rng(2).integers(0, 256, (5, 3, 4)).astype(np.uint8)
    path = write(tmp_path / "images.idx3.gz", idx_bytes(images))
    np.testing.assert_array_equal(read_idx(path, expect_ndim=3), images)
    kept = decoded_cache_file(path)
    assert kept.is_file() and kept.parent == tmp_path / "cache" / "jaxcnn" / "decoded"
    np.testing.assert_array_equal(np.load(kept), images)
    from_cache = read_idx(path, expect_ndim=3)
    np.testing.assert_array_equal(from_cache, images)
    assert not from_cache.flags.writeable  # the kept file's pages, mapped: nothing read until used
    with pytest.raises(JaxcnnError, match="bad magic number"):  # the kept array is checked as the file was
        read_idx(path, expect_ndim=1)
    changed = images[::-1].copy()
    write(path, idx_bytes(changed))
    os.utime(path, ns=(kept.stat().st_mtime_ns + 10**9,) * 2)  # a new modification time, as a rewrite has
    np.testing.assert_array_equal(read_idx(path, expect_ndim=3), changed)
    kept.write_bytes(kept.read_bytes()[:-5])  # a cache entry cut short is decoded again
    np.testing.assert_array_equal(read_idx(path, expect_ndim=3), changed)
    kept.write_bytes(b"not an array")  # so is a damaged one
    np.testing.assert_array_equal(read_idx(path, expect_ndim=3), changed)


def test_the_decoded_cache_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("JAXCNN_DECODED_CACHE", "0")
    path = write(tmp_path / "labels.idx1.gz", idx_bytes(np.arange(7)))
    np.testing.assert_array_equal(read_idx(path, expect_ndim=1), np.arange(7))
    assert decoded_cache_file(path) is None and not (tmp_path / "cache").exists()


def test_read_idx_reads_labels(tmp_path):
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "l.gz", idx_bytes(labels)), expect_ndim=1), labels)


@pytest.mark.parametrize("name", ["images", "images.gz"])
def test_truncated_payload_is_an_error_naming_the_file_and_sizes(tmp_path, name):
    path = write(tmp_path / name, idx_bytes(np.zeros((60, 28, 28)))[:1000])
    with pytest.raises(JaxcnnError, match="truncated: header says 60 images of 28x28 \\(47056 bytes\\) "
                                          "but file holds 1000 bytes") as info:
        read_idx(path, expect_ndim=3)
    assert str(path) in str(info.value)


def test_trailing_bytes_are_an_error(tmp_path):
    path = write(tmp_path / "labels.gz", idx_bytes(np.zeros(10)) + b"xyz")
    with pytest.raises(JaxcnnError, match="3 trailing bytes") as info:
        read_idx(path, expect_ndim=1)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("magic", [0x12345678, 0x00000903, 0x00000D03])
def test_wrong_magic_number_is_an_error(tmp_path, magic):
    path = write(tmp_path / "images.gz", idx_bytes(np.zeros((2, 2, 2)), magic=magic))
    with pytest.raises(JaxcnnError, match=f"bad magic number 0x{magic:08x}, expected 0x00000803") as info:
        read_idx(path, expect_ndim=3)
    assert str(path) in str(info.value)


def test_labels_file_where_images_expected_is_an_ndim_error(tmp_path):
    path = write(tmp_path / "labels.gz", idx_bytes(np.zeros(4)))
    with pytest.raises(JaxcnnError, match=r"bad magic number 0x00000801, expected 0x00000803 \(uint8 images\)") as info:
        read_idx(path, expect_ndim=3)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("payload, message", [
    (b"\0\0", "too short for the 4-byte magic number"),
    (b"\0\0\x08\x03\0\0\0\x02", "truncated header"),
    (struct.pack(">I3i", 0x0803, 2, 0, 2), "size of dimension 1 is 0"),
    (struct.pack(">I3i", 0x0803, 2, -5, 2), "size of dimension 1 is -5"),
])
def test_unreadable_header_is_an_error(tmp_path, payload, message):
    path = write(tmp_path / "images.gz", payload)
    with pytest.raises(JaxcnnError, match=message) as info:
        read_idx(path, expect_ndim=3)
    assert str(path) in str(info.value)


def test_bad_gzip_crc_is_an_error(tmp_path):
    compressed = bytearray(gzip.compress(idx_bytes(np.zeros(10))))
    compressed[-8] ^= 0xFF  # the CRC32 of the trailer
    path = tmp_path / "labels.gz"
    path.write_bytes(bytes(compressed))
    with pytest.raises(JaxcnnError, match="corrupt gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_cut_gzip_stream_is_an_error(tmp_path):
    path = tmp_path / "images.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.arange(600).reshape(6, 10, 10)))[:-20])
    with pytest.raises(JaxcnnError, match="corrupt gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(JaxcnnError, match="file not found") as info:
        read_idx(tmp_path / "nope.gz")
    assert str(tmp_path / "nope.gz") in str(info.value)


# --- IDX datasets -----------------------------------------------------------------------------

def test_load_idx_dataset_adds_channel_axis_and_int32_labels(tmp_path):
    train, test = load_idx_dataset(fake_mnist_dir(tmp_path))
    assert train.images.shape == (30, 28, 28, 1) and test.images.shape == (10, 28, 28, 1)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
    np.testing.assert_array_equal(train.labels, np.arange(30) % 10)


def test_load_idx_dataset_accepts_uncompressed_files(tmp_path):
    directory = fake_mnist_dir(tmp_path)
    for stem in IDX_FILES:
        packed = directory / f"{stem}.gz"
        (directory / stem).write_bytes(gzip.decompress(packed.read_bytes()))
        packed.unlink()
    train, test = load_idx_dataset(directory)
    assert (len(train), len(test)) == (30, 10)


def test_image_and_label_count_mismatch_names_both_files_and_counts(tmp_path):
    directory = fake_mnist_dir(tmp_path)
    labels = write(directory / "train-labels-idx1-ubyte.gz", idx_bytes(np.arange(29) % 10))
    with pytest.raises(JaxcnnError, match="holds 30 images but .* holds 29 labels") as info:
        load_idx_dataset(directory)
    assert str(directory / "train-images-idx3-ubyte.gz") in str(info.value) and str(labels) in str(info.value)


def test_label_out_of_range_is_an_error(tmp_path):
    directory = fake_mnist_dir(tmp_path)
    labels = write(directory / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.array([0, 1, 12] + [0] * 7)))
    with pytest.raises(JaxcnnError, match="label 12 at index 2 is outside 0..9") as info:
        load_idx_dataset(directory)
    assert str(labels) in str(info.value)


def test_train_and_test_image_sizes_must_agree(tmp_path):
    directory = fake_mnist_dir(tmp_path)
    write(directory / "t10k-images-idx3-ubyte.gz", idx_bytes(np.zeros((10, 32, 32))))
    with pytest.raises(JaxcnnError, match="images are 32x32 but .* has 28x28"):
        load_idx_dataset(directory)


def test_missing_file_in_data_dir_lists_expected_paths(tmp_path):
    directory = fake_mnist_dir(tmp_path / "mnist")
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(JaxcnnError, match="missing t10k-labels-idx1-ubyte.gz") as info:
        load_dataset("mnist", data_dir=tmp_path)
    for stem in IDX_FILES:
        assert str(directory / f"{stem}.gz") in str(info.value)


def test_missing_dataset_subfolder_lists_expected_paths(tmp_path):
    with pytest.raises(JaxcnnError, match="directory not found") as info:
        load_dataset("fashion_mnist", data_dir=tmp_path)
    for stem in IDX_FILES:
        assert str(tmp_path / "fashion_mnist" / f"{stem}.gz") in str(info.value)


def test_no_data_dir_given_says_how_to_give_one(monkeypatch):
    monkeypatch.delenv("JAXCNN_DATA_DIR", raising=False)
    with pytest.raises(JaxcnnError, match="pass --data-dir DIR or set JAXCNN_DATA_DIR"):
        load_dataset("mnist")


def test_data_dir_comes_from_argument_then_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXCNN_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir("") == tmp_path / "env"


def test_mnist_loads_from_data_dir_with_class_names_and_val_split(tmp_path):
    fake_mnist_dir(tmp_path / "mnist", n_train=50)
    dataset = load_dataset("mnist", data_dir=tmp_path, val_fraction=0.2)
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (40, 10, 10)
    assert dataset.input_shape == (28, 28, 1)
    assert dataset.num_classes == 10 and dataset.class_names == tuple("0123456789")


def test_fashion_mnist_has_clothing_class_names(tmp_path):
    fake_mnist_dir(tmp_path / "fashion_mnist")
    dataset = load_dataset("fashion_mnist", data_dir=str(tmp_path))
    assert dataset.class_names[0] == "T-shirt/top" and dataset.class_names[-1] == "Ankle boot"
    assert len(dataset.class_names) == dataset.num_classes == 10


# --- train/val splits -------------------------------------------------------------------------

def test_val_split_takes_the_requested_fraction():
    train, val = train_val_split(indexed_split(1000), 0.1, seed=0)
    assert (len(train), len(val)) == (900, 100)


def test_val_split_is_disjoint_from_train_and_keeps_labels_with_images():
    train, val = train_val_split(indexed_split(1000), 0.25, seed=3)
    train_idx, val_idx = indices_of(train), indices_of(val)
    assert not set(train_idx) & set(val_idx)
    np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(1000))
    np.testing.assert_array_equal(val.labels, val_idx % 10)


def test_same_seed_gives_same_split_and_other_seed_a_different_one():
    split = indexed_split(1000)
    first, again, other = (indices_of(train_val_split(split, 0.1, seed)[1]) for seed in (7, 7, 8))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_zero_val_fraction_gives_empty_val_split():
    train, val = train_val_split(indexed_split(20), 0.0, seed=0)
    assert len(train) == 20 and val.images.shape == (0, 1, 1, 2) and val.labels.shape == (0,)


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5, float("nan"), "0.1", True])
def test_val_fraction_outside_unit_interval_is_an_error(fraction):
    with pytest.raises(JaxcnnError, match="dataset.val_fraction"):
        load_dataset("synthetic", val_fraction=fraction)


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_bad_seed_is_an_error(seed):
    with pytest.raises(JaxcnnError, match="seed: expected a non-negative integer"):
        load_dataset("synthetic", seed=seed)


# --- digits -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_by_seed():
    return {seed: load_dataset("digits", seed=seed) for seed in (0, 1)}


def test_digits_are_uint8_8x8_images_of_ten_classes(digits_by_seed):
    dataset = digits_by_seed[0]
    assert dataset.input_shape == (8, 8, 1) and dataset.class_names == tuple("0123456789")
    for split in (dataset.train, dataset.val, dataset.test):
        assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
    allowed = {round(v * 255 / 16) for v in range(17)}
    assert set(np.unique(dataset.test.images)) <= allowed and dataset.test.images.max() == 255


def test_digits_splits_cover_all_1797_images(digits_by_seed):
    dataset = digits_by_seed[0]
    assert len(dataset.train) + len(dataset.val) + len(dataset.test) == 1797
    assert abs(len(dataset.test) - 0.2 * 1797) < 10


def test_digits_test_split_is_stratified(digits_by_seed):
    counts = np.bincount(digits_by_seed[0].test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def test_digits_test_split_is_the_same_for_every_seed_but_val_differs(digits_by_seed):
    a, b = digits_by_seed[0], digits_by_seed[1]
    np.testing.assert_array_equal(a.test.images, b.test.images)
    np.testing.assert_array_equal(a.test.labels, b.test.labels)
    assert not np.array_equal(a.val.images, b.val.images)


def test_digits_reject_options():
    with pytest.raises(JaxcnnError, match=(
            "dataset.num_train: unknown option for dataset 'digits'; "
            "known options: none")):
        load_dataset("digits", num_train=5)


# --- synthetic --------------------------------------------------------------------------------

def test_synthetic_defaults():
    dataset = load_dataset("synthetic", val_fraction=0.0)
    assert dataset.train.images.shape == (1024, 28, 28, 1) and dataset.test.images.shape == (256, 28, 28, 1)
    assert dataset.train.images.dtype == np.uint8 and dataset.train.labels.dtype == np.int32
    assert dataset.num_classes == 10 and dataset.class_names == tuple("0123456789")
    np.testing.assert_array_equal(np.bincount(dataset.train.labels), [103] * 4 + [102] * 6)


def test_synthetic_options_set_shapes_and_classes():
    dataset = load_dataset("synthetic", image_shape=[6, 5, 3], num_classes=3, num_train=40, num_test=12)
    assert dataset.input_shape == (6, 5, 3) and dataset.class_names == ("0", "1", "2")
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (36, 4, 12)
    assert set(np.unique(dataset.test.labels)) == {0, 1, 2}


def test_synthetic_is_deterministic_per_seed():
    first, again, other = (load_dataset("synthetic", seed=s, num_train=64, num_test=16) for s in (0, 0, 1))
    np.testing.assert_array_equal(first.train.images, again.train.images)
    np.testing.assert_array_equal(first.test.labels, again.test.labels)
    assert not np.array_equal(first.train.images, other.train.images)


def test_synthetic_is_learnable_by_nearest_class_mean():
    dataset = load_dataset("synthetic", image_shape=(8, 8, 1), num_train=200, num_test=100)
    train_x = dataset.train.images.reshape(len(dataset.train), -1).astype(float)
    means = np.stack([train_x[dataset.train.labels == c].mean(0) for c in range(dataset.num_classes)])
    test_x = dataset.test.images.reshape(len(dataset.test), -1).astype(float)
    predicted = ((test_x[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == dataset.test.labels).mean() > 0.95


@pytest.mark.parametrize("key, value", [
    ("num_classes", 0), ("num_train", -1), ("num_test", 2.5), ("num_train", True), ("num_classes", "10"),
    ("image_shape", (28, 28)), ("image_shape", (28, 0, 1)), ("image_shape", "28x28x1"), ("image_shape", 28),
])
def test_synthetic_rejects_bad_option_values(key, value):
    with pytest.raises(JaxcnnError, match=f"dataset.{key}: expected"):
        load_dataset("synthetic", **{key: value})


# --- registry ---------------------------------------------------------------------------------

def test_registry_lists_the_datasets():
    assert list_datasets() == ("array_record", "arrays", "cifar10", "cifar100", "digits", "fashion_mnist",
                               "image_folder", "mnist", "synthetic")


def test_unknown_dataset_name_lists_known_names():
    with pytest.raises(JaxcnnError, match=(
            "unknown dataset 'mnsit'; "
            "known datasets: array_record, arrays, cifar10, cifar100, digits, fashion_mnist, image_folder, mnist, synthetic, "
            "or tfds:NAME")):
        load_dataset("mnsit")


def test_unknown_option_names_the_key_before_any_file_is_read(monkeypatch):
    monkeypatch.delenv("JAXCNN_DATA_DIR", raising=False)
    with pytest.raises(JaxcnnError, match="dataset.num_clases: unknown option for dataset 'synthetic'; "
                                          "known options: image_shape, num_classes"):
        load_dataset("synthetic", num_clases=3)
    with pytest.raises(JaxcnnError, match="dataset.image_shape: unknown option for dataset 'mnist'"):
        load_dataset("mnist", image_shape=(28, 28, 1))


# --- real data (only with JAXCNN_DATA_DIR) ----------------------------------------------------

requires_real_data = pytest.mark.skipif(
    not os.environ.get("JAXCNN_DATA_DIR"),
    reason="JAXCNN_DATA_DIR is not set; point it at a folder with mnist/ and fashion_mnist/ to test real data")


@pytest.fixture(scope="module")
def real():
    """Real MNIST and Fashion-MNIST, loaded once, without a validation split."""
    return {name: load_dataset(name, val_fraction=0.0) for name in ("mnist", "fashion_mnist")}


@requires_real_data
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_real_data_has_canonical_sizes_and_shapes(real, name):
    dataset = real[name]
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (60000, 0, 10000)
    assert dataset.input_shape == (28, 28, 1) and dataset.num_classes == 10
    assert dataset.train.images.dtype == np.uint8 and dataset.test.labels.dtype == np.int32


@requires_real_data
def test_real_mnist_has_canonical_label_counts(real):
    np.testing.assert_array_equal(np.bincount(real["mnist"].train.labels),
                                  [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
    np.testing.assert_array_equal(np.bincount(real["mnist"].test.labels),
                                  [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])


@requires_real_data
def test_real_fashion_mnist_is_balanced(real):
    np.testing.assert_array_equal(np.bincount(real["fashion_mnist"].train.labels), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(real["fashion_mnist"].test.labels), [1000] * 10)


@requires_real_data
def test_real_mnist_val_split_is_carved_from_train(real):
    train, val = train_val_split(real["mnist"].train, 0.1, seed=0)
    assert (len(train), len(val)) == (54000, 6000)


@pytest.mark.parametrize("section, shape", [
    ({"name": "mnist"}, (28, 28, 1)),
    ({"name": "fashion_mnist"}, (28, 28, 1)),
    ({"name": "digits"}, (8, 8, 1)),
    ({"name": "cifar10"}, (32, 32, 3)),
    ({"name": "cifar100"}, (32, 32, 3)),
    ({"name": "synthetic", "image_shape": (5, 6, 2)}, (5, 6, 2)),
    ({"name": "tfds:mnist"}, None),
])
def test_expected_input_shape_is_known_before_loading_for_the_built_in_datasets(section, shape):
    assert expected_input_shape(section) == shape


def test_expected_input_shape_is_the_shape_the_loaded_data_has():
    assert load_dataset("digits").input_shape == expected_input_shape({"name": "digits"})
    synthetic = {"name": "synthetic", "image_shape": (5, 6, 2)}
    assert load_dataset("synthetic", image_shape=(5, 6, 2), num_train=20).input_shape == expected_input_shape(synthetic)


@pytest.mark.parametrize("section, num_classes", [
    ({"name": "mnist"}, 10),
    ({"name": "fashion_mnist"}, 10),
    ({"name": "digits"}, 10),
    ({"name": "cifar10"}, 10),
    ({"name": "cifar100"}, 100),
    ({"name": "synthetic", "num_classes": 3}, 3),
    ({"name": "tfds:mnist"}, None),
])
def test_expected_num_classes_is_known_before_loading_for_the_built_in_datasets(section, num_classes):
    assert expected_num_classes(section) == num_classes


def test_expected_num_classes_is_the_number_the_loaded_data_has():
    assert load_dataset("digits").num_classes == expected_num_classes({"name": "digits"})
    assert load_dataset("synthetic", num_classes=3, num_train=20).num_classes == \
        expected_num_classes({"name": "synthetic", "num_classes": 3})


def test_a_synthetic_num_classes_that_is_not_a_count_is_one_line_naming_the_key():
    with pytest.raises(JaxcnnError, match=r"dataset\.num_classes: expected a positive integer, got 0"):
        expected_num_classes({"name": "synthetic", "num_classes": 0})


@requires_mnist
def test_expected_input_shape_of_mnist_is_the_shape_of_real_mnist():
    assert load_dataset("mnist", data_dir=real_data_dir()).input_shape == expected_input_shape({"name": "mnist"})


def test_expected_input_shape_refuses_a_bad_synthetic_image_shape():
    with pytest.raises(JaxcnnError, match="dataset.image_shape"):
        expected_input_shape({"name": "synthetic", "image_shape": (4, 4)})

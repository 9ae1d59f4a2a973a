"""NumPy arrays as a dataset: `dataset.name=arrays` (.npz), `Dataset.from_arrays`, `register_dataset`."""

import json

import numpy as np
import pytest

import jaxcnn
from cli_run import assert_one_line_error, run_cli
from jaxcnn import data
from jaxcnn.config import dataset_section, load_config
from jaxcnn.data import Dataset, load_dataset
from jaxcnn.errors import JaxcnnError


def blobs(n=240, seed=0, classes=3):
    """(images uint8 (n, 8, 8), labels): dark noise with a bright band of rows, one place per class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 80, (n, 8, 8))
    for i, label in enumerate(labels):
        images[i, 2 * label:2 * label + 2] += 170
    return images.astype(np.uint8), labels


@pytest.fixture
def registry():
    """The dataset registry, restored after the test."""
    saved = dict(data._DATASETS)
    yield data.DATASETS
    data._DATASETS.clear()
    data._DATASETS.update(saved)


def test_an_npz_of_arrays_trains_from_the_command_line(tmp_path, capsys):
    images, labels = blobs()
    test_images, test_labels = blobs(60, seed=1)
    np.savez(tmp_path / "blobs.npz", images=images, labels=labels, test_images=test_images,
             test_labels=test_labels, class_names=np.array(["dark", "grey", "bright"]))
    code, out, err = run_cli(capsys, "train", "--workdir", tmp_path / "run", "--quiet",
                             "--config.dataset.name=arrays", f"--config.dataset.path={tmp_path / 'blobs.npz'}",
                             "--config.model.name=mlp", "--config.model.hidden=(16,)", "--config.num_epochs=5",
                             "--config.batch_size=16", "--config.schedule.name=constant",
                             "--config.optimizer.learning_rate=0.01", "--config.checkpoint.enabled=false")
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_examples"] == 60 and summary["class_names"] == ["dark", "grey", "bright"]
    assert summary["test_accuracy"] >= 0.9


def test_without_test_arrays_a_seeded_stratified_fraction_is_held_out(tmp_path):
    images, labels = blobs(100)
    np.savez(tmp_path / "a.npz", images=images, labels=labels)
    first, again, other = (load_dataset("arrays", path=str(tmp_path / "a.npz"), seed=s, val_fraction=0.0,
                                        test_fraction=0.3) for s in (0, 0, 1))
    assert len(first.test) == sum(round(np.sum(labels == c) * 0.3) for c in range(3))
    np.testing.assert_array_equal(first.test.images, again.test.images)
    assert not np.array_equal(first.test.images, other.test.images)
    assert first.input_shape == (8, 8, 1) and first.class_names == ("0", "1", "2")


def test_from_arrays_reads_floats_in_0_1_and_0_255_and_adds_the_channel_axis():
    images, labels = blobs(30)
    as_uint8 = Dataset.from_arrays(images, labels, images, labels)
    as_unit = Dataset.from_arrays(images / 255.0, labels, images / 255.0, labels)
    as_float = Dataset.from_arrays(images.astype(np.float32), labels, images.astype(np.float32), labels)
    for dataset in (as_unit, as_float):
        np.testing.assert_array_equal(dataset.train.images, as_uint8.train.images)
    assert as_uint8.train.images.shape == (30, 8, 8, 1) and as_uint8.train.labels.dtype == np.int32
    rgb = Dataset.from_arrays(np.repeat(images[..., None], 3, -1), labels, class_names=["a", "b", "c", "d"])
    assert rgb.input_shape == (8, 8, 3) and rgb.num_classes == 4


def test_load_dataset_takes_a_built_dataset_and_carves_its_validation_split():
    images, labels = blobs(100)
    dataset = load_dataset(Dataset.from_arrays(images, labels, images[:10], labels[:10]), val_fraction=0.2,
                           seed=3)
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (80, 20, 10)
    assert load_dataset(dataset, val_fraction=0.5) is dataset  # it has a validation split already


def test_register_dataset_adds_a_name_with_its_options_to_configs(registry):
    def loader(seed, size=8, count=60):
        images, labels = blobs(count, seed=seed)
        return Dataset.from_arrays(images[:, :size, :size], labels, seed=seed)

    jaxcnn.register_dataset("my_blobs", loader, {"size": 8, "count": 60})
    assert "my_blobs" in data.list_datasets()
    assert dataset_section("my_blobs").count == 60
    config = load_config("digits_cnn", ["dataset.name=my_blobs", "dataset.size=4"])
    dataset = load_dataset(config.dataset.name, seed=1, size=config.dataset.size, count=config.dataset.count)
    assert dataset.input_shape == (4, 4, 1) and dataset.name == "my_blobs"

    with pytest.raises(JaxcnnError, match="already registered"):
        jaxcnn.register_dataset("my_blobs", loader)
    with pytest.raises(JaxcnnError, match="common dataset key"):
        jaxcnn.register_dataset("other", loader, {"val_fraction": 0.1})
    jaxcnn.register_dataset("broken", lambda seed: (1, 2), replace=True)
    with pytest.raises(JaxcnnError, match="returned a tuple, not a jaxcnn.Dataset"):
        load_dataset("broken")


@pytest.mark.parametrize("arrays, fragments", [
    (lambda x, y: {"images": x}, ["has no labels array", "it has: images"]),
    (lambda x, y: {"images": x, "labels": y + 5, "class_names": np.array(list("abc"))},
     ["labels: label", "out of range for 3 class names"]),
    (lambda x, y: {"images": x, "labels": y - 1}, ["negative label -1"]),
    (lambda x, y: {"images": x, "labels": y.astype(float)}, ["integer class indices", "float64"]),
    (lambda x, y: {"images": x.reshape(len(x), -1), "labels": y}, ["images: expected images of shape"]),
    (lambda x, y: {"images": x[:, None], "labels": y}, ["channels-first"]),
    (lambda x, y: {"images": x, "labels": y[:10]}, ["10 labels for 60 images"]),
    (lambda x, y: {"images": x, "labels": y * 0}, ["only one class"]),
    (lambda x, y: {"images": x, "labels": y, "test_images": x}, ["test_images given without test_labels"]),
    (lambda x, y: {"images": x - 300.0, "labels": y}, ["float pixels must lie in [0, 1] or [0, 255]"]),
    (lambda x, y: {"images": x, "labels": y, "class_names": np.array([1, 2, 3])}, ["class_names must be"]),
    (lambda x, y: {"images": x, "labels": np.eye(3, dtype=int)[y]}, ["one-hot"]),
])
def test_a_bad_npz_is_one_line_and_exit_2(tmp_path, capsys, arrays, fragments):
    np.savez(tmp_path / "bad.npz", **arrays(*blobs(60)))
    result = run_cli(capsys, "train", "--workdir", tmp_path / "run", "--config.dataset.name=arrays",
                     f"--config.dataset.path={tmp_path / 'bad.npz'}", "--config.model.name=mlp")
    assert_one_line_error(result, str(tmp_path / "bad.npz"), *fragments)


@pytest.mark.parametrize("path, fragments", [
    ("", ["dataset.path: not set"]),
    ("missing.npz", ["does not exist"]),
    ("x.npy", ["not an .npz archive"]),
    ("text.npz", ["cannot be read as an .npz archive"]),
])
def test_a_missing_or_unreadable_file_is_one_line_and_exit_2(tmp_path, capsys, path, fragments):
    np.save(tmp_path / "x.npy", np.zeros((3, 4, 4), np.uint8))
    (tmp_path / "text.npz").write_text("hello")
    result = run_cli(capsys, "train", "--workdir", tmp_path / "run", "--config.dataset.name=arrays",
                     f"--config.dataset.path={tmp_path / path if path else ''}", "--config.model.name=mlp")
    assert_one_line_error(result, *fragments)


def test_from_arrays_raises_one_line_errors_naming_the_argument():
    images, labels = blobs(20)
    with pytest.raises(JaxcnnError, match="y_train: 19 labels for 20 images"):
        Dataset.from_arrays(images, labels[:19])
    with pytest.raises(JaxcnnError, match=r"x_test: images of shape \(4, 4, 1\)"):
        Dataset.from_arrays(images, labels, images[:, :4, :4], labels)
    with pytest.raises(JaxcnnError, match="x_train: expected pixel values"):
        Dataset.from_arrays(images.astype(bool), labels)

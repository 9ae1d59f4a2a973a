"""TFDS datasets through `tfds:NAME`, on TFDS's mock data: no network, no TensorFlow."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from jaxcnn.config import load_config
from jaxcnn.data import load_dataset
from jaxcnn.errors import JaxcnnError
from jaxcnn.training.loop import train_and_evaluate

tfds = pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets is not installed (extra [tfds])")

MOCK_EXAMPLES = 96


def test_mock_tfds_mnist_trains_a_few_steps(tmp_path):
    config = load_config("tfds_example", ["num_epochs=1", "batch_size=16", "log_every_steps=2",
                                          "model.name=mlp", "model.hidden=(16,)"])
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        summary = train_and_evaluate(config, tmp_path / "run", data_dir=str(tmp_path / "data"), quiet=True)
    val = round(MOCK_EXAMPLES * config.dataset.val_fraction)
    assert summary["dataset"] == "tfds:mnist" and summary["num_train"] == MOCK_EXAMPLES - val
    assert summary["steps"] == (MOCK_EXAMPLES - val) // 16 and summary["test_examples"] == MOCK_EXAMPLES
    assert np.isfinite(summary["test_loss"])


def test_decoded_splits_are_cached_and_reused_without_the_source(tmp_path):
    with tfds.testing.mock_data(num_examples=12):
        first = load_dataset("tfds:mnist", data_dir=tmp_path, val_fraction=0.0)
    cached = sorted(p.name for p in (tmp_path / "tfds" / "jaxcnn_cache" / "mnist").glob("*/*.npy"))
    assert len(cached) == 4 and not list(tmp_path.rglob("*.part"))
    again = load_dataset("tfds:mnist", data_dir=tmp_path, val_fraction=0.0)  # no mock: only the cache can answer
    assert isinstance(again.train.images, np.memmap)
    np.testing.assert_array_equal(again.train.images, first.train.images)
    np.testing.assert_array_equal(again.test.labels, first.test.labels)
    assert first.train.images.shape == (12, 28, 28, 1) and first.class_names == tuple(str(d) for d in range(10))


def test_unprepared_dataset_says_to_prepare_it(tmp_path):
    with pytest.raises(JaxcnnError, match=r"tfds:mnist: split 'train' is not available in .*tfds.*--download"):
        load_dataset("tfds:mnist", data_dir=tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow is installed")
def test_preparing_without_tensorflow_says_what_is_missing(tmp_path):
    with pytest.raises(JaxcnnError, match=r"tfds:mnist: not prepared in .*preparing it needs tensorflow"):
        load_dataset("tfds:mnist", data_dir=tmp_path, download=True)


def test_unknown_tfds_name_is_a_clear_error(tmp_path):
    with pytest.raises(JaxcnnError, match="TFDS has no dataset 'no_such_dataset'"):
        load_dataset("tfds:no_such_dataset", data_dir=tmp_path)


def test_dataset_without_image_and_label_is_refused(tmp_path):
    with pytest.raises(JaxcnnError, match="tfds:imdb_reviews: not an image-classification dataset"):
        load_dataset("tfds:imdb_reviews", data_dir=tmp_path)


def test_split_names_are_options(tmp_path):
    with tfds.testing.mock_data(num_examples=10):
        dataset = load_dataset("tfds:mnist", data_dir=tmp_path, val_fraction=0.0,
                               train_split="train[:50%]", test_split="test")
    assert len(dataset.train) == 10  # the mock ignores slicing; the option reached TFDS as a split name
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "tfds" / "jaxcnn_cache").rglob("*.images.npy")) == [
        "test", "train__50__"]


def test_failed_preparation_says_which_files_to_put_where(tmp_path, monkeypatch):
    import jaxcnn.data.tfds as jaxcnn_tfds

    def offline(self, **kwargs):
        raise ConnectionError("Failed to resolve 'storage.googleapis.com'")

    monkeypatch.setattr(jaxcnn_tfds, "missing_preparation_packages", lambda: [])  # as if TensorFlow were installed
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(JaxcnnError) as caught:
        load_dataset("tfds:mnist", data_dir=tmp_path, download=True)
    message = str(caught.value)
    assert "TFDS could not download and prepare it (ConnectionError: Failed to resolve" in message
    assert f"into {tmp_path / 'tfds' / 'manual' / 'mnist'}/ and run again with --download" in message
    assert ("train-images-idx3-ubyte.gz (9,912,422 bytes, sha256 "
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609)") in message

"""The dataset-related config keys and presets: tfds names, input mode, augmentation, --download."""

from __future__ import annotations

import json

import pytest

from jaxcnn.config import load_config
from jaxcnn.errors import JaxcnnError
from test_cli import assert_one_line_error, jaxcnn


@pytest.mark.parametrize("preset", ["cifar10_resnet20", "cifar10_vgg", "tfds_example"])
def test_new_presets_load_and_validate(preset):
    config = load_config(preset)
    assert config.dataset.name in ("cifar10", "tfds:mnist")


def test_cifar_presets_augment_and_measure_per_channel_statistics():
    config = load_config("cifar10_resnet20")
    assert config.dataset.per_channel_stats and config.augment.crop_padding == 4 and config.augment.flip


def test_switching_to_a_tfds_dataset_adds_its_split_options():
    config = load_config("digits_cnn", ["dataset.name=tfds:fashion_mnist", "dataset.train_split=train[:90%]"])
    assert config.dataset.name == "tfds:fashion_mnist"
    assert config.dataset.train_split == "train[:90%]" and config.dataset.test_split == "test"


@pytest.mark.parametrize("override, message", [
    ("dataset.input=gpu", r"unknown input mode 'gpu' \(dataset\.input\); expected one of: auto, device, grain, host"),
    ("dataset.device_budget_mb=0", "dataset.device_budget_mb must be a positive number"),
    ("augment.crop_padding=-2", "augment.crop_padding must be a non-negative integer"),
    ("dataset.std=0", "dataset.std must be a positive number"),
    ("dataset.name=tfds:", "unknown dataset 'tfds:'"),
])
def test_bad_dataset_values_name_the_key(override, message):
    with pytest.raises(JaxcnnError, match=message):
        load_config("digits_cnn", [override])


def test_download_flag_sets_the_config_key():
    result = jaxcnn("train", "--download", "--show-config")
    assert result.returncode == 0 and json.loads(result.stdout)["dataset"]["download"] is True


def test_missing_cifar_files_is_one_line_exit_2(tmp_path):
    result = jaxcnn("train", "--config", "cifar10_resnet20", "--data-dir", str(tmp_path),
                    "--workdir", str(tmp_path / "run"))
    assert_one_line_error(result, "CIFAR binary files not found", "data_batch_1.bin", "--download")

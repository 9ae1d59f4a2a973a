"""Config files, command-line overrides and validation."""

import json

import pytest

from jaxcnn.config import CONFIGS_DIR, config_from_json, config_to_json, list_presets, load_config
from jaxcnn.errors import JaxcnnError

PRESETS = list_presets()


def test_presets_required_by_the_docs_exist():
    assert {"digits_cnn", "mnist_mlp", "mnist_tiny_cnn", "mnist_cnn", "mnist_lenet5",
            "fashion_mnist_cnn"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads_validates_and_documents_its_run_command(name):
    config = load_config(name)
    for key in ("seed", "batch_size", "num_epochs", "model.name", "optimizer.name",
                "optimizer.learning_rate", "dataset.name", "dataset.val_fraction"):
        section, _, leaf = key.rpartition(".")
        assert leaf in (config[section] if section else config)
    source = (CONFIGS_DIR / f"{name}.py").read_text()
    assert "jaxcnn train" in source and "accuracy" in source


def test_preset_is_locked_so_a_typo_fails_with_a_suggestion():
    with pytest.raises(JaxcnnError, match=r"unknown config key 'optimizer.learnig_rate'.*optimizer.learning_rate"):
        load_config("digits_cnn", ["optimizer.learnig_rate=0.1"])


def test_overrides_are_parsed_to_the_type_of_the_value_they_replace():
    config = load_config("digits_cnn", ["optimizer.learning_rate=1", "num_epochs=3",
                                        "early_stopping.enabled=true", "model.hidden=(64, 32)"])
    assert config.optimizer.learning_rate == 1.0 and isinstance(config.optimizer.learning_rate, float)
    assert config.num_epochs == 3
    assert config.early_stopping.enabled is True
    assert config.model.hidden == (64, 32)


def test_changing_the_model_name_rebuilds_the_model_section():
    config = load_config("digits_cnn", ["model.name=mlp", "model.hidden=(32,)"])
    assert config.model.name == "mlp"
    assert config.model.hidden == (32,)
    assert "blocks" not in config.model


@pytest.mark.parametrize("override, message", [
    ("optimizer.learning_rate=-0.1", "optimizer.learning_rate"),
    ("optimizer.learning_rate=0", "optimizer.learning_rate"),
    ("batch_size=0", "batch_size"),
    ("num_epochs=-1", "num_epochs"),
    ("num_epochs=2.5", "num_epochs"),
    ("model.name=resnet99", "model.name"),
    ("model.activation=rleu", "rleu"),
    ("optimizer.name=adm", "adm"),
    ("schedule.name=linear", "linear"),
    ("dataset.name=imagenet", "imagenet"),
    ("dataset.val_fraction=1.5", "dataset.val_fraction"),
    ("loss.name=hinge", "hinge"),
    ("early_stopping.monitor=train_loss", "early_stopping.monitor"),
])
def test_bad_values_fail_with_a_message_naming_the_key(override, message):
    with pytest.raises(JaxcnnError, match=message):
        load_config("digits_cnn", [override])


def test_unknown_config_file_lists_the_presets():
    with pytest.raises(JaxcnnError, match="mnist_cnn"):
        load_config("no_such_config")


def test_config_round_trips_through_json():
    config = load_config("mnist_lenet5")
    restored = config_from_json(config_to_json(config))
    assert restored.to_dict() == config.to_dict()
    assert json.loads(config_to_json(restored)) == json.loads(config_to_json(config))

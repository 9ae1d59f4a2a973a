"""Config files, command-line overrides and validation."""

import json
import pathlib

import pytest

import jaxcnn
from conftest import REPO
from jaxcnn.files import workdir
from jaxcnn.data.normalization import record_mean_std
from jaxcnn.config import (CONFIGS_DIR, base_config, config_from_json, config_name, config_to_json, list_presets,
                           load_config, validate_config)
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


LOCAL_CONFIG = "from jaxcnn.config import base_config\n\n\ndef get_config():\n" \
               "    config = base_config(model='mlp', dataset='digits')\n    config.num_epochs = 7\n    return config.lock()\n"


def test_presets_ship_inside_the_package():
    assert CONFIGS_DIR == pathlib.Path(jaxcnn.__file__).parent / "configs"
    assert (CONFIGS_DIR / "__init__.py").is_file() and "__init__" not in PRESETS


def test_every_preset_has_a_mirror_in_the_top_level_configs_folder_that_loads_the_same_config():
    mirrors = sorted(p.stem for p in (REPO / "configs").glob("*.py"))
    assert mirrors == PRESETS
    for name in PRESETS:
        assert load_config(str(REPO / "configs" / f"{name}.py")).to_dict() == load_config(name).to_dict()


def test_a_file_named_like_a_preset_in_the_current_folder_never_shadows_the_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    for planted in ("mnist_cnn.py", "configs/mnist_cnn.py", "mnist_cnn"):
        (tmp_path / planted).write_text(LOCAL_CONFIG)
    config = load_config("mnist_cnn")
    assert (config.model.name, config.num_epochs) == ("cnn", 10)


@pytest.mark.parametrize("path", ["./mnist_cnn.py", "mnist_cnn.py", "configs/mnist_cnn.py"])
def test_a_file_in_the_current_folder_is_used_when_given_as_a_path(tmp_path, monkeypatch, path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / path).write_text(LOCAL_CONFIG)
    config = load_config(path)
    assert (config.model.name, config.num_epochs) == ("mlp", 7)


def test_a_config_path_not_ending_in_py_or_json_says_what_is_accepted(tmp_path):
    (tmp_path / "config.yaml").write_text("num_epochs: 1\n")
    with pytest.raises(JaxcnnError, match=r"expected a Python config file \(\.py\), a run's config\.json"):
        load_config(str(tmp_path / "config.yaml"))


def test_a_runs_config_json_loads_exactly_that_config(tmp_path):
    # As the loop records it: the per-channel statistics measured on the training split, as tuples.
    config = record_mean_std(load_config("cifar10_vgg"), (0.5, 0.25, 0.125), (0.2, 0.3, 0.4))
    (tmp_path / "config.json").write_text(config_to_json(config) + "\n")
    loaded = load_config(str(tmp_path / "config.json"))
    assert loaded.to_dict() == config.to_dict()
    assert loaded.dataset.mean == (0.5, 0.25, 0.125)  # a tuple again, as in the Python config
    saved = json.loads((tmp_path / "config.json").read_text())
    assert workdir.config_differences(saved, json.loads(config_to_json(loaded))) == []
    assert config_name(str(tmp_path / "config.json")) == tmp_path.name


def test_a_json_config_takes_overrides_and_the_defaults_of_the_keys_it_lacks(tmp_path):
    (tmp_path / "partial.json").write_text('{"model": {"name": "mlp", "hidden": [32]}, "dataset": {"name": "digits"}}')
    config = load_config(str(tmp_path / "partial.json"), ["num_epochs=2"])
    expected = base_config("mlp", "digits")
    expected.model.hidden, expected.num_epochs = (32,), 2
    assert config.to_dict() == expected.to_dict()


@pytest.mark.parametrize("override, key, value", [
    ("optimizer.learning_rate=1e999", "optimizer.learning_rate", "inf"),
    ("optimizer.learning_rate=-1e999", "optimizer.learning_rate", "-inf"),
    ("schedule.warmup_epochs=1e999", "schedule.warmup_epochs", "inf"),
    ("loss.label_smoothing=1e999", "loss.label_smoothing", "inf"),
])
def test_non_finite_numbers_are_refused_naming_the_key(override, key, value):
    with pytest.raises(JaxcnnError, match=f"config key '{key}' is {value}; every number in a config must be finite"):
        load_config("digits_cnn", [override])


def test_a_nan_inside_a_tuple_is_refused_naming_the_key():
    config = load_config("cifar10_vgg")
    with config.unlocked():
        config.dataset.mean = (0.5, float("nan"), 0.5)
    with pytest.raises(JaxcnnError, match="config key 'dataset.mean' is nan"):
        validate_config(config)


def test_an_exception_in_get_config_names_the_file_and_line(tmp_path):
    (tmp_path / "broken.py").write_text("def get_config():\n    values = {}\n    return values['missing']\n")
    with pytest.raises(JaxcnnError) as error:
        load_config(str(tmp_path / "broken.py"))
    assert str(error.value) == f"{tmp_path / 'broken.py'}:3: get_config() raised KeyError: 'missing'"


def test_the_shape_of_a_built_in_dataset_is_checked_against_the_model_when_the_config_loads():
    with pytest.raises(JaxcnnError, match="input shape 8x8x1: model layer Conv_1"):
        load_config("digits_cnn", ["model.name=lenet5"])
    load_config("mnist_lenet5")  # 28x28 fits

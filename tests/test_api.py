"""The Python API: `jaxcnn.train`, `jaxcnn.load`, `Model.predict` on arrays; quick runs of every preset."""

import json
import re

import numpy as np
import pytest
from PIL import Image

import jaxcnn
from conftest import REPO
from jaxcnn import cli, data, models
from jaxcnn.config import list_presets, load_config
from jaxcnn.errors import JaxcnnError
from jaxcnn.files.writers import read_jsonl

QUICK = ["num_epochs=1", "max_steps=6", "batch_size=32", "log_every_steps=3", "limit_eval_batches=2",
         "eval_batch_size=50"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return jaxcnn.train("digits_cnn", QUICK + ["model.name=tiny_cnn"], workdir=tmp_path_factory.mktemp("api") / "w")


def test_the_readme_notebook_example_runs_as_written(tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## From Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) == 6
    monkeypatch.chdir(tmp_path)
    code = code.replace('["num_epochs=5"]', '["num_epochs=1"]')  # the same example, shorter
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["probabilities"].shape == (8, 10)
    assert np.allclose(namespace["probabilities"].sum(-1), 1.0, atol=1e-5)


def test_max_steps_stops_training_then_tests_on_the_limited_batches_and_writes_the_summary(model):
    summary = model.summary
    assert summary["steps"] == 6 and summary["test_examples"] == 100  # 2 eval batches of 50
    records = read_jsonl(model.workdir / "metrics.jsonl")
    assert [r["step"] for r in records if r["event"] == "train"] == [3, 6]
    assert [r["event"] for r in records][-2:] == ["epoch", "test"]
    assert json.loads((model.workdir / "summary.json").read_text())["steps"] == 6


def test_predict_on_arrays_equals_jaxcnn_predict_on_the_same_images_saved_as_png(model, tmp_path, capsys):
    images = data.load_dataset("digits").test.images[:4]
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(image[..., 0]).save(files[-1])
    probabilities = model.predict(images)
    assert cli.main(["predict", "--workdir", str(model.workdir), "--json", "-", "--top", "10", *map(str, files)]) == 0
    printed = json.loads(capsys.readouterr().out)
    for row, result in zip(probabilities, printed):
        from_cli = np.zeros(10)
        for entry in result["top"]:
            from_cli[entry["class"]] = entry["probability"]
        np.testing.assert_allclose(row, from_cli, atol=1e-6)


def test_a_loaded_model_predicts_like_the_trained_one_and_floats_in_0_1_equal_uint8(model):
    images = data.load_dataset("digits").test.images[:5]
    loaded = jaxcnn.load(model.workdir)
    assert loaded.summary == model.summary and loaded.class_names == model.class_names
    np.testing.assert_allclose(loaded.predict(images), model.predict(images), atol=1e-6)
    np.testing.assert_allclose(model.predict(images[..., 0] / 255.0), model.predict(images), atol=1e-6)


def test_training_on_arrays_from_python_and_bad_images_for_predict(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    images = (np.where(labels[:, None, None] == 1, 220, 20) + rng.integers(0, 30, (200, 6, 6))).astype(np.uint8)
    dataset = jaxcnn.Dataset.from_arrays(images[:160], labels[:160], images[160:], labels[160:])
    trained = jaxcnn.train(None, ["model.name=mlp", "model.hidden=(16,)", "num_epochs=5", "batch_size=16",
                                  "schedule.name=constant", "optimizer.learning_rate=0.01"],
                           dataset=dataset, workdir=tmp_path / "w")
    assert trained.summary["test_accuracy"] == 1.0 and trained.input_shape == (6, 6, 1)
    with pytest.raises(JaxcnnError, match=r"images: expected \(N, 6, 6, 1\)"):
        trained.predict(np.zeros((2, 7, 7), np.uint8))
    with pytest.raises(JaxcnnError, match="float pixels must lie in"):
        trained.predict(np.full((2, 6, 6), -1.0))


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_runs_a_few_steps_on_synthetic_data_of_its_input_shape(preset, tmp_path):
    config = load_config(preset)
    shape = data.expected_input_shape(config.dataset) or models.default_input_shape(config.model.name)
    overrides = ["dataset.name=synthetic", f"dataset.image_shape={tuple(shape)}", "dataset.num_train=96",
                 "dataset.num_test=40", "dataset.val_fraction=0.2", "max_steps=2", "batch_size=16",
                 "eval_batch_size=20", "limit_eval_batches=1", "num_epochs=1", "checkpoint.enabled=false"]
    summary = jaxcnn.train(preset, overrides, workdir=tmp_path / "w").summary
    assert summary["steps"] == 2 and summary["test_examples"] == 20

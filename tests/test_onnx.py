"""ONNX export (`jaxcnn export --format onnx`) and `jaxcnn predict --onnx`: onnxruntime's
probabilities equal `jaxcnn predict`'s within 1e-5 for the MLP, the CNN and a BatchNorm ResNet.
Skipped where the `onnx` extra (jax2onnx, onnxruntime) is not installed."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("jax2onnx", reason="jax2onnx is not installed (pip install 'jaxcnn[onnx]')")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'jaxcnn[onnx]')")

from jaxcnn.cli import main  # noqa: E402
from jaxcnn.commands.saved import load_saved_model, predict  # noqa: E402
from jaxcnn.commands import onnx_export  # noqa: E402
from jaxcnn.config import load_config  # noqa: E402
from jaxcnn.errors import JaxcnnError  # noqa: E402
from jaxcnn.training.loop import train_and_evaluate  # noqa: E402

SHORT = ["num_epochs=1", "max_steps=3", "limit_eval_batches=1", "eval_batch_size=64"]
MODELS = {"mlp": ["model.name=mlp", "model.hidden=(16,)"],
          "cnn": ["model.name=cnn"],
          "resnet20": ["model.name=resnet20", "dataset.name=synthetic", "dataset.image_shape=(8, 8, 3)",
                       "dataset.num_train=64", "dataset.num_test=16", "batch_size=16"]}


def images(tmp_path, shape, count=3):
    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        files.append(tmp_path / f"image{i}.npy")
        np.save(files[-1], rng.integers(0, 256, shape[:2] if shape[-1] == 1 else shape).astype(np.uint8))
    return files


@pytest.mark.parametrize("name", list(MODELS))
def test_onnxruntime_gives_jaxcnn_predicts_probabilities_within_1e_5(name, tmp_path):
    workdir = tmp_path / name
    train_and_evaluate(load_config("digits_cnn", MODELS[name] + SHORT), workdir, quiet=True)
    out, meta = onnx_export.write_onnx(workdir, out=tmp_path / "m.onnx")
    saved = load_saved_model(workdir)
    files = images(tmp_path, saved.input_shape)
    expected = predict(saved, files, top=10)
    got = onnx_export.predict_onnx(out, files, top=10)
    assert meta["class_names"] == list(saved.class_names)
    for want, have in zip(expected, got):
        probabilities = {c["class"]: c["probability"] for c in want["top"]}
        for c in have["top"]:
            assert c["probability"] == pytest.approx(probabilities[c["class"]], abs=1e-5)


def test_a_members_onnx_export_gives_that_members_probabilities(tmp_path):
    workdir = tmp_path / "members"
    train_and_evaluate(load_config("digits_cnn", MODELS["mlp"] + SHORT + ["seeds=(0, 1)"]), workdir, quiet=True)
    files = images(tmp_path, (8, 8, 1))
    for member in (0, 1):
        out, _ = onnx_export.write_onnx(workdir, out=tmp_path / f"m{member}.onnx", member=member)
        expected = predict(load_saved_model(workdir, member=member), files, top=10)
        for want, have in zip(expected, onnx_export.predict_onnx(out, files, top=10)):
            probabilities = {c["class"]: c["probability"] for c in want["top"]}
            assert all(c["probability"] == pytest.approx(probabilities[c["class"]], abs=1e-5) for c in have["top"])
    assert (tmp_path / "m0.onnx").read_bytes() != (tmp_path / "m1.onnx").read_bytes()


def test_export_format_onnx_and_predict_onnx_on_the_command_line(tmp_path, capsys):
    workdir = tmp_path / "w"
    train_and_evaluate(load_config("digits_cnn", MODELS["mlp"] + SHORT), workdir, quiet=True)
    assert main(["export", "--workdir", str(workdir), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx.json").is_file()
    files = images(tmp_path, (8, 8, 1), count=1)
    assert main(["predict", "--onnx", str(tmp_path / "m.onnx"), str(files[0])]) == 0
    onnx_line = capsys.readouterr().out.splitlines()[-1]
    assert main(["predict", "--workdir", str(workdir), str(files[0])]) == 0
    assert capsys.readouterr().out.splitlines()[-1][:40] == onnx_line[:40]


def test_a_model_jax2onnx_cannot_convert_is_one_line_naming_it(tmp_path, monkeypatch):
    workdir = tmp_path / "w"
    train_and_evaluate(load_config("digits_cnn", MODELS["mlp"] + SHORT), workdir, quiet=True)

    def refuse(*args, **kwargs):
        raise NotImplementedError("No ONNX handler for primitive 'cumsum'\nmore detail")

    monkeypatch.setattr("jax2onnx.to_onnx", refuse)
    with pytest.raises(JaxcnnError, match=r"model 'mlp' cannot be converted to ONNX .*cumsum") as error:
        onnx_export.write_onnx(workdir, out=tmp_path / "m.onnx")
    assert "\n" not in str(error.value) and not (tmp_path / "m.onnx").exists()


def test_predict_onnx_refuses_a_file_that_is_not_onnx_in_one_line(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(JaxcnnError, match="not an ONNX model onnxruntime can load"):
        onnx_export.predict_onnx(tmp_path / "bad.onnx", images(tmp_path, (8, 8, 1), count=1))


def test_a_plan_with_the_pooled_first_layer_exports_the_same_probabilities(tmp_path):
    """A run whose measured plan computes the first layer with its pool (`jaxcnn.models.pooled`):
    the export replays the plan, and onnxruntime gives `jaxcnn predict`'s probabilities."""
    import json

    from jaxcnn.core import autotune

    workdir = tmp_path / "cnn"
    train_and_evaluate(load_config("digits_cnn", ["model.name=cnn", "model.batch_norm=False"] + SHORT), workdir,
                       quiet=True)
    key = "8x8x1->32 k3x3 s1x1 pSAME d1x1 g1 float32"  # digits: 8x8 grey images
    plan = {"conv": [{"shape": key, "context": "forward", "impl": "pooled"}], "options": {}}
    (workdir / autotune.PLAN_FILE).write_text(json.dumps(plan))
    saved = load_saved_model(workdir)
    assert saved.tuned.conv == ((key, "forward", "pooled"),)
    out, _ = onnx_export.write_onnx(workdir, out=tmp_path / "m.onnx")
    import onnx

    assert [node.op_type for node in onnx.load(str(out)).graph.node].count("Conv") == 1  # the second layer's
    files = images(tmp_path, saved.input_shape)
    for want, have in zip(predict(saved, files, top=10), onnx_export.predict_onnx(out, files, top=10)):
        probabilities = {c["class"]: c["probability"] for c in want["top"]}
        for c in have["top"]:
            assert c["probability"] == pytest.approx(probabilities[c["class"]], abs=1e-5)

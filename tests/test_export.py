"""Exported models: `jaxcnn export` writes a jax.export artifact that gives `jaxcnn predict`'s
probabilities for any batch size, run by JAX alone; bad artifacts are one-line errors."""

import dataclasses
import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from jaxcnn import cli, models
from jaxcnn.config import load_config, model_options
from jaxcnn.commands.export import export_model, predict_exported, sidecar_path, write_export
from jaxcnn.training.loop import train_and_evaluate
from jaxcnn.commands.saved import classifier, load_saved_model, predict

# One training step each on 8x8x3 synthetic images: an MLP, a CNN (shift and XLA convolutions on
# CPU) and a ResNet of one BatchNorm basic block.
COMMON = ["dataset.name=synthetic", "dataset.image_shape=(8, 8, 3)", "dataset.num_train=32",
          "dataset.num_test=8", "dataset.val_fraction=0.0", "num_epochs=1", "batch_size=32",
          "eval_batch_size=32", "schedule.warmup_epochs=0.0"]
RUNS = {
    "mlp": ["model.name=mlp", "model.hidden=(16,)"],
    "cnn": ["model.name=cnn", "model.blocks=((4,), (8,))", "model.hidden=(16,)", "model.batch_norm=false"],
    "resnet": ["model.name=resnet20", "model.stage_sizes=(1,)", "model.widths=(4,)"],
}
README_PATH = "runs/digits/export/model.jaxexport"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, overrides in RUNS.items():
        train_and_evaluate(load_config("digits_cnn", COMMON + overrides), root / name, quiet=True)
    return {name: root / name for name in RUNS}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three images in the three formats predict reads: PNG, JPEG (another size: resized) and .npy."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(folder / "b.jpg")
    np.save(folder / "c.npy", rng.integers(0, 256, (8, 8, 3)).astype(np.uint8))
    return [str(folder / name) for name in ("a.png", "b.jpg", "c.npy")]


def probabilities(results):
    """{file: probabilities by class} from predict's results (all classes with top >= num_classes)."""
    return {r["file"]: np.array([c["probability"] for c in sorted(r["top"], key=lambda c: c["class"])])
            for r in results}


def run_cli(capsys, *args):
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert all(fragment in err for fragment in fragments), err


@pytest.mark.parametrize("name", list(RUNS))
def test_exported_predictions_equal_jaxcnn_predict_for_batches_of_3_and_1(name, runs, images, tmp_path):
    out, meta = write_export(runs[name], out=tmp_path / "model.jaxexport")
    saved = load_saved_model(runs[name])
    expected = probabilities(predict(saved, images, top=10))
    for files in (images, images[1:2]):
        got = probabilities(predict_exported(out, files, top=10))
        assert list(got) == files
        for file in files:
            np.testing.assert_allclose(got[file], expected[file], rtol=0, atol=1e-6)
    assert meta["input_shape"] == [8, 8, 3] and meta["class_names"] == list(saved.class_names)
    assert meta["step"] == saved.step and meta["activation"] == "softmax"
    assert json.loads(sidecar_path(out).read_text()) == meta


@pytest.mark.parametrize("conv_impl", ["xla", "shift", "im2col", "hybrid"])
def test_every_conv_impl_exports_the_same_probabilities_as_its_jit(conv_impl, runs):
    saved = load_saved_model(runs["cnn"])
    options = {**model_options(saved.config), "conv_impl": conv_impl}
    model = models.create_model(saved.config.model.name, len(saved.class_names), **options)
    saved = dataclasses.replace(saved, state=saved.state.replace(apply_fn=model.apply))
    pixels = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    exported = jax.export.deserialize(export_model(saved, ["cpu"]).serialize())
    expected = jax.jit(classifier(saved))(saved.state.variables(), pixels)
    np.testing.assert_allclose(exported.call(pixels), expected, rtol=0, atol=1e-6)


def test_a_binary_cross_entropy_run_exports_sigmoid_probabilities_as_predict_gives(runs, images, tmp_path):
    saved = load_saved_model(runs["mlp"])
    config = saved.config.copy_and_resolve_references()
    config.loss.name = "binary_cross_entropy"
    saved = dataclasses.replace(saved, config=config)
    exported = jax.export.deserialize(export_model(saved).serialize())
    pixels = np.stack([np.load(images[2])])
    got = np.asarray(exported.call(pixels))
    np.testing.assert_allclose(got, jax.jit(classifier(saved))(saved.state.variables(), pixels), atol=1e-6)
    np.testing.assert_allclose(got, jax.nn.sigmoid(saved.state.apply_fn(
        saved.state.variables(), (pixels / 255.0 - config.dataset.mean) / config.dataset.std)), atol=1e-6)
    assert abs(got.sum() - 1.0) > 1e-3  # independent sigmoids, not a softmax


def test_export_and_predict_exported_print_what_predict_prints(runs, images, capsys):
    code, out, err = run_cli(capsys, "export", "--workdir", str(runs["resnet"]))
    path = runs["resnet"] / "export" / "model.jaxexport"
    assert code == 0 and err == "" and out.startswith(f"wrote {path} (")
    assert "uint8 batch x 8x8x3 -> softmax probabilities of 10 classes" in out
    code, exported_out, err = run_cli(capsys, "predict", "--exported", str(path), *images)
    assert code == 0 and err == ""
    code, saved_out, _ = run_cli(capsys, "predict", "--workdir", str(runs["resnet"]), *images)
    assert code == 0 and exported_out == saved_out and len(saved_out.splitlines()) == 3


def test_the_readme_snippet_runs_the_export_with_jax_alone(runs, tmp_path):
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Exported models", 1)[1].split("\n## ", 1)[0]
    snippet = re.search(r"```python\n(import jax.*?)```", section, re.S).group(1)
    assert README_PATH in snippet and len(snippet.strip().splitlines()) <= 6
    out, _ = write_export(runs["cnn"], out=tmp_path / "model.jaxexport")
    code = "import sys; sys.modules['jaxcnn'] = None  # importing jaxcnn now fails\n"
    code += snippet.replace(README_PATH, str(out))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    saved = load_saved_model(runs["cnn"])
    expected = jax.jit(classifier(saved))(saved.state.variables(), jnp.zeros((2, 8, 8, 3), jnp.uint8))
    assert result.stdout.strip() == str(np.asarray(expected).argmax(-1))


def test_an_export_without_its_json_still_predicts_with_a_warning(runs, images, tmp_path, capsys):
    out, _ = write_export(runs["mlp"], out=tmp_path / "model.jaxexport")
    sidecar_path(out).unlink()
    code, stdout, err = run_cli(capsys, "predict", "--exported", str(out), "--top", "1", images[0])
    assert code == 0 and err.startswith("jaxcnn: warning: ") and len(err.splitlines()) == 1
    assert "model.jaxexport.json not found" in err
    assert re.fullmatch(rf"{re.escape(images[0])}: \d \(\d\.\d{{3}}\)\n", stdout)


def test_a_json_of_another_export_is_a_warning(runs, images, tmp_path, capsys):
    out, _ = write_export(runs["mlp"], out=tmp_path / "mlp.jaxexport")
    other, _ = write_export(runs["cnn"], out=tmp_path / "cnn.jaxexport")
    sidecar_path(out).write_bytes(sidecar_path(other).read_bytes())
    code, _, err = run_cli(capsys, "predict", "--exported", str(out), images[0])
    assert code == 0 and "was written for another artifact" in err and len(err.splitlines()) == 1


def test_a_file_that_is_not_an_export_is_one_line(tmp_path, images, capsys):
    for content in (b"", b"not an export\n", np.random.default_rng(0).bytes(4096)):
        (tmp_path / "fake.jaxexport").write_bytes(content)
        code, _, err = run_cli(capsys, "predict", "--exported", str(tmp_path / "fake.jaxexport"), images[0])
        assert_one_line_error(code, err, "fake.jaxexport is not a jax.export artifact")


def test_a_missing_export_is_one_line(tmp_path, images, capsys):
    code, _, err = run_cli(capsys, "predict", "--exported", str(tmp_path / "none.jaxexport"), images[0])
    assert_one_line_error(code, err, "none.jaxexport: no such file")


def test_an_export_of_another_function_is_one_line(tmp_path, images, capsys):
    blob = jax.export.export(jax.jit(jnp.sin))(jax.ShapeDtypeStruct((3,), jnp.float32)).serialize()
    (tmp_path / "sin.jaxexport").write_bytes(blob)
    code, _, err = run_cli(capsys, "predict", "--exported", str(tmp_path / "sin.jaxexport"), images[0])
    assert_one_line_error(code, err, "not a jaxcnn image classifier", "float32[3]")


def test_an_export_for_another_platform_only_is_one_line(runs, images, tmp_path, capsys):
    out, meta = write_export(runs["mlp"], out=tmp_path / "model.jaxexport", platforms=["tpu"])
    assert meta["platforms"] == ["tpu"]
    code, _, err = run_cli(capsys, "predict", "--exported", str(out), images[0])
    assert_one_line_error(code, err, "was exported for tpu", "--platforms")


def test_bad_export_and_predict_options_are_one_line_and_write_nothing(runs, images, tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", "--workdir", str(runs["mlp"]), "--out", str(tmp_path))
    assert_one_line_error(code, err, "is a folder")
    code, _, err = run_cli(capsys, "export", "--workdir", str(runs["mlp"]), "--platforms", "cpu,gpu",
                           "--out", str(tmp_path / "m.jaxexport"))
    assert_one_line_error(code, err, "--platforms", "'cpu,gpu'")
    code, _, err = run_cli(capsys, "export", "--workdir", str(tmp_path / "nowhere"))
    assert_one_line_error(code, err, "has no checkpoints/ folder")
    code, _, err = run_cli(capsys, "export", "--workdir", str(runs["mlp"]), "--step", "999",
                           "--out", str(tmp_path / "m.jaxexport"))
    assert_one_line_error(code, err, "no checkpoint for step 999")
    assert list(tmp_path.iterdir()) == []
    out, _ = write_export(runs["mlp"], out=tmp_path / "m.jaxexport")
    code, _, err = run_cli(capsys, "predict", "--exported", str(out), "--step", "best", images[0])
    assert_one_line_error(code, err, "--step applies to --workdir")


def test_a_bfloat16_run_is_evaluated_and_exported_computing_in_bfloat16(tmp_path, images):
    from jaxcnn.commands.saved import evaluate_saved

    workdir = tmp_path / "bf16"
    summary = train_and_evaluate(load_config("digits_cnn", COMMON + RUNS["mlp"] + ["dtype=bfloat16"]), workdir,
                                 quiet=True)
    saved = load_saved_model(workdir)
    assert evaluate_saved(saved)["test_loss"] == summary["test_loss"]
    out, _ = write_export(workdir, out=tmp_path / "model.jaxexport")
    got, expected = probabilities(predict_exported(out, images, 10)), probabilities(predict(saved, images, 10))
    for file in images:
        np.testing.assert_allclose(got[file], expected[file], rtol=0, atol=1e-6)

"""Users' models: the registry, import paths (`module:Class`), NNX modules through Flax's linen bridge.

The user's module is written to tmp_path, outside the package, and found through sys.path/PYTHONPATH.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cli_run import assert_one_line_error, run_cli
from conftest import REPO
from jaxcnn import models
from jaxcnn.config import load_config, model_section
from jaxcnn.errors import JaxcnnError
from jaxcnn.training.loop import train_and_evaluate
from jaxcnn.models import registry

USER_MODULE = '''
import flax.linen as nn
from flax import nnx


class Net(nn.Module):
    """linen, with BatchNorm and dropout, as the built-in models."""
    num_classes: int
    features: int = 16

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.features, (3, 3))(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x)).mean(axis=(1, 2))
        x = nn.Dropout(0.1, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


class Plain(nn.Module):
    """linen, no train argument."""
    num_classes: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


class NeedsTrain(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train):
        return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


class NNXNet(nnx.Module):
    """NNX, switched by .train()/.eval(); its BatchNorm stats and dropout go through the bridge."""
    def __init__(self, num_classes, channels=1, features=8, *, rngs):
        self.conv = nnx.Conv(channels, features, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(features, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.out = nnx.Linear(features, num_classes, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.conv(x))).mean(axis=(1, 2))
        return self.out(self.drop(x))


class NNXTrain(nnx.Module):
    """NNX taking train itself."""
    def __init__(self, num_classes, *, rngs):
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.out = nnx.Linear(64, num_classes, rngs=rngs)

    def __call__(self, x, train=False):
        return self.out(self.drop(x.reshape((x.shape[0], -1)), deterministic=not train))


def make(num_classes, scale=1):
    return Plain(num_classes)


def returns_int(num_classes):
    return 3


class NotFlax:
    pass


NOT_A_MODEL = 3
'''

# Tiny runs: 8x8 synthetic images, 3 classes, 2 steps an epoch.
TINY = ["dataset.name=synthetic", "dataset.image_shape=(8, 8, 1)", "dataset.num_classes=3", "dataset.num_train=96",
        "dataset.num_test=32", "batch_size=32", "num_epochs=2", "schedule.name=constant", "checkpoint.enabled=true"]
MODULE = "jaxcnn_test_usermod"


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """The user's module on sys.path, under a name of its own; the registry restored afterwards."""
    (tmp_path / f"{MODULE}.py").write_text(USER_MODULE)
    (tmp_path / "jaxcnn_test_broken.py").write_text("raise RuntimeError('broken on purpose')\n")
    (tmp_path / "jaxcnn_test_needs_dep.py").write_text("import jaxcnn_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    return MODULE


def test_a_linen_module_outside_the_package_trains_from_the_command_line_by_import_path(
        tmp_path, monkeypatch, capsys):
    (tmp_path / "jaxcnn_test_cli_usermod.py").write_text(USER_MODULE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "jaxcnn.cli", "train", "--workdir", str(workdir), "--quiet",
         *[f"--config.{o}" for o in TINY + ["num_epochs=1"]],
         "--config.model.name=jaxcnn_test_cli_usermod:Net", "--config.model.options={'features': 8}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["model"] == "jaxcnn_test_cli_usermod:Net" and summary["epochs_run"] == 1
    assert summary["num_params"] == 80 + 16 + 27  # conv 3*3*1*8 + 8, BatchNorm 2*8, Dense 8*3 + 3
    assert json.loads((workdir / "config.json").read_text())["model"] == {
        "name": "jaxcnn_test_cli_usermod:Net", "options": {"features": 8}}

    monkeypatch.syspath_prepend(str(tmp_path))  # eval and predict, here, find the module the same way
    code, out, err = run_cli(capsys, "eval", "--workdir", workdir, "--json", "-")
    assert code == 0 and json.loads(out)["test_loss"] == pytest.approx(summary["test_loss"], rel=1e-5), err
    np.save(tmp_path / "image.npy", np.full((8, 8), 200, np.uint8))
    code, out, err = run_cli(capsys, "predict", "--workdir", workdir, "--json", "-", tmp_path / "image.npy")
    assert code == 0 and len(json.loads(out)[0]["top"]) == 3, err


def test_an_nnx_module_trains_resumes_evaluates_and_predicts_by_import_path(user_module, tmp_path, capsys):
    workdir = tmp_path / "run"
    config = load_config("digits_cnn", TINY + [f"model.name={user_module}:NNXNet", "model.options.features=4"])
    summary = train_and_evaluate(config, workdir, quiet=True)
    assert summary["steps"] == 4 and summary["num_params"] == 40 + 8 + 15  # conv, BatchNorm, Linear

    # Interrupted after epoch 1: no summary, no checkpoint of epoch 2. Resuming must end where the
    # straight run ended, so params, batch_stats and the optimizer state all came back.
    (workdir / "summary.json").unlink()
    shutil.rmtree(workdir / "checkpoints" / "4")
    resumed = train_and_evaluate(config, workdir, quiet=True)
    assert (resumed["test_loss"], resumed["test_accuracy"]) == (summary["test_loss"], summary["test_accuracy"])

    code, out, err = run_cli(capsys, "eval", "--workdir", workdir, "--json", "-")
    assert code == 0, err
    assert json.loads(out)["test_loss"] == pytest.approx(summary["test_loss"], rel=1e-5)
    np.save(tmp_path / "image.npy", np.full((8, 8), 200, np.uint8))
    code, out, err = run_cli(capsys, "predict", "--workdir", workdir, "--json", "-", "--top", "3", tmp_path / "image.npy")
    assert code == 0, err
    top = json.loads(out)[0]["top"]
    assert sorted(c["class"] for c in top) == [0, 1, 2]
    assert sum(c["probability"] for c in top) == pytest.approx(1.0, abs=1e-5)


def apply_modes(model, x):
    """Eval twice, train with two dropout keys: (eval, eval, (train logits, batch_stats) x 2)."""
    variables = jax.jit(model.init)(jax.random.key(0), x)

    @jax.jit
    def run(variables, x):
        evals = [model.apply(variables, x, train=False) for _ in range(2)]
        trains = [model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(k)}, mutable=["batch_stats"])
                  for k in (1, 2)]
        return evals, trains

    return (variables, *run(variables, x))


def test_nnx_batch_norm_and_dropout_follow_the_train_argument_as_the_built_in_models(user_module):
    x = jax.random.normal(jax.random.key(3), (4, 8, 8, 1))
    variables, evals, trains = apply_modes(models.create_model(f"{user_module}:NNXNet", 3), x)
    assert set(variables) == {"params", "batch_stats"}
    np.testing.assert_array_equal(evals[0], evals[1])  # eval: deterministic, running statistics
    assert not np.allclose(trains[0][0], trains[1][0])  # train: dropout draws from the dropout key
    stats = jax.tree.leaves(trains[0][1]["batch_stats"])
    assert any(not np.allclose(new, old) for new, old in zip(stats, jax.tree.leaves(variables["batch_stats"])))

    _, evals, trains = apply_modes(models.create_model(f"{user_module}:NNXTrain", 3), x)
    np.testing.assert_array_equal(evals[0], evals[1])
    assert not np.allclose(trains[0][0], trains[1][0])


def test_a_linen_module_without_train_and_a_factory_function_are_called_as_the_built_in_models(user_module):
    x = jnp.ones((2, 8, 8, 1))
    for name in (f"{user_module}:Plain", f"{user_module}:make"):
        model = models.create_model(name, 3)
        variables, evals, trains = apply_modes(model, x)
        assert evals[0].shape == (2, 3)
        np.testing.assert_array_equal(trains[0][0], evals[0])
        assert models.count_params(variables["params"]) == 64 * 3 + 3


def test_register_model_adds_a_model_to_configs_and_the_models_list(user_module, capsys):
    import jaxcnn

    def small(num_classes, width=4, activation="relu", table=None):
        import flax.linen as nn

        # Sequential passes `train` on to its first layer, which must take it (the loop calls it with train).
        return nn.Sequential([lambda x, train=False: x.reshape((x.shape[0], -1)), nn.Dense(width), nn.relu,
                              nn.Dense(num_classes)])

    jaxcnn.register_model("small", small, {"width": 6}, input_shape=(4, 4, 1))
    assert "small" in models.list_models()
    assert model_section("small").to_dict() == {"name": "small", "width": 6, "activation": "relu", "table": None}
    config = load_config("digits_cnn", ["model.name=small", "model.width=3"])
    assert config.model.width == 3
    code, out, err = run_cli(capsys, "models", f"{user_module}:NNXNet")
    assert code == 0, err
    assert "small" in out and f"{16 * 6 + 6 + 6 * 10 + 10:,}" in out.split("small")[1].splitlines()[0]
    assert f"{user_module}:NNXNet" in out

    with pytest.raises(JaxcnnError, match="already registered.*replace=True"):
        jaxcnn.register_model("small", small)
    jaxcnn.register_model("small", small, replace=True)
    with pytest.raises(JaxcnnError, match="'depth' is not a keyword argument"):
        jaxcnn.register_model("smaller", small, {"depth": 2})
    with pytest.raises(JaxcnnError, match="not a plain value"):
        jaxcnn.register_model("smaller", small, {"table": {"a": 1}})
    with pytest.raises(JaxcnnError, match="invalid name"):
        jaxcnn.register_model("my:net", small)
    with pytest.raises(JaxcnnError, match="not a Flax module"):
        jaxcnn.register_model("nothing", 3)


def test_model_options_are_set_as_a_dict_or_key_by_key(user_module):
    name = f"model.name={user_module}:NNXNet"
    config = load_config("digits_cnn", [name, "model.options={'features': 4}", "model.options.channels=1"])
    assert config.model.options.to_dict() == {"features": 4, "channels": 1}
    with pytest.raises(JaxcnnError, match="input shape 8x8x1: the model cannot take it"):
        load_config("digits_cnn", [name, "model.options.channels=3"])  # digits are grey
    with pytest.raises(JaxcnnError, match="expects a dict"):
        load_config("digits_cnn", [name, "model.options=4"])
    with pytest.raises(JaxcnnError, match="unknown config key 'model.options'"):
        load_config("digits_cnn", ["model.name=mlp", "model.options={'a': 1}"])


@pytest.mark.parametrize("args, fragments", [
    (["--config.model.name=jaxcnn_no_such_module:Net"], ["no module named 'jaxcnn_no_such_module'", "PYTHONPATH"]),
    (["--config.model.name=MODULE:Missing"], ["has no attribute 'Missing'"]),
    (["--config.model.name=MODULE:NotFlax"], ["NotFlax is not a Flax module"]),
    (["--config.model.name=MODULE:NOT_A_MODEL"], ["is not a Flax module"]),
    (["--config.model.name=MODULE:returns_int"], ["returned a int, not a Flax module"]),
    (["--config.model.name=MODULE:NeedsTrain"], ["train without a default"]),
    (["--config.model.name=jaxcnn_test_broken:Net"], ["importing 'jaxcnn_test_broken' failed", "broken on purpose"]),
    (["--config.model.name=jaxcnn_test_needs_dep:Net"],
     ["importing 'jaxcnn_test_needs_dep' failed", "No module named 'jaxcnn_no_such_dependency'"]),
    (["--config.model.name=MODULE:Net", "--config.model.options={'width': 3}"], ["'width'", "model.options"]),
    (["--config.model.name=MODULE:"], ["expected an import path"]),
    (["--config.model.name=mine"], ["unknown model 'mine'", "import path"]),
])
def test_a_bad_model_is_one_line_and_exit_2(user_module, capsys, args, fragments):
    args = [a.replace("MODULE", user_module) for a in args]
    assert_one_line_error(run_cli(capsys, "train", "--show-config", *args), *fragments)

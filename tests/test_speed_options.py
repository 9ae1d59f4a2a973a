"""Gradient accumulation, bfloat16 computation and the persistent compilation cache."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from jaxcnn import models
from jaxcnn.core import losses, optim
from jaxcnn.runtime import compilation
from jaxcnn.config import load_config
from jaxcnn.errors import JaxcnnError
from jaxcnn.training.loop import train_and_evaluate
from jaxcnn.core.state import create_train_state
from jaxcnn.core.steps import train_step


def mlp_state(grad_accum_steps, dtype=jnp.float32, model="mlp", **options):
    model = models.create_model(model, 10, dtype=dtype, **options)
    tx = optim.create_optimizer({"name": "sgd", "learning_rate": 0.1, "momentum": 0.9},
                                {"name": "constant"}, steps_per_epoch=4, num_epochs=1,
                                grad_accum_steps=grad_accum_steps)
    return create_train_state(model, tx, losses.make_classification_loss("cross_entropy", 10),
                              (28, 28, 1), seed=0)


def batch(rng, n):
    return {"image": jnp.asarray(rng.normal(size=(n, 28, 28, 1)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, 10, n), jnp.int32)}


def test_four_accumulated_batches_of_32_equal_one_batch_of_128_for_the_mlp():
    rng = np.random.default_rng(0)
    batches = [batch(rng, 128) for _ in range(2)]
    step = jax.jit(train_step)
    large, accumulated = mlp_state(1), mlp_state(4)
    initial = accumulated.params
    for big in batches:
        large, _ = step(large, big)
        for k in range(4):
            accumulated, _ = step(accumulated, jax.tree.map(lambda a: a[32 * k:32 * (k + 1)], big))
            if k < 3 and big is batches[0]:  # no update until the 4th micro-batch
                for a, b in zip(jax.tree.leaves(accumulated.params), jax.tree.leaves(initial)):
                    np.testing.assert_array_equal(a, b)
    for got, want in zip(jax.tree.leaves(accumulated.params), jax.tree.leaves(large.params)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert float(optim.learning_rate_in_effect(accumulated.opt_state)) == pytest.approx(0.1)


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_params_and_loss():
    state = mlp_state(1, jnp.bfloat16, model="cnn", blocks=((4,),), hidden=(16,))
    rng = np.random.default_rng(1)
    data = batch(rng, 64)
    hidden = jax.jit(lambda v, x: state.apply_fn(v, x, capture_intermediates=True)[1])(
        state.variables(), data["image"])
    conv_out = hidden["intermediates"]["Conv_0"]["__call__"][0]
    assert conv_out.dtype == jnp.bfloat16
    step = jax.jit(train_step)
    first_loss = None
    for _ in range(15):
        state, metrics = step(state, data)
        first_loss = first_loss if first_loss is not None else float(metrics["loss"])
    assert metrics["loss"].dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves((state.params, state.opt_state))} <= {
        jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}
    assert float(metrics["loss"]) < 0.5 * first_loss


def test_a_bfloat16_run_trains_on_digits(tmp_path):
    config = load_config("digits_cnn", ["model.name=mlp", "num_epochs=3", "schedule.name=constant",
                                        "dtype=bfloat16"])
    summary = train_and_evaluate(config, tmp_path / "bf16", quiet=True)
    assert summary["test_accuracy"] > 0.85


def test_unknown_dtype_and_bad_accumulation_are_user_errors():
    with pytest.raises(JaxcnnError, match=r"unknown dtype 'float8' \(dtype\); expected one of: bfloat16, float16, float32"):
        load_config("digits_cnn", ["dtype=float8"])
    with pytest.raises(JaxcnnError, match="grad_accum_steps"):
        load_config("digits_cnn", ["grad_accum_steps=0"])


def test_a_second_run_loads_every_program_from_the_default_compilation_cache_and_compiles_faster(tmp_path):
    """The cache is on by default, in $XDG_CACHE_HOME/jaxcnn; summary.json says whether it served
    the first call, and the output says when training starts and when it has compiled."""
    command = [sys.executable, "-m", "jaxcnn.cli", "train", "--config.model.name=mlp",
               "--config.model.hidden=(16,)", "--config.num_epochs=1", "--config.schedule.name=constant"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    cache = tmp_path / "xdg" / "jaxcnn"
    runs = []
    for name in ("a", "b"):
        out = subprocess.run(command + ["--workdir", str(tmp_path / name)], cwd=REPO, env=env, check=True,
                             capture_output=True, text=True).stdout.splitlines()
        runs.append((out, json.loads((tmp_path / name / "summary.json").read_text()),
                     sorted(p.name for p in cache.iterdir())))
    (out_a, first, files_a), (out_b, second, files_b) = runs
    assert files_a, "the first run wrote no compiled programs to the cache"
    assert files_b == files_a  # all hits, nothing compiled anew
    assert first["compile_cache_hit"] is False and second["compile_cache_hit"] is True
    assert first["compilation_cache"]["dir"] == str(cache) and second["compilation_cache"]["misses"] == 0
    assert second["compile_s"] < first["compile_s"]
    assert out_a[0].startswith("training mlp (") and out_a[0].endswith("compiling")
    assert out_b[1].startswith("compiled in") and "from the compilation cache" in out_b[1]
    for summary in (first, second):
        assert summary["steady_train_images_per_s"] > 0 and summary["train_images_per_s"] > 0
        assert summary["validation_s"] > 0 and summary["train_s"] > 0


def test_the_cache_is_off_for_an_empty_folder_and_silently_off_where_auto_cannot_write(tmp_path, monkeypatch):
    assert compilation.resolve_cache_dir("") is None
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation.resolve_cache_dir("auto") == tmp_path / "xdg" / "jaxcnn"
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file" / "cache"))  # a home that cannot hold it
    assert compilation.resolve_cache_dir("auto") is None
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "file"))
    assert compilation.resolve_cache_dir("auto") is None
    assert compilation.resolve_cache_dir(tmp_path / "mine") == tmp_path / "mine"
    with pytest.raises(JaxcnnError, match=r"^compilation_cache_dir '.*' cannot be created"):
        compilation.resolve_cache_dir(tmp_path / "file" / "cache")

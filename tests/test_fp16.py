"""float16 with dynamic loss scaling (`config.dtype="float16"`, `config.loss_scale`, jaxcnn/core/loss_scale.py):
it trains, an overflowing step is skipped (the state unchanged, the scale halved), the divergence
guard tells skipping from diverging, resume is bitwise, members each have their own scale, and a
float32 run is left exactly as it was."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import sigterm_after

from jaxcnn.config import load_config
from jaxcnn.core import loss_scale
from jaxcnn.core.build import build
from jaxcnn.core.state import ScaledTrainState, TrainState
from jaxcnn.core.steps import train_step
from jaxcnn.files import checkpoint
from jaxcnn.files.writers import read_jsonl, without_timing
from jaxcnn.training.divergence import TrainingDiverged
from jaxcnn.training.loop import fit, train_and_evaluate

FP16 = ["dtype=float16"]
MLP = FP16 + ["model.name=mlp", "model.hidden=(32,)", "num_epochs=2", "log_every_steps=10"]


def records(workdir, event=None):
    return [without_timing(r) for r in read_jsonl(pathlib.Path(workdir) / "metrics.jsonl")
            if event is None or r["event"] == event]


def saved_tree(workdir):
    """The latest checkpoint's train state as written (nested dicts)."""
    manager = checkpoint.open_manager(pathlib.Path(workdir) / checkpoint.CHECKPOINT_DIR, read_only=True)
    try:
        state = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    finally:
        manager.close()
    return state["state"]["train_state"]


def equal(a, b):
    left, right = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
    return len(left) == len(right) and all(np.array_equal(x, y) for x, y in zip(left, right))


def test_a_float16_cnn_trains_on_digits_with_float32_parameters_and_reports_its_loss_scale(tmp_path):
    trained = fit(load_config("digits_cnn", FP16 + ["num_epochs=3"]), tmp_path / "run", quiet=True)
    state, summary = trained.state, trained.summary
    assert isinstance(state, ScaledTrainState) and not state.ema  # EMA off: no averages
    assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    assert summary["test_accuracy"] > 0.9
    assert summary["loss_scale"] == 2.0**15 and summary["skipped_steps"] == 0
    assert all({"loss_scale", "skipped_steps"} <= set(r) for r in records(tmp_path / "run", "train"))


def test_the_scale_doubles_after_growth_interval_finite_steps_and_halves_to_its_minimum_on_overflow():
    policy = loss_scale.Policy(initial=8.0, growth_interval=3, minimum=2.0)
    state, scales = loss_scale.initial(policy), []
    for finite in [True, True, True, True, False, False, False, True]:
        state = loss_scale.next_scale(state, jnp.asarray(finite), policy)
        scales.append(float(state["scale"]))
    assert scales == [8.0, 8.0, 16.0, 16.0, 8.0, 4.0, 2.0, 2.0]
    assert int(state["skipped_steps"]) == 3 and int(state["good_steps"]) == 1


def test_an_overflowing_step_is_skipped_leaving_the_state_but_its_step_count_and_halving_the_scale():
    config = load_config("digits_cnn", FP16 + ["ema.decay=0.9", "loss_scale.initial=1e30", "schedule.name=constant"])
    state = build(config, num_classes=10, steps_per_epoch=10).init_state(config, (8, 8, 1))
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.normal(size=(16, 8, 8, 1)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32)}
    after, metrics = jax.jit(train_step)(state, batch)
    assert float(metrics["skipped"]) == 1.0 and int(after.step) == 1
    assert float(after.loss_scale["scale"]) == np.float32(1e30) / 2 and int(after.loss_scale["skipped_steps"]) == 1
    assert equal((after.params, after.batch_stats, after.opt_state, after.ema),
                 (state.params, state.batch_stats, state.opt_state, state.ema))
    applied, metrics = jax.jit(train_step)(after.replace(loss_scale=loss_scale.initial(loss_scale.Policy())), batch)
    assert float(metrics["skipped"]) == 0.0 and int(applied.loss_scale["good_steps"]) == 1
    assert not equal(applied.params, state.params) and not equal(applied.ema, state.ema)


def test_skipped_steps_are_not_divergence_and_are_left_out_of_the_logged_loss(tmp_path):
    overrides = MLP + ["loss_scale.initial=1e12", "log_every_steps=2", "max_steps=60"]
    summary = train_and_evaluate(load_config("digits_cnn", overrides), tmp_path / "run", quiet=True)
    train = records(tmp_path / "run", "train")
    assert 0 < summary["skipped_steps"] < 60 and summary["loss_scale"] < 1e12
    assert train[0]["loss"] is None and train[0]["skipped_steps"] == 2  # both steps skipped: no loss to log
    assert all(np.isfinite(r["loss"]) for r in train if r["step"] > summary["skipped_steps"] + 2)


def test_every_step_overflowing_at_the_minimum_scale_is_divergence(tmp_path):
    overrides = MLP + ["loss_scale.initial=1e30", "loss_scale.minimum=1e30", "log_every_steps=5"]
    with pytest.raises(TrainingDiverged, match="every step overflowed in float16 at loss_scale.minimum"):
        train_and_evaluate(load_config("digits_cnn", overrides), tmp_path / "run", quiet=True)


@pytest.mark.parametrize("extra", [[], ["seeds=2"]], ids=["single", "members"])
def test_a_float16_run_stopped_by_sigterm_resumes_bitwise_like_the_uninterrupted_run(tmp_path, monkeypatch, extra):
    # Overflows early (skips, a scale coming down) and grows later, with EMA and fused steps.
    overrides = MLP + extra + ["loss_scale.initial=1e8", "loss_scale.growth_interval=10", "ema.decay=0.9",
                               "steps_per_call=3"]
    straight = train_and_evaluate(load_config("digits_cnn", overrides), tmp_path / "straight", quiet=True)
    _, restore = sigterm_after(monkeypatch, 50)
    with pytest.raises(checkpoint.TrainingInterrupted):
        train_and_evaluate(load_config("digits_cnn", overrides), tmp_path / "run", quiet=True)
    restore()
    resumed = train_and_evaluate(load_config("digits_cnn", overrides), tmp_path / "run", quiet=True)
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    assert records(tmp_path / "run") == records(tmp_path / "straight")
    assert equal(saved_tree(tmp_path / "run"), saved_tree(tmp_path / "straight"))  # loss scale included
    scales = [r["loss_scale"] for r in records(tmp_path / "run", "train")]
    assert max(scales) < 1e8 and len(set(scales)) > 1  # it came down, then grew and overflowed again


def test_each_member_has_its_own_loss_scale_and_is_its_single_run_bitwise(tmp_path):
    overrides = FP16 + ["model.name=tiny_cnn", "num_epochs=1", "log_every_steps=15", "loss_scale.initial=1e6",
                        "loss_scale.growth_interval=5"]
    summary = train_and_evaluate(load_config("digits_cnn", overrides + ["seeds=(0, 5)"]), tmp_path / "m", quiet=True)
    stacked = saved_tree(tmp_path / "m")["state"]
    assert np.shape(stacked["loss_scale"]["scale"]) == (2,)
    for index, seed in enumerate((0, 5)):
        single = train_and_evaluate(load_config("digits_cnn", overrides + [f"seed={seed}"]), tmp_path / f"s{seed}",
                                    quiet=True)
        member = summary["members"][index]
        assert (member["loss_scale"], member["skipped_steps"]) == (single["loss_scale"], single["skipped_steps"])
        assert member["skipped_steps"] > 0 and member["test_accuracy"] == single["test_accuracy"]
        assert equal(jax.tree.map(lambda x: x[index], stacked), saved_tree(tmp_path / f"s{seed}"))


def test_a_frozen_layer_stays_as_it_was_under_float16(tmp_path):
    overrides = MLP + ["freeze=('Dense_0',)", "loss_scale.initial=1e8", "max_steps=30"]
    trained = fit(load_config("digits_cnn", overrides), tmp_path / "run", quiet=True)
    config = load_config("digits_cnn", overrides)
    fresh = build(config, num_classes=10, steps_per_epoch=40).init_state(config, (8, 8, 1))
    assert trained.summary["skipped_steps"] > 0
    assert equal(trained.state.params["Dense_0"], fresh.params["Dense_0"])
    assert not equal(trained.state.params["Dense_1"], fresh.params["Dense_1"])


def test_a_float32_run_keeps_its_plain_state_totals_and_records(tmp_path):
    trained = fit(load_config("digits_cnn", MLP[1:] + ["max_steps=10"]), tmp_path / "run", quiet=True)
    assert type(trained.state) is TrainState and "loss_scale" not in trained.summary
    assert "loss_scale" not in saved_tree(tmp_path / "run") and "skipped" not in str(records(tmp_path / "run"))


def test_the_readmes_float16_commands_are_valid_configs():
    """The README's float16 commands (run as written when the section was written) still name
    keys and values the config accepts."""
    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("### float16 with dynamic loss scaling", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [c for c in block.replace("\\\n", " ").splitlines() if c.startswith("jaxcnn train")]
    assert len(commands) == 2
    for command in commands:
        words = command.split("#")[0].split()
        preset = words[words.index("--config") + 1]
        config = load_config(preset, [w[len("--config."):] for w in words if w.startswith("--config.")])
        assert config.dtype == "float16"

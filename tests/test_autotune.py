"""Convolutions and compiler options chosen by measurement (`jaxcnn.core.autotune`)."""

import json

import jax
import jax.numpy as jnp
import pytest

from jaxcnn.core import autotune
from jaxcnn.models import conv_plan, create_model


@pytest.fixture(autouse=True)
def tuner_on(monkeypatch):
    monkeypatch.setenv(autotune.SWITCH_ENV, "1")  # the suite turns it off (conftest.py)


def _conv_ops(model, train: bool) -> int:
    """How many of XLA's convolution ops the model's forward pass holds."""
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    rngs = {"dropout": jax.random.key(1)}
    text = str(jax.make_jaxpr(lambda v: model.apply(v, jnp.zeros((2, 28, 28, 1)), train=train, rngs=rngs,
                                                   mutable=["batch_stats"]))(variables))
    return text.count("conv_general_dilated")


def _key(model) -> str:
    with conv_plan.recorded() as shapes:
        model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    return shapes[0][0]


def test_a_plan_picks_each_convolutions_implementation_per_context():
    key = _key(create_model("tiny_cnn", 10))
    plan = ((key, "train", "xla"), (key, "forward", "shift"))
    model = create_model("tiny_cnn", 10, conv_plan=plan)
    assert _conv_ops(model, train=True) == 1 and _conv_ops(model, train=False) == 0
    flipped = create_model("tiny_cnn", 10, conv_plan=((key, "train", "shift"), (key, "forward", "xla")))
    assert _conv_ops(flipped, train=False) == 1


def test_a_fixed_conv_impl_ignores_the_plan():
    key = _key(create_model("tiny_cnn", 10))
    model = create_model("tiny_cnn", 10, conv_impl="xla", conv_plan=((key, "forward", "shift"),))
    assert _conv_ops(model, train=False) == 1


def test_forward_only_defaults_to_xlas_convolution_without_a_plan():
    assert _conv_ops(create_model("tiny_cnn", 10), train=False) == 1


def test_the_descent_keeps_only_changes_that_are_faster_by_the_margin(monkeypatch):
    """Timings stubbed by what the program computes: shift is 2x faster in training, im2col only 1%
    faster (within the margin), and the other option set slower."""
    def cost(plan, option_set, context):
        impl = conv_plan.lookup(plan, "k", context) or "xla"
        return {"xla": 1.0, "shift": 0.5 if context == "train" else 1.2, "im2col": 0.99}[impl] * (
            1.5 if option_set != "individual_dot" else 1.0)

    class Probe:
        def __init__(self, context):
            self.context = context

        def run(self, plan, option_set):
            return lambda: cost(plan, option_set, self.context)

    monkeypatch.setattr(autotune, "_interleaved", lambda a, b: (a(), b()))
    for context, expected in (("train", "shift"), ("forward", "xla")):
        plan, option_set, timings = autotune._descend(Probe(context), [("k", 1, False)], (("k", context, "xla"),), True)
        assert conv_plan.lookup(plan, "k", context) == expected and option_set == "individual_dot"
        sets = len(autotune.compilation.OPTION_SETS)
        assert len(timings) == 2 * sets + sets - 1  # two other implementations per option set, then the sets


@pytest.mark.parametrize("fused_per_step_s,expected", [(0.5, (16, 500.0)), (0.98, (1, 0.0))])
def test_fused_steps_are_chosen_only_when_faster_per_step_by_the_margin(monkeypatch, fused_per_step_s, expected):
    """An MLP's call of 16 rolled steps against one step per call: chosen at half the time per step,
    not at 2% less (within the margin). The programs are built; their timings are stubbed."""
    make = lambda plan: create_model("mlp", 10, hidden=(8,))
    model = make(())
    variables = model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))
    probe = autotune._Probe(make, variables, "train", jnp.zeros((2, 4, 4, 1)), jnp.zeros((2,), jnp.int32))
    steps = {}

    def interleaved(one, fused):  # runs both calls once; 1 s per step alone, `fused_per_step_s` fused
        steps["one"], steps["fused"] = one(), fused()
        return 1.0, 16 * fused_per_step_s

    monkeypatch.setattr(autotune, "_interleaved", interleaved)
    timings = []
    assert autotune._fused_steps(probe, (), "individual_dot", timings) == expected
    loss_one, losses_fused = steps["one"][1], steps["fused"][1]  # the calls ran: 1 and 16 steps' losses
    assert loss_one.shape == (1,) and losses_fused.shape == (16,) and losses_fused[0] == loss_one[0]
    assert timings == [("train", "steps_per_call 16 (against 1: 1000.000 per step)", 1e3 * 16 * fused_per_step_s / 16)]


def test_a_run_with_steps_per_call_0_trains_with_the_measured_count_and_records_it(tmp_path, monkeypatch):
    from jaxcnn.config import load_config
    from jaxcnn.training.loop import train_and_evaluate

    monkeypatch.setattr(autotune, "_fused_steps", lambda *a: (4, 100.0))  # the measurement, stubbed
    config = load_config("mnist_mlp", ["num_epochs=1", "dataset.name=synthetic", "dataset.num_train=64",
                                       "dataset.num_test=32", "dataset.image_shape=(4, 4, 1)", "batch_size=8",
                                       "eval_batch_size=32", "model.hidden=(8,)", "log_every_steps=6",
                                       "compilation_cache_dir=" + str(tmp_path / "cache")])
    assert config.steps_per_call == 0  # the default: chosen by measurement
    summary = train_and_evaluate(config, tmp_path / "run", quiet=True)
    assert summary["autotune"]["steps_per_call"] == 4
    assert json.loads((tmp_path / "run" / "config.json").read_text())["steps_per_call"] == 4
    assert json.loads((tmp_path / "run" / autotune.PLAN_FILE).read_text())["steps_per_call"] == 4
    monkeypatch.setenv(autotune.SWITCH_ENV, "0")  # nothing measured: one step per call
    train_and_evaluate(config, tmp_path / "off", quiet=True)
    assert json.loads((tmp_path / "off" / "config.json").read_text())["steps_per_call"] == 1


def test_a_short_run_calls_one_step_at_a_time_when_fusing_saves_less_than_its_start_up():
    """4 fused steps saving 0.1 ms each: worth their programs' start-up (`FUSED_START_S`) over 10,000
    steps, not over 937 (one epoch of MNIST at batch 64); `max_steps` counts as the run's length."""
    plan = autotune.Tuned(steps_per_call=4, fused_saving_ms=0.1)
    assert autotune.FUSED_START_S == 0.5
    assert plan.for_run(10_000) == plan
    assert plan.for_run(937) == autotune.Tuned(steps_per_call=1, fused_saving_ms=0.1)
    assert autotune.Tuned().for_run(10) == autotune.Tuned()
    assert autotune.Tuned.from_json(plan.to_json(), "cached").fused_saving_ms == 0.1
    from jaxcnn.config import load_config
    from jaxcnn.config.run_options import run_length  # the run's steps `for_run` is given
    config = load_config("mnist_speedrun", [])
    assert run_length(config, 937) == 937 and run_length(load_config("mnist_speedrun", ["max_steps=50"]), 937) == 50


def test_a_run_fuses_a_count_next_to_the_measured_one_when_that_one_fits_its_epochs_and_intervals():
    """1,875 steps an epoch (60,000 images in batches of 32), logged every 100: 4 per call leaves a
    call of 3 before each epoch's end (a second program to load), 5 makes every call one program. A
    count that fits already, or with no fitting count next to it, stays."""
    from jaxcnn.config import load_config
    from jaxcnn.core.executor import plan_calls
    from jaxcnn.training.run import call_period
    config = load_config("mnist_speedrun", [])
    period = call_period(config, 1875)
    assert period == 25
    plan = autotune.Tuned(steps_per_call=4, fused_saving_ms=1.0)
    count = plan.for_run(1875, period).steps_per_call
    assert count == 5 and {size for _, size in plan_calls(0, 1875, 0, count, (100, 0))} == {5}
    assert {size for _, size in plan_calls(0, 1875, 0, 4, (100, 0))} == {4, 3}
    assert autotune.fitting_count(4, 1000) == 4 and autotune.fitting_count(4, 0) == 4
    assert autotune.fitting_count(4, 21) == 3 and autotune.fitting_count(16, 1009) == 16
    assert call_period(load_config("mnist_speedrun", ["checkpoint.every_steps=30"]), 1875) == 5


def test_a_plan_is_measured_once_per_machine_then_read_from_the_cache(tmp_path, monkeypatch):
    make = lambda plan: create_model("tiny_cnn", 10, conv_plan=plan)
    batches = {"train": 8, "forward": 16}
    first = autotune.choose_plan(make, {"model": "tiny_cnn"}, (28, 28, 1), 10, batches, tmp_path)
    assert first.source == "measured" and {c for _, c, _ in first.conv} == {"train", "forward"}
    assert dict(first.options).keys() == {"train", "forward"} and first.timings
    monkeypatch.setattr(autotune, "tune", lambda *a, **k: pytest.fail("measured again"))
    second = autotune.choose_plan(make, {"model": "tiny_cnn"}, (28, 28, 1), 10, batches, tmp_path)
    assert second.source == "cached" and (second.conv, second.options) == (first.conv, first.options)


def test_the_switch_off_gives_the_defaults_without_measuring(tmp_path, monkeypatch):
    monkeypatch.setenv(autotune.SWITCH_ENV, "0")
    monkeypatch.setattr(autotune, "tune", lambda *a, **k: pytest.fail("measured"))
    plan = autotune.choose_plan(lambda plan: create_model("tiny_cnn", 10, conv_plan=plan), {"model": "tiny_cnn"},
                                (28, 28, 1), 10, {"train": 8, "forward": 16}, tmp_path)
    assert plan == autotune.DEFAULT and plan.source == "default"


def test_a_run_records_its_plan_and_a_resumed_run_replays_it(tmp_path, monkeypatch):
    from jaxcnn.training.loop import train_and_evaluate
    from jaxcnn.config import load_config

    config = load_config("digits_cnn", ["num_epochs=1", "dataset.name=synthetic", "dataset.num_train=64",
                                        "dataset.num_test=32", "batch_size=16", "eval_batch_size=32",
                                        "model.blocks=((4,),)", "model.hidden=()"])
    summary = train_and_evaluate(config, tmp_path / "run", quiet=True)
    recorded = json.loads((tmp_path / "run" / autotune.PLAN_FILE).read_text())
    assert summary["autotune"]["conv"] == recorded["conv"] and recorded["source"] in ("measured", "cached")
    certificate = json.loads((tmp_path / "run" / "certificate.json").read_text())
    assert certificate["autotune"]["conv"] == recorded["conv"]
    assert set(certificate["compiler_options"]) == {"train", "forward"}
    # A plan the machine would not choose, written into the workdir, is the one a later run uses.
    forced = {**recorded, "conv": [{**e, "impl": "im2col"} for e in recorded["conv"]]}
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / autotune.PLAN_FILE).write_text(json.dumps(forced))
    monkeypatch.setattr(autotune, "tune", lambda *a, **k: pytest.fail("measured instead of replayed"))
    again = train_and_evaluate(config, tmp_path / "again", quiet=True)
    assert again["autotune"]["source"] == "recorded"
    assert {e["impl"] for e in again["autotune"]["conv"]} == {"im2col"}


def test_the_pooled_first_layer_is_a_candidate_forward_only_where_the_model_allows_it():
    assert autotune.candidates(1, poolable=True, context="forward")[-1] == "pooled"
    assert "pooled" not in autotune.candidates(1, poolable=True, context="train")
    assert "pooled" not in autotune.candidates(1, poolable=False, context="forward")
    with conv_plan.recorded() as shapes:
        create_model("cnn", 10).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    assert [poolable for _, _, poolable in shapes] == [True, False]  # 1 input channel, then 32
    with conv_plan.recorded() as shapes:  # BatchNorm between the convolution and its activation
        create_model("cnn", 10, batch_norm=True).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    assert [poolable for _, _, poolable in shapes] == [False, False]

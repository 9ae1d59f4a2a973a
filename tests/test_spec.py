"""The config schema (`jaxcnn.spec`): shared checks, typed sections, registries as data."""

import ast
import dataclasses
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import spec
from jaxcnn.core import losses, optim, precision
from jaxcnn.models import layers
from jaxcnn.config import base_config, load_config
from jaxcnn.errors import JaxcnnError

PACKAGE = pathlib.Path(spec.__file__).parent


# ---------------------------------------------------------------------------- shared checks

@pytest.mark.parametrize("check, good, bad, expected", [
    (spec.positive_int, [1, 7, np.int64(3)], [0, -1, 1.5, True, "3", None], "a positive integer"),
    (spec.non_negative_int, [0, 5], [-1, 0.0, False], "a non-negative integer"),
    (spec.integer(2), [2, 9], [1], "an integer >= 2"),
    (spec.number(0, 1, high_open=True), [0, 0.5, 0.999], [1, -0.1], "in [0, 1)"),
    (spec.number(0, low_open=True), [1e-9, 3], [0, -2], "> 0"),
    (spec.number(), [-3, 2.5], ["fast", True], "a number"),
    (spec.boolean, [True, False], [1, "yes", None], "true or false"),
    (spec.string, ["", "x"], [1, None], "a string"),
    (spec.sizes, [(), (1, 64)], [(0,), "12", (1.5,), 3], "a tuple of integers >= 1, e.g. (64, 128)"),
    (spec.increasing_epochs, [(), (1, 2.5)], [(2, 1), (0, 1), 3], "positive epochs in increasing order, e.g. (30, 60)"),
    (spec.stat, [0.5, (0.1, 0.2, 0.3)], ["x", (), (0.1, "y")], "a number or a tuple of numbers (one per channel)"),
])
def test_each_shared_check_passes_good_values_and_names_the_key_and_what_was_expected(check, good, bad, expected):
    for value in good:
        assert check("sec.key", value) == (tuple(value) if isinstance(value, tuple) else value)
    for value in bad:
        with pytest.raises(JaxcnnError) as error:
            check("sec.key", value)
        assert str(error.value).startswith(f"sec.key must be {expected}, got {value!r}")


@pytest.mark.parametrize("value, shown", [(math.inf, "inf"), (-math.inf, "-inf"), (math.nan, "nan")])
def test_a_number_check_refuses_non_finite_values(value, shown):
    with pytest.raises(JaxcnnError, match=f"^k must be a finite number, got {shown}$"):
        spec.number()("k", value)
    with pytest.raises(JaxcnnError, match=f"^config key 'a.b' is {shown}; every number in a config must be finite"):
        spec.finite({"a": {"b": (1.0, value)}})


def test_one_of_lists_the_names_and_suggests_the_closest():
    assert spec.one_of("k", "max", ("avg", "max")) == "max"
    with pytest.raises(JaxcnnError) as error:
        spec.one_of("model.pool", "mx", ("max", "avg"), "pool kind")
    assert str(error.value) == "unknown pool kind 'mx' (model.pool); expected one of: avg, max; did you mean 'max'?"
    with pytest.raises(JaxcnnError, match=r"^unknown value 3 \(k\); expected one of: a, b$"):
        spec.one_of("k", 3, ("b", "a"))


# ---------------------------------------------------------------------------- did you mean

@pytest.mark.parametrize("override, message", [
    ("optimizer.name=adm", "unknown optimizer 'adm' (optimizer.name); expected one of: adam, adamw, rmsprop, sgd; "
                           "did you mean 'adam'?"),
    ("schedule.name=warmup_cosin", "unknown schedule 'warmup_cosin' (schedule.name); expected one of: constant, "
                                   "exponential, piecewise, plateau, warmup_cosine, warmup_linear; did you mean 'warmup_cosine'?"),
    ("loss.name=crossentropy", "did you mean 'cross_entropy'?"),
    ("model.activation=rleu", "unknown activation 'rleu' (model.activation); expected one of: elu, gelu, leaky_relu, "
                              "linear, relu, sigmoid, tanh; did you mean 'relu'?"),
    ("model.pool=mx", "unknown pool kind 'mx' (model.pool); expected one of: avg, max; did you mean 'max'?"),
    ("parallel=pmp", "did you mean 'pmap'?"),
    ("dtype=bfloat61", "did you mean 'bfloat16'?"),
    ("early_stopping.monitor=val_acc", "did you mean 'val_accuracy'?"),
])
def test_a_mistyped_name_in_a_config_suggests_the_registered_one(override, message):
    with pytest.raises(JaxcnnError) as error:
        load_config("digits_cnn", [override])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_unknown_key_of_a_section_suggests_the_known_one():
    with pytest.raises(JaxcnnError, match=r"^unknown config key 'optimizer.learing_rate'; did you mean "
                                          r"'optimizer.learning_rate'\?$"):
        spec.OptimizerSpec.parse({"learing_rate": 0.1})


# ---------------------------------------------------------------------------- typed sections

@pytest.mark.parametrize("preset", ["digits_cnn", "cifar10_resnet20", "tfds_example"])
def test_a_config_round_trips_through_its_typed_sections(preset):
    config = load_config(preset)
    run = spec.parse(config)
    assert isinstance(run.optimizer, spec.OptimizerSpec)
    assert run.optimizer.learning_rate == config.optimizer.learning_rate
    assert run.model.name == config.model.name and run.dataset.options == {
        k: v for k, v in config.dataset.items() if k not in spec.DATASET_COMMON_KEYS}
    assert run.to_dict() == config.to_dict()
    assert spec.parse(run.to_dict()) == run


def test_sections_are_frozen_and_fill_missing_keys_with_their_defaults():
    sgd = spec.OptimizerSpec.parse({"name": "sgd", "momentum": 0.9})
    assert (sgd.name, sgd.momentum, sgd.learning_rate) == ("sgd", 0.9, spec.OptimizerSpec().learning_rate)
    assert spec.OptimizerSpec.parse(sgd) is sgd
    with pytest.raises(dataclasses.FrozenInstanceError):
        sgd.momentum = 0.5  # type: ignore[misc]
    with pytest.raises(JaxcnnError, match=r"^optimizer.momentum must be in \[0, 1\), got 1.0$"):
        dataclasses.replace(sgd, momentum=1.0)


def test_base_config_holds_exactly_the_keys_and_defaults_of_the_spec():
    config = base_config("mlp", "synthetic")
    sections = spec.sections()
    assert set(config.keys()) == {f.name for f in dataclasses.fields(spec.RunSpec)}
    assert {k: config[k] for k in spec.RunSpec.defaults()} == spec.RunSpec.defaults()
    for key, section in sections.items():
        if key not in ("model", "dataset"):
            assert config[key].to_dict() == section.defaults(), key
    common = {k: config.dataset[k] for k in spec.DATASET_COMMON_KEYS}
    assert common == {**spec.DatasetSpec.defaults(), "name": "synthetic"}


@pytest.mark.parametrize("changes, message", [
    ({"early_stopping": {"enabled": True}, "dataset": {"val_fraction": 0.0}}, "needs a validation split"),
    ({"schedule": {"end_learning_rate": 0.5}}, r"schedule.end_learning_rate must be in \[0, optimizer.learning_rate"),
    ({"loss": {"name": "mse", "label_smoothing": 0.1}}, "only supported with loss.name 'cross_entropy'"),
    ({"optimizer": 3}, "config key 'optimizer' must be a section"),
    ({"batch_size": 0}, "^batch_size must be a positive integer, got 0$"),
])
def test_checks_across_keys_run_when_the_whole_config_is_parsed(changes, message):
    values = base_config().to_dict()
    for key, value in changes.items():
        values[key] = {**values[key], **value} if isinstance(value, dict) else value
    with pytest.raises(JaxcnnError, match=message):
        spec.parse(values)


def test_the_spec_modules_import_nothing_of_jaxcnn_but_errors_and_checks():
    for name in ("spec.py", "checks.py"):
        tree = ast.parse((PACKAGE / name).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert {m for m in imported if m.startswith("jaxcnn")} <= {"jaxcnn.errors", "jaxcnn.checks"}, name


# ---------------------------------------------------------------------------- registries

PARAMS = {"kernel": jnp.array([[1.0, -2.0], [3.0, 0.5]]), "bias": jnp.array([1.0, -1.0])}


@pytest.mark.parametrize("name", list(spec.OPTIMIZERS))
def test_every_registered_optimizer_builds_and_updates(name):
    tx = optim.create_optimizer({"name": name, "momentum": 0.9, "weight_decay": 1e-2}, {}, 2, 2)
    updates, _ = tx.update(PARAMS, tx.init(PARAMS), PARAMS)
    assert all(bool(jnp.isfinite(u).all()) and bool((u != 0).any()) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("name", list(spec.SCHEDULES))
def test_every_registered_schedule_builds(name):
    tx = optim.create_optimizer({}, {"name": name, "boundaries_epochs": (1,), "warmup_epochs": 1.0}, 2, 3)
    state = tx.init(PARAMS)
    for _ in range(3):
        _, state = tx.update(PARAMS, state, PARAMS)
    assert 0 < float(optim.learning_rate_in_effect(state)) <= spec.OptimizerSpec().learning_rate * (1 + 1e-6)


@pytest.mark.parametrize("name", list(spec.LOSSES))
def test_every_registered_loss_gives_per_example_losses_and_probabilities(name):
    logits, labels = jnp.array([[0.5, -1.0, 2.0], [0.0, 1.0, 0.0]]), jnp.array([2, 0])
    loss = losses.make_classification_loss(name, 3)(logits, labels)
    probabilities = losses.predict_probabilities(name, logits)
    assert loss.shape == (2,) and bool((loss > 0).all())
    assert probabilities.shape == (2, 3) and bool(((probabilities > 0) & (probabilities < 1)).all())
    assert spec.LOSSES[name].output in losses.OUTPUTS


@pytest.mark.parametrize("name", list(spec.ACTIVATIONS))
def test_every_registered_activation_applies_elementwise(name):
    x = jnp.linspace(-2.0, 2.0, 5)
    assert layers.get_activation(name)(x).shape == x.shape


@pytest.mark.parametrize("name", list(spec.POOLS))
def test_every_registered_pool_pools(name):
    x = jnp.arange(32.0).reshape(1, 4, 4, 2)
    assert layers.pool(x, name, 2).shape == (1, 2, 2, 2)  # the non-overlapping fast path (its reduction)
    assert layers.pool(x, name, 2, stride=1).shape == (1, 3, 3, 2)  # Flax's windowed pooling


def test_every_registered_dtype_is_a_jnp_dtype_and_the_names_are_what_the_spec_accepts():
    assert {jnp.dtype(precision.compute_dtype(name)).name for name in spec.DTYPES} == set(spec.DTYPES)
    for registry in spec.REGISTRIES:
        assert len(registry) > 0 and list(registry) == sorted(registry)


def test_a_name_is_registered_once_unless_replaced():
    with pytest.raises(JaxcnnError, match="optimizer 'sgd' .* is already registered"):
        spec.OPTIMIZERS.register("sgd", lambda opt, lr: [])

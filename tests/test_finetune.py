"""Fine-tuning: `init_from` loads another run's weights by name (a head of another size
re-initialised, with a line), `freeze` keeps parameters and BatchNorm statistics bitwise, for a
single run and members; bad inputs are one line."""

import jax
import numpy as np
import pytest

import jaxcnn
from jaxcnn.commands.saved import load_saved_model
from jaxcnn.config import load_config
from jaxcnn.data import Dataset
from jaxcnn.errors import JaxcnnError
from jaxcnn.training.loop import train_and_evaluate

BN = ["model.name=tiny_cnn", "model.batch_norm=true", "num_epochs=1", "max_steps=8", "log_every_steps=4"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return jaxcnn.train("digits_cnn", BN, workdir=tmp_path_factory.mktemp("source") / "run")


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_fine_tuning_with_conv_0_frozen_keeps_it_and_its_statistics_bitwise_while_the_rest_trains(source, capsys):
    tuned = jaxcnn.train("digits_cnn", BN + [f"init_from={source.workdir}:8", "freeze=('Conv_0', 'BatchNorm_0')"],
                         quiet=False)
    assert f"init_from: parameters and BatchNorm statistics of {source.workdir} step 8" in capsys.readouterr().out
    for frozen in ("Conv_0", "BatchNorm_0"):
        assert same(tuned.params[frozen], source.params[frozen])
    assert same(tuned.state.batch_stats, source.state.batch_stats)  # the one BatchNorm is frozen
    assert not same(tuned.params["Dense_0"], source.params["Dense_0"])


def test_members_fine_tune_from_one_run_with_a_frozen_layer(source, tmp_path):
    train_and_evaluate(load_config("digits_cnn", BN + ["seeds=2", f"init_from={source.workdir}", "freeze=('Conv_0',)"]),
                       tmp_path / "m", quiet=True)
    for member in (0, 1):
        params = load_saved_model(tmp_path / "m", "latest", member=member).state.params
        assert same(params["Conv_0"], source.params["Conv_0"]) and not same(params["Dense_0"], source.params["Dense_0"])


def test_a_head_with_another_number_of_classes_is_reinitialised_and_the_run_says_so(source, capsys):
    digits = jaxcnn.load_dataset("digits")
    keep = lambda split: split.labels < 3
    three = Dataset.from_arrays(digits.train.images[keep(digits.train)], digits.train.labels[keep(digits.train)],
                                digits.test.images[keep(digits.test)], digits.test.labels[keep(digits.test)])
    tuned = jaxcnn.train("digits_cnn", BN + [f"init_from={source.workdir}"], dataset=three, quiet=False)
    assert "init_from: classifier head Dense_0 re-initialised (10 classes in the source run, 3 here)" in \
        capsys.readouterr().out
    assert tuned.params["Dense_0"]["bias"].shape == (3,)


@pytest.mark.parametrize("override, message", [
    ("freeze=('Conv_9',)", "freeze: 'Conv_9' matches no parameter; the model's layers: BatchNorm_0, Conv_0, Dense_0"),
    ("freeze='Conv_0'", "freeze must be a tuple of layer name patterns"),
    ("init_from=/nowhere", "init_from: '/nowhere' has no checkpoints/ folder"),
    ("init_from={source}:7", "init_from: {source}/checkpoints has no checkpoint for step 7"),
    ("model.blocks=((4,),)", "init_from: parameter 'BatchNorm_0/bias' has shape (8,) in the source run but (4,) "
                             "here"),
])
def test_bad_fine_tuning_inputs_are_refused_in_one_line(source, tmp_path, override, message):
    overrides = [override.format(source=source.workdir)]
    if "init_from" not in override and "freeze" not in override:
        overrides.append(f"init_from={source.workdir}")
    with pytest.raises(JaxcnnError) as refused:
        jaxcnn.train("digits_cnn", BN + overrides, workdir=tmp_path / "w")
    assert message.format(source=source.workdir) in str(refused.value) and "\n" not in str(refused.value)

"""Seeds in one program (`config.seeds`, jaxcnn/core/members.py): each member is the single run of its
seed (within the tolerance vmap's batched matmuls allow), bitwise repeatable, resumable."""

import json
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import sigterm_after

from jaxcnn.files import checkpoint
from jaxcnn.config import load_config
from jaxcnn.training.loop import train_and_evaluate
from jaxcnn.commands.saved import load_saved_model
from jaxcnn.files.writers import read_jsonl, without_timing

# mnist_mlp's model and optimizer (Dense 512, RMSprop 1e-3) on the bundled digits: 40 steps per epoch.
MLP = ["model.name=mlp", "model.hidden=(512,)", "optimizer.name=rmsprop", "optimizer.learning_rate=0.001",
       "schedule.name=constant", "num_epochs=1", "log_every_steps=15"]
SEEDS = (0, 3, 7)


def member_params(workdir):
    """Each member's parameters (stacked) from the run's latest checkpoint, as NumPy arrays."""
    manager = checkpoint.open_manager(pathlib.Path(workdir) / checkpoint.CHECKPOINT_DIR, read_only=True)
    try:
        restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    finally:
        manager.close()
    return jax.tree.map(np.asarray, restored["state"]["train_state"]["state"]["params"])


def records(workdir):
    return [without_timing(r) for r in read_jsonl(pathlib.Path(workdir) / "metrics.jsonl")]


@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("members") / "run"
    return workdir, train_and_evaluate(load_config("digits_cnn", MLP + [f"seeds={SEEDS}"]), workdir, quiet=True)


@pytest.fixture(scope="module")
def single_runs(tmp_path_factory):
    runs = {}
    for seed in SEEDS:
        workdir = tmp_path_factory.mktemp(f"single{seed}") / "run"
        runs[seed] = workdir, train_and_evaluate(load_config("digits_cnn", MLP + [f"seed={seed}"]), workdir, quiet=True)
    return runs


def test_each_member_matches_the_single_run_of_its_seed_within_1e_4_after_one_epoch(seeds_run, single_runs):
    workdir, summary = seeds_run
    stacked = member_params(workdir)
    assert [m["seed"] for m in summary["members"]] == list(SEEDS)
    for index, seed in enumerate(SEEDS):
        single_dir, single = single_runs[seed]
        member = summary["members"][index]
        assert abs(member["test_accuracy"] - single["test_accuracy"]) <= 0.001
        assert abs(member["best_val_accuracy"] - single["best_val_accuracy"]) <= 0.001
        solo = jax.tree.map(np.asarray, load_saved_model(single_dir, "latest").state.params)
        mine = jax.tree.map(lambda leaf: leaf[index], stacked)
        differences = jax.tree.leaves(jax.tree.map(lambda a, b: np.max(np.abs(a - b)), mine, solo))
        assert max(differences) < 1e-4
    assert summary["num_val"] == single_runs[0][1]["num_val"] and summary["num_train"] == single_runs[0][1]["num_train"]


def test_members_records_carry_their_member_and_follow_the_single_runs(seeds_run, single_runs):
    mine = records(seeds_run[0])
    for index, seed in enumerate(SEEDS):
        solo = records(single_runs[seed][0])
        own = [{k: v for k, v in r.items() if k != "member"} for r in mine if r["member"] == index]
        assert [(r["event"], r["step"]) for r in own] == [(r["event"], r["step"]) for r in solo]
        for a, b in zip(own, solo):
            assert a.keys() == b.keys()
            assert all(abs(a[k] - b[k]) < 1e-3 for k in a if isinstance(a[k], float))


def test_a_run_of_members_repeats_bitwise(seeds_run, tmp_path):
    train_and_evaluate(load_config("digits_cnn", MLP + [f"seeds={SEEDS}"]), tmp_path / "again", quiet=True)
    assert records(tmp_path / "again") == records(seeds_run[0])
    first, again = member_params(seeds_run[0]), member_params(tmp_path / "again")
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)))


def test_the_summary_aggregates_the_members_over_the_seeds(seeds_run):
    summary = seeds_run[1]
    (group,) = summary["aggregate"]
    accuracies = [m["test_accuracy"] for m in summary["members"]]
    stats = group["metrics"]["test_accuracy"]
    assert group["seeds"] == list(SEEDS) and stats["n"] == 3
    assert stats["mean"] == pytest.approx(np.mean(accuracies)) and summary["test_accuracy"] == stats["mean"]
    assert stats["std"] == pytest.approx(np.std(accuracies, ddof=1))
    assert stats["min"] == min(accuracies) and stats["max"] == max(accuracies)
    assert stats["ci95"][0] < stats["mean"] < stats["ci95"][1]


# Early stopping (patience 1 on val_accuracy, min_delta 0.02) and plateau decay (patience 1) both
# per member: with tiny hidden layers the seeds stop at different epochs.
STOPPING = ["model.name=mlp", "model.hidden=(16,)", "num_epochs=6", "schedule.name=plateau",
            "schedule.plateau_patience=1", "schedule.plateau_factor=0.5", "early_stopping.enabled=true",
            "early_stopping.monitor=val_accuracy", "early_stopping.patience=1", "early_stopping.min_delta=0.02"]


def test_each_member_stops_early_and_decays_on_plateau_as_the_single_run_of_its_seed(tmp_path):
    seeds = (0, 1, 2)
    summary = train_and_evaluate(load_config("digits_cnn", STOPPING + [f"seeds={seeds}"]), tmp_path / "m", quiet=True)
    mine = records(tmp_path / "m")
    for index, seed in enumerate(seeds):
        single = train_and_evaluate(load_config("digits_cnn", STOPPING + [f"seed={seed}"]), tmp_path / f"s{seed}",
                                    quiet=True)
        member = summary["members"][index]
        assert (member["epochs_run"], member["stopped_early"], member["best_epoch"]) == \
            (single["epochs_run"], single["stopped_early"], single["best_epoch"])
        assert abs(member["test_accuracy"] - single["test_accuracy"]) <= 0.001
        epochs = [r for r in records(tmp_path / f"s{seed}") if r["event"] == "epoch"]
        own = [r for r in mine if r["event"] == "epoch" and r["member"] == index]
        assert [r["learning_rate"] for r in own] == pytest.approx([r["learning_rate"] for r in epochs], rel=1e-6)
    assert len({m["epochs_run"] for m in summary["members"]}) > 1  # the members stopped at different epochs


def test_a_run_of_members_stopped_by_sigterm_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch):
    """SIGTERM during a call: the run saves the stacked state after it; resuming (with another
    steps_per_call) finishes bitwise like the straight run. Dropout: each member's keys resume too."""
    overrides = MLP + ["model.hidden=(32,)", "model.dropout=0.1", "num_epochs=2", f"seeds={SEEDS}"]
    train_and_evaluate(load_config("digits_cnn", overrides), tmp_path / "straight", quiet=True)
    _, restore = sigterm_after(monkeypatch, 50)
    with pytest.raises(checkpoint.TrainingInterrupted) as stopped:
        train_and_evaluate(load_config("digits_cnn", overrides + ["steps_per_call=4"]), tmp_path / "run", quiet=True)
    assert 50 <= stopped.value.step < 54
    restore()
    summary = train_and_evaluate(load_config("digits_cnn", overrides + ["steps_per_call=5"]), tmp_path / "run",
                                 quiet=True)
    assert summary["steps"] == 80
    assert records(tmp_path / "run") == records(tmp_path / "straight")
    straight, resumed = member_params(tmp_path / "straight"), member_params(tmp_path / "run")
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["members"] == summary["members"]


@pytest.mark.parametrize("override, message", [
    ("seeds=(1, 2, 1)", "seeds repeats 1 (seeds (1, 2, 1)); each member needs its own seed"),
    ("seeds=()", "seeds is an empty list"),
    ("seeds=-2", "seeds must be a number of seeds >= 1 or a tuple of seeds, got -2"),
    ("sweep.optimizer.learning_rate=()", "sweep.optimizer.learning_rate is an empty list"),
    ("sweep.optimizer.learning_rate=(0.1, 0.1)", "sweep.optimizer.learning_rate repeats a value"),
    ("sweep.loss.label_smoothing=(0.1, 1.5)", "sweep.loss.label_smoothing values must be in [0, 1), got 1.5"),
    ("sweep.model.hidden=((32,), (64,))", "sweep.model.hidden cannot be swept in one program (only values that are "
     "arrays inside the training step can); sweepable: optimizer.learning_rate, optimizer.weight_decay, "
     "loss.label_smoothing, loss.l2"),
    ("sweep.batch_size=(32, 64)", "sweep.batch_size cannot be swept in one program"),
])
def test_bad_seeds_and_sweeps_are_one_line_and_exit_2(override, message, tmp_path, capsys):
    from jaxcnn.cli import main

    assert main(["train", "--workdir", str(tmp_path / "run"), f"--config.{override}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jaxcnn: error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_more_members_than_memory_allows_are_refused_with_the_estimate(tmp_path, capsys, monkeypatch):
    from jaxcnn.cli import main

    monkeypatch.setenv("JAXCNN_MEMORY_LIMIT_MB", "2")
    assert main(["train", "--workdir", str(tmp_path / "run"), "--config.model.name=mlp", "--config.seeds=64"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxcnn: error: 64 members need about ") and err.count("\n") == 1
    assert "more than the 2 MiB available; use at most " in err
    assert not (tmp_path / "run").exists()


def test_a_million_seeds_are_refused_before_their_indices_or_states_exist(tmp_path, capsys):
    """One member is measured (its program and its index arrays) before any other member's data or
    state is built, so a count far beyond memory is one line, not an exhausted machine."""
    import resource

    from jaxcnn.cli import main

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert main(["train", "--workdir", str(tmp_path / "run"), "--config.model.name=mlp", "--config.seeds=1000000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxcnn: error: 1000000 members need about ") and err.count("\n") == 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1_000_000  # KiB: under 1 GiB more
    assert not (tmp_path / "run").exists()


def test_a_run_of_members_stops_at_max_steps_mid_epoch_and_still_tests_every_member(tmp_path):
    summary = train_and_evaluate(load_config("digits_cnn", MLP + ["seeds=2", "max_steps=7"]), tmp_path / "run",
                                 quiet=True)
    assert summary["steps"] == 7
    assert [m["steps"] for m in summary["members"]] == [7, 7]
    assert all(0 < m["test_accuracy"] <= 1 for m in summary["members"])


def test_a_member_whose_loss_is_not_finite_stops_the_run_with_the_divergence_line(tmp_path, capsys):
    from jaxcnn.cli import main

    args = ["train", "--workdir", str(tmp_path / "run"), *(f"--config.{o}" for o in MLP),
            "--config.seeds=2", "--config.sweep.optimizer.learning_rate=(0.001, 1e30)"]
    assert main(args) == 3
    err = capsys.readouterr().err
    assert "training diverged in steps 1-15: the training loss is nan" in err and err.count("\n") == 1


def test_a_profile_of_a_run_of_members_is_refused_in_one_line(tmp_path, capsys):
    from jaxcnn.cli import main

    args = ["train", "--workdir", str(tmp_path / "run"), "--config.seeds=2", "--config.profile_steps=(2, 4)"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == "jaxcnn: error: profile_steps traces a single run; unset it (or seeds and sweep) to profile\n"
    assert not (tmp_path / "run").exists()


def test_a_run_of_members_trains_on_a_dataset_built_from_arrays(tmp_path):
    from jaxcnn.data import Dataset

    rng = np.random.default_rng(0)
    labels = np.arange(200) % 4
    images = (rng.random((200, 8, 8)) * 60 + labels[:, None, None] * 45).astype(np.uint8)
    dataset = Dataset.from_arrays(images[:160], labels[:160], images[160:], labels[160:])
    overrides = ["model.name=mlp", "model.hidden=(16,)", "num_epochs=2", "batch_size=16", "seeds=2"]
    summary = train_and_evaluate(load_config("digits_cnn", overrides), tmp_path / "run", quiet=True, dataset=dataset)
    assert [m["seed"] for m in summary["members"]] == [0, 1]
    assert summary["dataset"] == "arrays" and summary["test_examples"] == 40


def test_members_of_a_cnn_on_cpu_run_in_turn_and_equal_their_single_runs_bitwise(tmp_path):
    """On CPU a model with convolutions trains its members one after another inside the program
    (`executor.members_in_turn`): each member is then exactly its single run."""
    from jaxcnn.core.member_calls import members_in_turn

    overrides = ["model.name=tiny_cnn", "num_epochs=1", "log_every_steps=15", "steps_per_call=3"]
    summary = train_and_evaluate(load_config("digits_cnn", overrides + ["seeds=(0, 5)"]), tmp_path / "m", quiet=True)
    stacked = member_params(tmp_path / "m")
    assert members_in_turn(stacked)
    for index, seed in enumerate((0, 5)):
        single = train_and_evaluate(load_config("digits_cnn", overrides + [f"seed={seed}"]), tmp_path / f"s{seed}",
                                    quiet=True)
        assert summary["members"][index]["test_accuracy"] == single["test_accuracy"]
        mine = jax.tree.map(lambda x: x[index], stacked)
        theirs = jax.tree.map(np.asarray, load_saved_model(tmp_path / f"s{seed}").state.params)
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs)))

"""Checkpoints: exact resume after SIGTERM and SIGKILL, retention, mismatch refusal, corrupt steps,
eval and predict from a saved model. Interrupted runs are real `jaxcnn train` subprocesses."""

import dataclasses
import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO, real_data_dir, requires_mnist
from jaxcnn import models
from jaxcnn.core import losses, optim
from jaxcnn.files import checkpoint, workdir
from jaxcnn.config import load_config
from jaxcnn.errors import JaxcnnError
from jaxcnn.training.loop import train_and_evaluate
from jaxcnn.core.loop_state import EarlyStopping, LoopState
from jaxcnn.core.steps import zero_train_totals
from jaxcnn.files.workdir import LOCK_FILE
from jaxcnn.commands.saved import load_saved_model
from jaxcnn.core.state import create_train_state
from jaxcnn.files.writers import read_jsonl, without_timing

# A small MLP with dropout and a warm-up + cosine schedule: resuming must restore the dropout key's
# step, the schedule's count and the optimizer moments. 40 steps per epoch on digits. Early
# stopping with min_delta 100 counts only epoch 1 as an improvement, so the final test uses epoch
# 1's parameters (restore_best): a run resumed in epoch 2 must get them back from the best step.
RUN = ["model.name=mlp", "model.hidden=(32,)", "model.dropout=0.1", "num_epochs=2", "log_every_steps=7",
       "schedule.warmup_epochs=0.5", "early_stopping.enabled=true", "early_stopping.patience=5",
       "early_stopping.min_delta=100.0"]


def cli_args(workdir, overrides):
    return [sys.executable, "-m", "jaxcnn.cli", "train", "--workdir", str(workdir), "--quiet",
            *[f"--config.{o}" for o in overrides]]


def start(workdir, overrides, delay_s=0.0):
    env = {**os.environ, checkpoint.SAVE_DELAY_ENV: str(delay_s)}
    return subprocess.Popen(cli_args(workdir, overrides), cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def jaxcnn(*args):
    return subprocess.run([sys.executable, "-m", "jaxcnn.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def wait_for(condition, process, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"training ended before the interruption: {process.communicate()}"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.01)


def events(workdir, event):
    path = pathlib.Path(workdir) / "metrics.jsonl"
    return [r for r in read_jsonl(path) if r["event"] == event] if path.exists() else []


def committed_steps(workdir):
    folder = pathlib.Path(workdir) / checkpoint.CHECKPOINT_DIR
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def tmp_dirs(workdir):
    folder = pathlib.Path(workdir) / checkpoint.CHECKPOINT_DIR
    return [p.name for p in folder.iterdir() if "tmp" in p.name] if folder.is_dir() else []


def resume(workdir, overrides):
    """The same training command again, in this process (the interrupted run was a subprocess)."""
    return train_and_evaluate(load_config("digits_cnn", overrides), workdir, quiet=True)


def tree_bytes(tree):
    return [np.asarray(leaf).tobytes() for leaf in jax.tree.leaves(jax.device_get(tree))]


def assert_same_run(a, b):
    """Final parameters bitwise equal, metrics.jsonl equal apart from timing fields."""
    assert tree_bytes(load_saved_model(a, "latest").state.params) == tree_bytes(load_saved_model(b, "latest").state.params)
    records = lambda w: [without_timing(r) for r in read_jsonl(pathlib.Path(w) / "metrics.jsonl")]
    assert records(a) == records(b)


def digest(folder):
    h = hashlib.sha256()
    for path in sorted(pathlib.Path(folder).rglob("*")):
        h.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted reference run."""
    workdir = tmp_path_factory.mktemp("straight") / "run"
    summary = train_and_evaluate(load_config("digits_cnn", RUN), workdir, quiet=True)
    return workdir, summary


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])  # SIGUSR1: a cluster's warning before a requeue
def test_a_stop_signal_after_the_first_epoch_then_resume_equals_the_straight_run(straight, tmp_path, name):
    workdir = tmp_path / "run"
    # Delayed saves every 5 steps pace the run (a save waits for the one before), so the signal
    # lands early in the second epoch.
    process = start(workdir, RUN + ["checkpoint.every_steps=5"], delay_s=0.2)
    wait_for(lambda: events(workdir, "epoch"), process)
    process.send_signal(getattr(signal, name))
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert f"{name}: stopped after step" in stderr and f"jaxcnn train --workdir {workdir}" in stderr
    assert not (workdir / "summary.json").exists()
    stopped_at = max(committed_steps(workdir))
    assert 40 <= stopped_at < 80, stderr  # stopped inside the second epoch
    assert max(r["step"] for r in events(workdir, "train")) <= stopped_at

    summary = resume(workdir, RUN)
    assert summary["steps"] == 80
    assert summary["test_accuracy"] == straight[1]["test_accuracy"]
    assert_same_run(workdir, straight[0])


def test_sigkill_mid_run_then_resume_completes_like_the_straight_run(straight, tmp_path):
    workdir = tmp_path / "run"
    process = start(workdir, RUN + ["checkpoint.every_steps=5"], delay_s=0.1)
    wait_for(lambda: committed_steps(workdir) and events(workdir, "train"), process)
    process.kill()
    process.communicate()
    assert not (workdir / "summary.json").exists()
    assert (workdir / LOCK_FILE).exists()  # the killed run's lock file, with no lock: no matter

    summary = resume(workdir, RUN)
    assert summary["test_accuracy"] == straight[1]["test_accuracy"]
    assert_same_run(workdir, straight[0])
    assert not (workdir / LOCK_FILE).exists()


def test_a_failed_background_save_stops_in_one_line_and_the_run_resumes_once_fixed(straight, tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    monkeypatch.setenv(checkpoint.SAVE_FAIL_ENV, "3")  # saves 5, 10 and 15 commit; 20 fails as a full disk would
    with pytest.raises(JaxcnnError, match=r"cannot save the checkpoint of step 20 in .*: No space left on device "
                                          r"\(errno 28\); the checkpoint of step 15 is kept"):
        resume(workdir, RUN + ["checkpoint.every_steps=5"])
    assert committed_steps(workdir) == [10, 15] and not tmp_dirs(workdir)
    monkeypatch.delenv(checkpoint.SAVE_FAIL_ENV)

    summary = resume(workdir, RUN + ["checkpoint.every_steps=5"])
    assert summary["test_accuracy"] == straight[1]["test_accuracy"]
    assert_same_run(workdir, straight[0])


def test_sigkill_during_a_save_resumes_from_the_last_committed_step_and_cleans_the_leftover(straight, tmp_path):
    workdir = tmp_path / "run"
    # Each save sits 3 s in its background commit and the next save waits for it: the process is
    # killed while step 5 is committed and a later step is still a temporary folder.
    process = start(workdir, RUN + ["checkpoint.every_steps=5", "checkpoint.on_epoch_end=false"], delay_s=3)
    wait_for(lambda: committed_steps(workdir) == [5] and tmp_dirs(workdir), process)
    process.kill()
    process.communicate()
    assert tmp_dirs(workdir)

    summary = resume(workdir, RUN)
    assert not tmp_dirs(workdir)
    assert summary["test_accuracy"] == straight[1]["test_accuracy"]
    assert_same_run(workdir, straight[0])


def test_retention_keeps_both_the_latest_and_the_best_when_the_metric_gets_worse(tmp_path):
    config = load_config("digits_cnn", RUN + ["checkpoint.keep=1", "checkpoint.keep_best=1"])
    model = models.create_model("mlp", 10, hidden=(4,))
    tx = optim.create_optimizer(config.optimizer, config.schedule, 1, config.num_epochs)
    state = create_train_state(model, tx, losses.make_classification_loss("cross_entropy", 10), (8, 8, 1), 0)
    saver = checkpoint.Checkpointer(tmp_path, config, {"input_shape": (8, 8, 1), "num_classes": 10})
    stopping = EarlyStopping("val_loss", patience=9, min_delta=0.0)
    val_losses = [1.0, 0.5, 0.2, 0.6, 0.9, 1.3]  # improves up to epoch 3, then gets worse
    for epoch, loss in enumerate(val_losses, start=1):
        improved = stopping.update(loss, epoch)
        loop = LoopState(dataclasses.replace(stopping), step=10 * epoch, epoch=epoch + 1, epochs_run=epoch,
                         best_val_loss=stopping.best)
        saver.save(state, zero_train_totals(), loop, improved=improved, monitor="val_loss", value=loss)
        if epoch == 4:  # a mid-epoch step without metrics, newer than the best
            saver.save(state, zero_train_totals(), dataclasses.replace(loop, step=45))
    saver.close()
    assert committed_steps(tmp_path) == [30, 60]
    assert saver.best_step == 30


def test_resuming_with_a_different_model_fails_and_leaves_the_workdir_untouched(straight):
    workdir = straight[0]
    before = digest(workdir)
    result = jaxcnn("train", "--workdir", str(workdir), *[f"--config.{o}" for o in RUN],
                    "--config.model.name=cnn")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line, = result.stderr.strip().splitlines()
    assert "different config" in line and "model.name" in line and "--fresh" in line
    assert digest(workdir) == before


def test_fresh_starts_a_new_run_in_a_numbered_subfolder_and_keeps_the_old_one(tmp_path):
    workdir = tmp_path / "run"
    overrides = RUN + ["num_epochs=1"]
    train_and_evaluate(load_config("digits_cnn", overrides), workdir, quiet=True)
    before = digest(workdir)
    with pytest.raises(JaxcnnError, match="finished run"):
        train_and_evaluate(load_config("digits_cnn", overrides), workdir, quiet=True)
    train_and_evaluate(load_config("digits_cnn", overrides), workdir, quiet=True, fresh=True)
    assert (workdir / "run-2" / "summary.json").exists()
    (workdir / "run-2").rename(tmp_path / "moved")
    assert digest(workdir) == before


def test_a_corrupt_latest_step_is_reported_and_the_step_before_it_is_used(tmp_path, capsys):
    workdir = tmp_path / "run"
    train_and_evaluate(load_config("digits_cnn", RUN + ["checkpoint.every_steps=15"]), workdir, quiet=True)
    steps = committed_steps(workdir)
    assert steps[-1] == 80
    for path in (workdir / checkpoint.CHECKPOINT_DIR / "80" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    saved = load_saved_model(workdir, str(steps[-2]))
    saver = checkpoint.Checkpointer(workdir, saved.config, saved.meta)
    state, _, loop = saver.restore_latest(saved.state, zero_train_totals())
    saver.close()
    assert loop.step == steps[-2] and int(state.step) == steps[-2]
    err = capsys.readouterr().err
    assert "checkpoint step 80 cannot be read" in err and "moved the unreadable checkpoint step 80" in err
    assert committed_steps(workdir) == steps[:-1]
    assert (workdir / checkpoint.CORRUPT_DIR / "80").is_dir()


def test_eval_reproduces_the_summary_test_accuracy_of_a_run_that_restores_its_best_epoch(straight):
    workdir, summary = straight
    result = jaxcnn("eval", "--workdir", str(workdir), "--json", "-")
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["step"] == 40  # the best epoch, not the latest step (80)
    for key in ("test_accuracy", "test_loss", "test_examples"):
        assert output[key] == summary[key]
    assert load_saved_model(workdir, "best").step == 40 and load_saved_model(workdir, "latest").step == 80


def test_predict_gives_the_same_classes_for_png_and_npy_as_the_model_itself(straight, tmp_path):
    from PIL import Image

    from jaxcnn.data import load_dataset
    from jaxcnn.data.device import normalize

    workdir = straight[0]
    images = load_dataset("digits").test.images[:4]
    files = []
    for i, image in enumerate(images):
        Image.fromarray(image[..., 0]).save(tmp_path / f"{i}.png")
        np.save(tmp_path / f"{i}.npy", image[..., 0])
        files += [str(tmp_path / f"{i}.png"), str(tmp_path / f"{i}.npy")]
    result = jaxcnn("predict", "--workdir", str(workdir), "--json", "-", "--top", "2", *files)
    assert result.returncode == 0, result.stderr
    predictions = json.loads(result.stdout)
    saved = load_saved_model(workdir)
    pixels = normalize(images, saved.config.dataset.mean, saved.config.dataset.std)
    logits = saved.state.apply_fn(saved.state.variables(), pixels, train=False)
    expected = np.argmax(np.asarray(logits), -1).tolist()
    assert [p["top"][0]["class"] for p in predictions] == [c for c in expected for _ in range(2)]
    assert all(len(p["top"]) == 2 and p["top"][0]["probability"] >= p["top"][1]["probability"]
               for p in predictions)


def test_predict_rejects_an_unsupported_file_with_one_line(straight, tmp_path):
    workdir = straight[0]
    (tmp_path / "notes.txt").write_text("x")
    result = jaxcnn("predict", "--workdir", str(workdir), str(tmp_path / "notes.txt"))
    assert result.returncode == 2 and "unsupported file type" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@requires_mnist
def test_predict_returns_the_true_labels_of_mnist_test_images(tmp_path):
    from PIL import Image

    from jaxcnn.data import load_dataset

    workdir = tmp_path / "run"
    data_dir = str(real_data_dir())
    train_and_evaluate(load_config("mnist_mlp", ["num_epochs=1"]), workdir, data_dir=data_dir, quiet=True)
    test = load_dataset("mnist", data_dir=data_dir).test
    files = []
    for i in range(6):
        files.append(str(tmp_path / f"mnist_{i}.png"))
        Image.fromarray(test.images[i, ..., 0]).save(files[-1])
    result = jaxcnn("predict", "--workdir", str(workdir), "--json", "-", *files)
    assert result.returncode == 0, result.stderr
    assert [p["top"][0]["class"] for p in json.loads(result.stdout)] == test.labels[:6].tolist()


def test_measured_per_channel_stats_are_not_a_config_change_on_resume():
    saved = {"dataset": {"per_channel_stats": True, "mean": [0.13], "std": [0.31]}, "model": {"name": "mlp"}}
    current = {"dataset": {"per_channel_stats": True, "mean": 0.0, "std": 1.0}, "model": {"name": "mlp"}}
    assert workdir.config_differences(saved, current) == []
    current["dataset"]["per_channel_stats"] = False
    assert workdir.config_differences(saved, current) == [
        'dataset.mean ([0.13] -> 0.0)', 'dataset.per_channel_stats (true -> false)', 'dataset.std ([0.31] -> 1.0)']


def test_resuming_a_run_with_per_channel_stats_continues_it(tmp_path):
    overrides = ["model.name=mlp", "model.hidden=(16,)", "schedule.name=constant", "dataset.per_channel_stats=true"]
    train_and_evaluate(load_config("digits_cnn", overrides + ["num_epochs=1"]), tmp_path / "w", quiet=True)
    (tmp_path / "w" / "summary.json").unlink()  # as if stopped after epoch 1 of 2
    summary = train_and_evaluate(load_config("digits_cnn", overrides + ["num_epochs=2"]), tmp_path / "w", quiet=True)
    assert summary["epochs_run"] == 2

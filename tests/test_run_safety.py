"""Around the training loop: one training per workdir (the lock), divergence, what a run remembers
(its data directory, its checkpoint's config), and Orbax's noise replaced by jaxcnn's own lines."""

import gc
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

from conftest import REPO
from jaxcnn import cli
from jaxcnn.files import checkpoint, workdir
from jaxcnn.files.checkpoint import TrainingInterrupted
from jaxcnn.config import load_config
from jaxcnn.errors import JaxcnnError
from jaxcnn.training.loop import train_and_evaluate
from jaxcnn.commands.saved import load_saved_model
from jaxcnn.files.writers import read_jsonl
from test_bad_inputs_train import DIVERGES, RUN
from test_data import fake_mnist_dir

# 80 steps, a record and a checkpoint every 5.
SLOW = ["--config.model.name=mlp", "--config.model.hidden=(16,)", "--config.num_epochs=2",
        "--config.schedule.name=constant", "--config.checkpoint.every_steps=5", "--config.log_every_steps=5"]


def jaxcnn_process(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "jaxcnn.cli", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})


def wait_for(condition, process, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def train_records(path):
    if not (path / "metrics.jsonl").exists():
        return []
    return [r for r in read_jsonl(path / "metrics.jsonl") if r["event"] == "train"]


def test_a_second_training_on_a_workdir_in_use_is_refused_naming_the_first_which_finishes_alone(tmp_path):
    first = jaxcnn_process("train", "--workdir", str(tmp_path / "w"), "--quiet", *SLOW,
                           env={checkpoint.SAVE_DELAY_ENV: "0.2"})
    wait_for(lambda: train_records(tmp_path / "w"), first)
    second = jaxcnn_process("train", "--workdir", str(tmp_path / "w"), "--quiet", *SLOW)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 2, err
    assert err.strip().splitlines() == [err.strip()]
    assert f"in use by another `jaxcnn train`: PID {first.pid} on host" in err
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0 and not err, err
    steps = [r["step"] for r in train_records(tmp_path / "w")]
    assert steps == list(range(5, 81, 5))  # every record once, in order
    assert not (tmp_path / "w" / workdir.LOCK_FILE).exists()


def test_a_lock_holder_killed_with_sigkill_leaves_a_file_but_no_lock(tmp_path):
    lock_file = tmp_path / workdir.LOCK_FILE
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(lock_file)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, ('{\"pid\": %d, \"host\": \"elsewhere\", \"since\": \"then\"}' % os.getpid()).encode())\n"
        "print('locked', flush=True)\ntime.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    with pytest.raises(JaxcnnError, match=f"in use by another `jaxcnn train`: PID {holder.pid} on host elsewhere "):
        workdir.check_not_in_use(tmp_path)
    with pytest.raises(JaxcnnError, match=f"PID {holder.pid}"):
        workdir.WorkdirLock(tmp_path)
    holder.kill()
    holder.wait()
    assert lock_file.exists()  # stale file, no lock
    workdir.check_not_in_use(tmp_path)
    lock = workdir.WorkdirLock(tmp_path)
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    lock.release()
    assert not lock_file.exists()


def test_a_diverging_training_exits_3_keeping_the_checkpoint_of_the_last_finite_state(tmp_path, capfd):
    status = cli.main(["train", "--workdir", str(tmp_path / "w"), "--quiet", *DIVERGES])
    err = capfd.readouterr().err
    assert status == 3 and len(err.strip().splitlines()) == 1, err
    assert ("training diverged in steps 11-15: the training loss is inf (last finite loss 2.131e+18 at step 10, "
            "learning rate 3.5e+18); the checkpoint of step 10 in") in err
    saved = load_saved_model(tmp_path / "w", "latest")
    assert saved.step == 10
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(jax.device_get(saved.state.params)))
    records = read_jsonl(tmp_path / "w" / "metrics.jsonl")
    assert [r["step"] for r in records] == [5, 10] and all(r["loss"] is not None for r in records)


def test_on_nonfinite_continue_trains_on_and_writes_null_for_the_non_finite_numbers(tmp_path):
    overrides = RUN + ["optimizer.learning_rate=1e30", "log_every_steps=1", "on_nonfinite=continue"]
    summary = train_and_evaluate(load_config("digits_cnn", overrides), tmp_path / "w", quiet=True)
    assert not np.isfinite(summary["test_loss"])
    assert json.loads((tmp_path / "w" / "summary.json").read_text())["test_loss"] is None
    assert [r["loss"] for r in read_jsonl(tmp_path / "w" / "metrics.jsonl") if r["event"] == "train"][-1] is None


def test_a_run_remembers_its_data_directory_for_eval_resume_and_the_resume_hint(tmp_path, monkeypatch, capfd):
    data = tmp_path / "data"
    fake_mnist_dir(data / "mnist")
    run = ["--config.model.name=mlp", "--config.model.hidden=(8,)", "--config.num_epochs=1", "--config.batch_size=8",
           "--config.dataset.name=mnist", "--config.schedule.name=constant"]
    monkeypatch.delenv("JAXCNN_DATA_DIR", raising=False)
    assert cli.main(["train", "--workdir", str(tmp_path / "w"), "--quiet", "--data-dir", str(data), *run]) == 0
    assert json.loads((tmp_path / "w" / "config.json").read_text())["dataset"]["data_dir"] == str(data.absolute())
    assert cli.main(["eval", "--workdir", str(tmp_path / "w")]) == 0  # no --data-dir, no $JAXCNN_DATA_DIR
    (tmp_path / "w" / "summary.json").unlink()  # as if stopped after its last checkpoint
    assert cli.main(["train", "--workdir", str(tmp_path / "w"), "--quiet", *run]) == 0  # resumed, no --data-dir
    (tmp_path / "w" / "summary.json").unlink()
    hint = str(TrainingInterrupted("SIGTERM", 3, tmp_path / "w", True, str(data)))
    command = hint.split("resume with: ")[1].split()
    assert command[:2] == ["jaxcnn", "train"] and command[-2:] == ["--data-dir", str(data)]
    assert cli.main(command[1:] + ["--quiet"]) == 0  # the hint, as printed, resumes the run
    assert "Traceback" not in capfd.readouterr().err


def test_a_hand_edited_config_json_is_reported_in_one_line_and_the_checkpoint_config_wins(tmp_path, capfd):
    train_and_evaluate(load_config("digits_cnn", RUN), tmp_path / "w", quiet=True)
    (tmp_path / "w" / "summary.json").unlink()
    config = json.loads((tmp_path / "w" / "config.json").read_text())
    (tmp_path / "w" / "config.json").write_text(json.dumps({**config, "seed": 7, "batch_size": 4}))
    capfd.readouterr()
    train_and_evaluate(load_config("digits_cnn", RUN), tmp_path / "w", quiet=True)
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "config.json disagrees with its checkpoint (step 3): batch_size (16 -> 4); " \
                                   "seed (0 -> 7); resuming with the checkpoint's config" in err
    assert json.loads((tmp_path / "w" / "config.json").read_text())["seed"] == 0


def test_a_corrupt_checkpoint_step_costs_two_lines_of_jaxcnn_and_no_orbax_noise(tmp_path, capfd):
    overrides = RUN + ["num_epochs=2", "checkpoint.every_steps=2"]
    train_and_evaluate(load_config("digits_cnn", overrides), tmp_path / "w", quiet=True)
    (tmp_path / "w" / "summary.json").unlink()
    latest = max(int(p.name) for p in (tmp_path / "w" / "checkpoints").iterdir() if p.name.isdigit())
    for chunk in (tmp_path / "w" / "checkpoints" / str(latest)).rglob("*"):
        if chunk.is_file() and chunk.parent.name == "d":  # tensorstore's data files
            chunk.write_bytes(np.random.default_rng(0).bytes(80))
    capfd.readouterr()
    train_and_evaluate(load_config("digits_cnn", overrides), tmp_path / "w", quiet=True)
    gc.collect()
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith("jaxcnn: warning: ") for line in lines), lines
    assert f"checkpoint step {latest} cannot be read" in lines[0]


def test_sigterm_with_checkpointing_off_stops_after_the_call_and_says_nothing_was_saved(tmp_path, capfd):
    process = jaxcnn_process("train", "--workdir", str(tmp_path / "w"), "--quiet", *SLOW,
                             "--config.checkpoint.enabled=false", "--config.num_epochs=200")
    wait_for(lambda: train_records(tmp_path / "w"), process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0 and err.strip().splitlines() == [err.strip()], err
    assert "SIGTERM: stopped after step" in err and "nothing saved" in err
    assert not (pathlib.Path(tmp_path / "w") / workdir.LOCK_FILE).exists()

"""SIGINT (Ctrl-C) or SIGTERM at any moment of `jaxcnn train`'s start-up: exit 130 / 143 and one
line when training had not begun (nothing left behind but, past the Checkpointer, an empty run),
or exit 0 and one line once it trains and saved; never a traceback, a crash or an ignored signal.

Each case is a real `jaxcnn train` process signalled a given time after it was spawned: 0.2 s to
6 s covers the imports, the config, the data and the model's initialisation (on a loaded 2-core
machine), and one more case signals it once it trains (its first metrics record written). The signal waits, if need be, until the command has installed its handler (SIGTERM
shows as caught in /proc/PID/status, some 0.1 s after the interpreter starts on an idle machine):
before that the Python interpreter itself is still starting, which no program can handle.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO

# 8x8 synthetic images, an MLP, many epochs: a late signal finds it training.
RUN = ["dataset.name=synthetic", "dataset.image_shape=(8, 8, 1)", "dataset.num_train=256", "dataset.num_test=32",
       "model.name=mlp", "model.hidden=(8,)", "num_epochs=500", "batch_size=16", "schedule.name=constant",
       "log_every_steps=5"]
MOMENTS_S = (0.2, 0.4, 0.7, 1.0, 1.4, 1.8, 2.3, 2.8, 3.5, 6.0)
TRAINING = None  # the moment its first metrics record is written
CASES = [(s, "SIGINT") for s in (*MOMENTS_S, TRAINING)] + [(s, "SIGTERM") for s in (0.4, 1.8, 3.5, TRAINING)]


def handler_installed(pid: int) -> bool:
    """Whether process `pid` catches SIGTERM (Python leaves it to the default until jaxcnn installs its own)."""
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.mark.skipif(not pathlib.Path("/proc/self/status").exists(), reason="needs Linux's /proc to see the handler")
@pytest.mark.parametrize("delay_s, name", CASES, ids=[f"{name}-at-{s or 'training'}s" for s, name in CASES])
def test_a_stop_signal_at_any_moment_of_start_up_exits_cleanly_in_one_line(tmp_path, delay_s, name):
    workdir = tmp_path / "run"
    spawned = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "jaxcnn.cli", "train", "--workdir", str(workdir), "--quiet",
                                *[f"--config.{o}" for o in RUN]], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    while not handler_installed(process.pid):
        assert process.poll() is None and time.monotonic() - spawned < 60, process.communicate()
        time.sleep(0.005)
    if delay_s is TRAINING:
        while not (workdir / "metrics.jsonl").is_file() or not (workdir / "metrics.jsonl").stat().st_size:
            assert process.poll() is None and time.monotonic() - spawned < 120, process.communicate()
            time.sleep(0.01)
    else:
        time.sleep(max(0.0, spawned + delay_s - time.monotonic()))
    sent = time.monotonic() - spawned
    process.send_signal(getattr(signal, name))
    _, err = process.communicate(timeout=300)
    print(f"{name} at {sent:.2f} s: exit {process.returncode}: {err.strip()}")
    assert "Traceback" not in err and "Segmentation" not in err and process.returncode >= 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    committed = [p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()] if workdir.is_dir() else []
    if delay_s is TRAINING:
        assert process.returncode == 0, err
    if process.returncode == 128 + getattr(signal, name):  # before training
        assert lines[0] == f"jaxcnn: {name} received during start-up: stopped before training began, nothing trained"
        assert not committed
    else:  # it was training: stopped after the call, saved
        assert process.returncode == 0 and lines[0].startswith(f"jaxcnn: {name}: stopped after step"), err
        assert committed and "resume with: jaxcnn train --workdir" in lines[0]
    assert not (workdir / ".jaxcnn.lock").exists()

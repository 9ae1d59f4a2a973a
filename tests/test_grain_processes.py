"""`dataset.input=grain` with 2 real processes (`jaxcnn train --coordinator 127.0.0.1:PORT
--num-processes 2 --process-id I`, one CPU device each, 2 Grain workers each): the run ends as the
1-process run on 2 devices does (same metrics, same test loss, same parameters), and each process
read only its rows of every global batch: in an epoch the two processes' records are disjoint and
together the 1-process run's. Every record read is logged by tests/grain_logged_run.py."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from jaxcnn.data import array_records
from jaxcnn.files.writers import read_jsonl, without_timing
from test_cluster import params_bytes
from test_parallel import device_env, free_port

pytest.importorskip("grain", reason="dataset.input=grain needs the [grain] extra")
pytest.importorskip("PIL.Image", reason="images are encoded with Pillow")

LOGGED = str(REPO / "tests" / "grain_logged_run.py")
STEPS_PER_EPOCH = 10  # 90 training images, 81 after validation, batches of 8
# A global batch of 8: 4 rows per process with 2 processes; crops drawn per (seed, epoch, example).
CONFIG = ["model.name=mlp", "model.hidden=(16,)", "num_epochs=2", "batch_size=8", "eval_batch_size=16",
          "log_every_steps=5", "dataset.name=array_record", "dataset.input=grain", "dataset.workers=2",
          "augment.random_resized_crop=(0.5, 1.0)", "optimizer.name=sgd", "optimizer.momentum=0.9",
          "parallel=sharded"]


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    out = tmp_path_factory.mktemp("records") / "shades"
    rng = np.random.default_rng(0)
    labels = np.arange(114) % 3
    images = np.clip(rng.normal(40 + 80 * labels[:, None, None, None], 25, (114, 8, 8, 1)), 0, 255).astype(np.uint8)
    array_records.pack_arrays(out, images[:90], labels[:90], images[90:], labels[90:], ["dark", "mid", "light"])
    return out


def command(workdir, packed, *flags):
    return [sys.executable, LOGGED, "train", "--workdir", str(workdir), "--quiet", *flags,
            *[f"--config.{o}" for o in CONFIG], f"--config.dataset.path={packed}"]


def finish(processes) -> None:
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]


def reads(log) -> list[tuple[int, int, int, int, int]]:
    """(rows start, rows stop, step, epoch, example) of each record read."""
    return [tuple(int(v) for v in line.split()) for line in log.read_text().splitlines()]


def first_epoch(lines) -> set[tuple[int, int]]:
    """(step, example) of the records of epoch 1 that were trained on (not read ahead)."""
    return {(step, example) for _, _, step, epoch, example in lines if epoch == 1 and step < STEPS_PER_EPOCH}


@pytest.fixture(scope="module")
def runs(packed, tmp_path_factory):
    """The 1-process run on 2 devices and the 2-process run (1 device each), with their read logs."""
    out = tmp_path_factory.mktemp("runs")
    single = subprocess.Popen(command(out / "one", packed), cwd=REPO, text=True, stderr=subprocess.PIPE,
                              stdout=subprocess.PIPE,
                              env={**device_env(2), "JAXCNN_TEST_READ_LOG": str(out / "one.log")})
    finish([single])
    port = free_port()
    pair = [subprocess.Popen(command(out / "two", packed, "--coordinator", f"127.0.0.1:{port}", "--num-processes",
                                     "2", "--process-id", str(i), "--init-timeout", "60"),
                             cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**device_env(1), "JAXCNN_TEST_READ_LOG": str(out / f"two-{i}.log")})
            for i in range(2)]
    finish(pair)
    return out


def test_two_processes_with_grain_workers_end_as_the_one_process_run_on_two_devices(runs):
    one, two = (json.loads((runs / name / "summary.json").read_text()) for name in ("one", "two"))
    assert one["input"] == two["input"] == "grain" and one["steps"] == two["steps"] == 20
    assert two["test_loss"] == one["test_loss"] and two["test_accuracy"] == one["test_accuracy"]
    assert ([without_timing(r) for r in read_jsonl(runs / "two" / "metrics.jsonl")]
            == [without_timing(r) for r in read_jsonl(runs / "one" / "metrics.jsonl")])
    assert params_bytes(runs / "two") == params_bytes(runs / "one")


def test_each_of_two_processes_reads_only_its_rows_of_every_global_batch(runs):
    one = reads(runs / "one.log")
    halves = [reads(runs / f"two-{i}.log") for i in range(2)]
    assert {line[:2] for line in one} == {(0, 8)}
    assert {line[:2] for line in halves[0]} == {(0, 4)} and {line[:2] for line in halves[1]} == {(4, 8)}
    epochs = [first_epoch(lines) for lines in halves]
    assert len(epochs[0]) == len(epochs[1]) == STEPS_PER_EPOCH * 4
    assert not {e for _, e in epochs[0]} & {e for _, e in epochs[1]}
    assert epochs[0] | epochs[1] == first_epoch(one)

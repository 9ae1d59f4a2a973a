"""`dataset.input=grain`: an image folder read by Grain's workers trains bitwise alike with 0 and 2
workers, and a SIGTERM then resume equals the uninterrupted run (the iterator state restored from
the checkpoint); each process reads its own records; bad keys and a missing extra are one line."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cli_run import assert_one_line_error, run_cli
from conftest import REPO, sigterm_after
from test_parallel import device_env
from jaxcnn.config import load_config
from jaxcnn.data import records
from jaxcnn.files import checkpoint
from jaxcnn.files.writers import read_jsonl, without_timing
from jaxcnn.training.loop import train_and_evaluate

pytest.importorskip("grain", reason="dataset.input=grain needs the [grain] extra")
Image = pytest.importorskip("PIL.Image", reason="image folders are read with Pillow")

# 3 classes x 40 JPEGs of 20x24: 96 for training (a 20% test split), 86 after validation: 10 steps of 8.
# The crop picks 12x12 windows of them (dataset.image_size), the flip runs on the device.
RUN = ["model.name=mlp", "model.hidden=(16,)", "num_epochs=2", "batch_size=8", "log_every_steps=5",
       "dataset.name=image_folder", "dataset.image_size=(12, 12)", "dataset.input=grain", "augment.flip=true",
       "augment.random_resized_crop=(0.3, 1.0)", "optimizer.name=sgd", "optimizer.momentum=0.9"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"class{c}").mkdir()
        for i in range(40):
            pixels = np.clip(rng.normal(60 + 70 * c, 40, (20, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i:03d}.jpg", quality=90)
    return root


def config(folder, *extra):
    return load_config("digits_cnn", RUN + [f"dataset.path={folder}", *extra])


@pytest.fixture(scope="module")
def straight(folder, tmp_path_factory):
    """The uninterrupted run, decoded and cropped in the main process (0 workers)."""
    workdir = tmp_path_factory.mktemp("straight") / "run"
    return workdir, train_and_evaluate(config(folder, "dataset.workers=0"), workdir, quiet=True)


def lines(workdir):
    return [without_timing(r) for r in read_jsonl(pathlib.Path(workdir) / "metrics.jsonl")]


def params(workdir):
    from jaxcnn.commands.saved import load_saved_model

    return [np.asarray(x).tobytes() for x in jax.tree.leaves(load_saved_model(workdir, "latest").state.params)]


def test_two_workers_stopped_by_sigterm_and_resumed_equal_the_straight_run(folder, straight, tmp_path, monkeypatch):
    """Workers 2: SIGTERM after step 7 (mid-epoch) stops after that call with a checkpoint holding
    Grain's iterator state; the resumed run opens the pipeline from that state (not from step 0
    or from the step: `start` stays the first run's) and ends bitwise as the 0-worker straight run."""
    from jaxcnn.data import grain_feed

    original_pipeline, starts = grain_feed.train_pipeline, []
    monkeypatch.setattr(grain_feed, "train_pipeline", lambda *a: starts.append(tuple(a[2:4])) or original_pipeline(*a))
    _, restore = sigterm_after(monkeypatch, 7)
    workdir = tmp_path / "run"
    with pytest.raises(checkpoint.TrainingInterrupted) as stopped:
        train_and_evaluate(config(folder, "dataset.workers=2"), workdir, quiet=True)
    assert stopped.value.step == 7
    meta = checkpoint.read_meta(checkpoint.open_manager(workdir / "checkpoints", read_only=True), 7)
    assert meta["inputs"][0]["step"] == 7 and meta["inputs"][0]["workers"] == 2 and "grain" in meta["inputs"][0]
    restore()

    summary = train_and_evaluate(config(folder, "dataset.workers=2"), workdir, quiet=True)
    # (start, workers): the stopped run's pipeline; the resumed run's, from step 0 again at the saved
    # state (set_state), not opened at step 7. The memory analysis reads no call of its own: it has
    # the program the loop compiled.
    assert starts == [(0, 2), (0, 2)]
    assert summary["steps"] == 20 and summary["input"] == "grain"
    assert summary["test_loss"] == straight[1]["test_loss"]
    assert lines(workdir) == lines(straight[0])
    assert params(workdir) == params(straight[0])


def test_processes_read_disjoint_records_that_make_up_the_global_batches():
    """Two processes' rows of every global batch: disjoint, together the epoch's permutation."""
    n, batch, seed = 50, 8, 3
    halves = [records.Layout(n, batch, (0, 4)), records.Layout(n, batch, (4, 8))]
    for epoch_start in (0, 6 * 4):  # epoch 1, and epoch 2 (6 steps per epoch, 4 rows per process)
        read = [[records.record_index(epoch_start + k, layout, seed)[2] for k in range(6 * 4)] for layout in halves]
        assert not set(read[0]) & set(read[1])
        assert len(set(read[0]) | set(read[1])) == 6 * 8
    whole = records.Layout(n, batch, (0, 8))
    permutation = [records.record_index(k, whole, seed)[2] for k in range(6 * 8)]
    assert sorted(records.shuffled(p, n, seed, 1) for p in range(n)) == list(range(n))
    assert permutation[:4] == [records.record_index(k, halves[0], seed)[2] for k in range(4)]
    assert permutation[4:8] == [records.record_index(k, halves[1], seed)[2] for k in range(4)]


def test_random_resized_crops_depend_on_the_generator_only():
    image = np.arange(30 * 40 * 3, dtype=np.uint8).reshape(30, 40, 3)
    crops = [records.random_resized_crop(image, (12, 12), (0.08, 1.0), np.random.default_rng([1, 2, 3]))
             for _ in range(2)]
    assert crops[0].shape == (12, 12, 3) and np.array_equal(crops[0], crops[1])
    for seed in range(50):
        top, left, h, w = records.crop_box(np.random.default_rng(seed), 30, 40, (0.08, 1.0))
        assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 40 and h > 0 and w > 0


@pytest.mark.parametrize("override, fragment", [
    ("--config.dataset.workers=-1", "dataset.workers must be a non-negative number of worker processes"),
    ("--config.augment.random_resized_crop=(0.5, 2.0)", "augment.random_resized_crop must be (min, max) area"),
    ("--config.dataset.input=host", "dataset.workers=2 reads with Grain's worker processes"),
    ("--config.dataset.per_channel_stats=true", "dataset.per_channel_stats measures the decoded training split"),
])
def test_bad_grain_keys_are_one_line(capsys, tmp_path, override, fragment):
    result = run_cli(capsys, "train", "--workdir", tmp_path / "w", "--quiet", "--config.dataset.input=grain",
                     "--config.dataset.workers=2", override)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "w").exists()


def test_a_missing_grain_package_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['grain'] = None; from jaxcnn import cli; "
            f"sys.exit(cli.main(['train', '--workdir', {str(tmp_path / 'w')!r}, '--config.dataset.input=grain']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "jaxcnn: error: dataset.input=grain needs the grain package, which is not installed; "
        "pip install 'jaxcnn[grain]'"]


def test_sigterm_to_the_process_group_of_a_run_with_workers_stops_it_without_a_resource_tracker_warning(folder, tmp_path):
    """A scheduler (or `timeout`, or Ctrl-C) signals the whole process group, Grain's workers too:
    they ignore it, the main process stops after its call and closes them, so no shared memory is
    left for the resource tracker to warn about, and no worker outlives the run."""
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "jaxcnn.cli", "train", "--workdir", str(workdir), "--config", "digits_cnn",
               *[f"--config.{o}" for o in RUN], f"--config.dataset.path={folder}", "--config.dataset.workers=2",
               "--config.num_epochs=500", "--config.log_every_steps=1"]
    run = subprocess.Popen(command, env=device_env(1), cwd=REPO, text=True, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (workdir / "metrics.jsonl").is_file() or len(read_jsonl(workdir / "metrics.jsonl")) < 3:
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1][-3000:]
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stderr[-3000:]  # a stop with a checkpoint is a success
    assert "resource_tracker" not in stderr and "leaked" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("jaxcnn: SIGTERM: stopped after step "), stderr
    for _ in range(50):  # the workers end with the run (killpg raises once the group is empty)
        try:
            os.killpg(run.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("a Grain worker outlived the stopped run")

"""Bad starts and failures of `jaxcnn train` (and bad `jaxcnn bench` settings) as one table: each
ends in one line on stderr, its exit status (2; 3 for a diverged training), no traceback, and every
file that existed before unchanged (sha256); a start that is refused adds nothing, not even an
empty folder. The table folds into the larger one of tests/test_bad_inputs_outputs.py.

The cases run `jaxcnn.cli.main` in this process. A read-only workdir is a read-only bind mount
(root) or a `chmod` (other users), a full disk a small tmpfs (root); where neither can be made,
those cases are skipped with the reason. The fault-injection hook of `jaxcnn.files.checkpoint` makes a
background checkpoint save fail as a full disk would, wherever the tests run.
"""

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import warnings

import pytest

from conftest import start_capture
from jaxcnn import cli
from jaxcnn.files import checkpoint, workdir
from jaxcnn.config import load_config
from jaxcnn.training.loop import train_and_evaluate

# A tiny run: 8x8 grey synthetic images, an MLP, one epoch, checkpointed.
RUN = ["dataset.name=synthetic", "dataset.image_shape=(8, 8, 1)", "dataset.num_train=64", "dataset.num_test=32",
       "model.name=mlp", "model.hidden=(8,)", "num_epochs=1", "batch_size=16", "eval_batch_size=32",
       "schedule.name=constant"]
T = [f"--config.{o}" for o in RUN]
# Diverges in steps 11-15 (Adam, warm-up to 2e19 on digits); the checkpoint of step 10 is the last finite state.
DIVERGES = ["--config.model.name=mlp", "--config.model.hidden=(16,)", "--config.num_epochs=3",
            "--config.schedule.warmup_epochs=2.0", "--config.optimizer.learning_rate=2e19",
            "--config.log_every_steps=5", "--config.checkpoint.every_steps=5"]
BIG = ["--config.model.name=mlp", "--config.model.hidden=(512,)", "--config.num_epochs=1",
       "--config.schedule.name=constant", "--config.checkpoint.every_steps=10"]  # ~0.5 MB per checkpoint
OBSTACLES = {"checkpoints": "file", "events": "file", "summary.json": "folder", "predictions.npz": "folder",
             "metrics.jsonl": "folder", "config.json": "folder"}


def mount(*args):
    """None when `mount ARGS` worked, else why it could not. The mount point is unmounted when
    the tests of this module end (`MOUNTED`)."""
    if os.geteuid() != 0:
        return "mounting needs root"
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        return f"mount {' '.join(args)}: {result.stderr.strip()}"
    MOUNTED.append(args[-1])
    return None


MOUNTED = []


def unmount_all():
    while MOUNTED:
        subprocess.run(["umount", MOUNTED.pop()], capture_output=True)


def make_read_only(root):
    """`root/ro`: a read-only view of `root/ro_src` (an interrupted run `run`, an empty folder `empty`);
    `root/ro_checkpoints/checkpoints`: the read-only checkpoints of an interrupted run."""
    checkpoints = root / "ro_checkpoints" / "checkpoints"
    if os.geteuid() != 0:
        for folder in [root / "ro", checkpoints, *(p for p in (root / "ro").rglob("*") if p.is_dir())]:
            folder.chmod(0o555)
        return None
    (root / "ro").rename(root / "ro_src")
    (root / "ro").mkdir()
    return (mount("--bind", str(root / "ro_src"), str(root / "ro")) or mount("-o", "remount,ro,bind", str(root / "ro"))
            or mount("--bind", str(checkpoints), str(checkpoints))
            or mount("-o", "remount,ro,bind", str(checkpoints)))


def make_tmpfs(root):
    """`root/full`: a 64 KiB tmpfs, full; `root/small`: a 1 MiB tmpfs, empty."""
    for name, size in (("full", "64k"), ("small", "1m")):
        (root / name).mkdir()
        reason = mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root / name))
        if reason:
            return reason
    fd = os.open(root / "full" / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, bytes(4096)):
            pass
    except OSError:  # full
        pass
    finally:
        os.close(fd)
    return None


@pytest.fixture(scope="module")
def place(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("bad_train")
    request.addfinalizer(unmount_all)
    train_and_evaluate(load_config("digits_cnn", RUN), root / "run", quiet=True)
    interrupted = shutil.copytree(root / "run", root / "interrupted")
    for name in ("summary.json", "predictions.npz"):  # as if stopped before the test
        (interrupted / name).unlink()
    edited = shutil.copytree(interrupted, root / "edited")
    config = json.loads((edited / "config.json").read_text())
    (edited / "config.json").write_text(json.dumps({**config, "seed": 7}))
    for name, kind in OBSTACLES.items():
        target = root / f"in_the_way_{name}" / name
        target.parent.mkdir()
        target.mkdir() if kind == "folder" else target.write_text("in the way\n")
    shutil.copytree(interrupted, root / "resume_in_the_way")
    (root / "resume_in_the_way" / "predictions.npz").mkdir()
    (root / "a_file").write_text("not a folder\n")
    (root / "locked_new").mkdir()
    shutil.copytree(interrupted, root / "locked_run")
    locks = [workdir.WorkdirLock(root / "locked_new"), workdir.WorkdirLock(root / "locked_run")]
    (root / "cwd").mkdir()
    (root / "ro").mkdir()
    shutil.copytree(interrupted, root / "ro" / "run")
    shutil.copytree(interrupted, root / "ro_checkpoints")
    (root / "ro" / "empty").mkdir()
    unavailable = {"ro": make_read_only(root), "tmpfs": make_tmpfs(root)}
    yield root, unavailable
    for lock in locks:
        lock.release()
    if os.geteuid() != 0:  # the chmod of make_read_only, undone so the folder can be removed
        for folder in [root / "ro", root / "ro_checkpoints" / "checkpoints",
                       *(p for p in (root / "ro").rglob("*") if p.is_dir())]:
            folder.chmod(0o755)


W = "--workdir"
CASES = [
    # Another training holds the workdir (this process, as another `jaxcnn train` would).
    ("train-workdir-in-use", [W, "{root}/locked_new", *T], "in use by another `jaxcnn train`: PID {pid} on host", {}),
    ("train-resume-workdir-in-use", [W, "{root}/locked_run", *T], "is in use by another `jaxcnn train`: PID {pid}", {}),
    ("train-fresh-in-a-workdir-in-use", [W, "{root}/locked_run", "--fresh", *T], "is in use by another", {}),
    # Something in the way of an output, before any work.
    *[(f"train-{name}-is-a-{kind}", [W, f"{{root}}/in_the_way_{name}", *T],
       f"in_the_way_{name}/{name}' is a {kind}", {}) for name, kind in OBSTACLES.items()],
    ("train-resume-with-a-folder-for-predictions", [W, "{root}/resume_in_the_way", *T],
     "predictions.npz' is a folder", {}),
    ("train-workdir-is-a-file", [W, "{root}/a_file", *T], "workdir '{root}/a_file' is a file", {}),
    ("train-workdir-inside-a-file", [W, "{root}/a_file/run", *T], "a_file' is a file, expected a folder", {}),
    # Read-only workdirs: a fresh one, an interrupted run, one to be created inside.
    ("train-read-only-empty-workdir", [W, "{root}/ro/empty", *T], "is not writable", {"needs": "ro"}),
    ("train-read-only-interrupted-run", [W, "{root}/ro/run", *T], "is not writable", {"needs": "ro"}),
    ("train-workdir-in-a-read-only-folder", [W, "{root}/ro/new/run", *T], "is not writable (it would be created in",
     {"needs": "ro"}),
    ("train-read-only-checkpoints-folder", [W, "{root}/ro_checkpoints", *T, "--config.num_epochs=2"],
     "cannot save the checkpoint of step 6 in {root}/ro_checkpoints/checkpoints: ",
     {"needs": "ro", "new": "ro_checkpoints"}),  # it trained epoch 2 (its metrics), then could not save it
    # A full disk: at the start, and during training (a real tmpfs; the hook everywhere).
    ("train-disk-full-at-the-start", [W, "{root}/full/run", *T], "No space left on device", {"needs": "tmpfs"}),
    ("train-disk-full-during-training", [W, "{root}/small/run", *BIG],
     "cannot save the checkpoint of step 30 in {root}/small/run/checkpoints: No space left on device",
     {"needs": "tmpfs", "new": "small/run"}),
    ("train-checkpoint-save-fails", [W, "{root}/hook/run", *BIG],
     "cannot save the checkpoint of step 20 in {root}/hook/run/checkpoints: No space left on device (errno 28); "
     "the checkpoint of step 10 is kept", {"env": {checkpoint.SAVE_FAIL_ENV: "1"}, "new": "hook"}),
    # Divergence: exit status 3.
    ("train-diverges", [W, "{root}/diverged", *DIVERGES],
     "training diverged in steps 11-15: the training loss is inf (last finite loss", {"status": 3, "new": "diverged"}),
    ("train-bad-on-nonfinite", [W, "{root}/new", "--config.on_nonfinite=ignore"],
     "unknown action 'ignore' (on_nonfinite)", {}),
    # The config.json of a run edited by hand: its checkpoint's config is the truth.
    ("train-config-json-edited-by-hand", [W, "{root}/edited", "--config", "{root}/edited/config.json"],
     "edited/config.json disagrees with its checkpoint (step 3): seed (0 -> 7)", {}),
    # Failed starts leave no folder behind.
    ("train-missing-data-dir", [W, "{root}/runs/mnist", "--config.dataset.name=mnist", "--data-dir", "{root}/nowhere"],
     "nowhere/mnist", {}),
    ("train-no-data-dir-at-all", [W, "{root}/runs/mnist", "--config.dataset.name=mnist"], "data directory: none given",
     {"unset": ["JAXCNN_DATA_DIR"]}),
    ("train-default-workdir-missing-data", ["--config.dataset.name=mnist", "--data-dir", "{root}/nowhere"],
     "nowhere/mnist", {"cwd": "cwd"}),
    ("train-batch-larger-than-the-data", [W, "{root}/runs/big_batch", *T, "--config.batch_size=128"],
     "batch_size 128 is larger than the training split", {}),
    ("train-coordinator-alone", [W, "{root}/new", "--coordinator", "localhost:1234"], "missing --num-processes", {}),
    ("train-process-id-out-of-range", [W, "{root}/new", "--coordinator", "localhost:1", "--num-processes", "2",
                                       "--process-id", "2"], "--process-id must be in [0, 2)", {}),
    # bench settings, refused before the benchmark runs.
    ("bench-unknown-model", ["bench", "--model", "nope"], "unknown model 'nope'", {}),
    ("bench-unknown-mode", ["bench", "--mode", "nope"], "unknown benchmark mode 'nope'", {}),
    ("bench-batch-size-0", ["bench", "--batch-size", "0"], "--batch-size must be positive integers", {}),
    ("bench-unknown-dtype", ["bench", "--dtype", "float64"], "unknown dtype 'float64'", {}),
    ("bench-repeats-0", ["bench", "--repeats", "0"], "repeats must be a positive integer", {}),
    ("bench-negative-min-time", ["bench", "--min-time", "-1"], "--min-time must be > 0 seconds", {}),
    ("bench-nan-min-time", ["bench", "--min-time", "nan"], "--min-time must be > 0 seconds", {}),
    ("bench-steps-per-call-0", ["bench", "--steps-per-call", "0"], "steps_per_call must be a positive integer", {}),
    ("bench-unknown-dataset", ["bench", "--dataset", "nope"], "unknown dataset 'nope'", {}),
    ("bench-unknown-conv-impl", ["bench", "--conv-impl", "nope"], "unknown conv_impl 'nope'", {}),
    ("bench-num-test-0", ["bench", "--num-test", "0"], "num_test must be a positive integer", {}),
    ("bench-negative-seed", ["bench", "--seed", "-1"], "expected a non-negative integer", {}),
    ("bench-missing-data-dir", ["bench", "--dataset", "mnist", "--data-dir", "{root}/nowhere"], "nowhere/mnist", {}),
]


def tree_hashes(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(pathlib.Path(root).rglob("*"))}


def run_case(argv, root, options, monkeypatch, capfd):
    expand = lambda a: a.replace("{root}", str(root))
    argv = [expand(a) for a in argv]
    for key, value in options.get("env", {}).items():
        monkeypatch.setenv(key, value)
    for key in options.get("unset", []):
        monkeypatch.delenv(key, raising=False)
    if "cwd" in options:
        monkeypatch.chdir(root / options["cwd"])
    start_capture(capfd)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        status = cli.main(argv if argv[0] == "bench" else ["train", *argv])
    stderr = capfd.readouterr().err
    return status, stderr + "".join(f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}\n" for w in caught)


@pytest.mark.parametrize("argv, expected, options", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_start_is_one_line_its_exit_status_and_changes_no_file(place, argv, expected, options, monkeypatch,
                                                                     capfd):
    root, unavailable = place
    if unavailable.get(options.get("needs")):
        pytest.skip(unavailable[options["needs"]])
    before = tree_hashes(root)
    status, stderr = run_case(argv, root, options, monkeypatch, capfd)
    assert status == options.get("status", 2), stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    prefix = "jaxcnn: error: " if status == 2 else "jaxcnn: "
    fragment = expected.replace("{root}", str(root)).replace("{pid}", str(os.getpid()))
    assert lines[0].startswith(prefix) and fragment in lines[0], lines[0]
    after = tree_hashes(root)
    new = options.get("new")
    if new:  # a run that started: only its own workdir gained files
        after = {k: v for k, v in after.items() if k != new and not k.startswith(f"{new}/")}
        before = {k: v for k, v in before.items() if k != new and not k.startswith(f"{new}/")}
    assert after == before


def test_there_are_at_least_60_bad_inputs_across_the_commands():
    import test_bad_inputs_config
    import test_bad_inputs_outputs

    commands = {c[1][0] if c[1][0] == "bench" else "train" for c in CASES}
    commands |= {c[1][0] for c in test_bad_inputs_outputs.CASES}
    assert len(CASES) + len(test_bad_inputs_outputs.CASES) + len(test_bad_inputs_config.CASES) >= 60
    assert {"train", "bench", "eval", "predict", "report"} <= commands

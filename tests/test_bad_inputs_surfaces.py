"""Bad inputs of the newer surfaces as one table: own data (image folders, `.npz` arrays), own models,
members and sweeps, export and `predict --exported`, verify, compare, several processes, and
`--seeds`. Each ends in one line on stderr, exit status 2, no traceback, and leaves every file it
could touch unchanged (sha256; a FIFO or a link by what it is: reading a FIFO would block).

As tests/test_bad_inputs_outputs.py: the cases run `jaxcnn.cli.main` in this process, from the
folder of the files (own models are imported from it), over one tiny run and one tiny run of
members trained once for the module; most are refused while the config or arguments are checked.
`test_a_case_run_as_a_real_command_...` runs the cases that once hung or aborted as real commands.
"""

import hashlib
import os
import pathlib
import stat
import subprocess
import sys
import warnings

import numpy as np
import pytest

from conftest import REPO, start_capture
from jaxcnn import cli
from surfaces_files import T, build_files

pytest.importorskip("PIL.Image", reason="image folders are read with Pillow")

TRAIN = ["train", "--workdir", "{root}/new", "--quiet"]
OWN = TRAIN + ["--config.dataset.name=image_folder", "--config.model.name=mlp", "--config.dataset.path"]
NPZ = TRAIN + ["--config.dataset.name=arrays", "--config.model.name=mlp", "--config.dataset.path"]
MODEL = TRAIN + [o for o in T if ".model." not in o] + ["--config.model.name"]
MEMBERS = TRAIN + T
EXPORT = ["export", "--workdir", "{root}/run", "--out"]
EXPORTED = ["predict", "--exported", "{root}/export/model.jaxexport"]
COMPARE = ["compare", "{root}/members"]
PROCESS = TRAIN + T + ["--num-processes", "2"]
CASES = [
    # own data: an image folder
    ("folder-dangling-symlink", OWN + ["{root}/dangling"], "zz.png: is a dangling symbolic link"),
    ("folder-looping-symlink", OWN + ["{root}/looping"], "zz.png: is a symbolic link loop"),
    ("folder-fifo-named-png", OWN + ["{root}/fifo"], "zz.png: is a FIFO (named pipe), not a regular file"),
    ("folder-one-class", OWN + ["{root}/one_class"], "has only one class folder"),
    ("folder-no-images", OWN + ["{root}/no_images"], "has no images"),
    ("folder-mixed-sizes", OWN + ["{root}/mixed"], "images of different sizes"),
    ("folder-train-without-test", OWN + ["{root}/train_only"], "has train/ but no test/"),
    ("folder-corrupt-image", OWN + ["{root}/corrupt"], "bad.png: cannot be read as an image"),
    ("folder-test-class-not-trained", OWN + ["{root}/extra_test_class"], "is a class with no folder in"),
    ("folder-missing-path", OWN + ["{root}/nowhere"], "nowhere does not exist"),
    ("folder-path-is-a-file", OWN + ["{root}/a_file"], "is not a folder"),
    ("folder-path-unset", OWN + [""], "dataset.path: not set"),
    ("folder-bad-image-size", OWN + ["{root}/mixed", "--config.dataset.image_size=(0, 8)"], "dataset.image_size"),
    ("folder-test-fraction-1", OWN + ["{root}/mixed", "--config.dataset.test_fraction=1.0"], "dataset.test_fraction"),
    # own data: arrays
    ("arrays-complex-pixels", NPZ + ["{root}/complex.npz"], "got dtype complex64"),
    ("arrays-label-of-a-million", NPZ + ["{root}/huge_label.npz"], "label 1000000 makes 1000001 classes"),
    ("arrays-no-labels", NPZ + ["{root}/no_labels.npz"], "has no labels array"),
    ("arrays-negative-label", NPZ + ["{root}/negative_label.npz"], "negative label -1"),
    ("arrays-float-labels", NPZ + ["{root}/float_labels.npz"], "expected integer class indices"),
    ("arrays-one-hot-labels", NPZ + ["{root}/one_hot.npz"], "one-hot labels?"),
    ("arrays-channels-first", NPZ + ["{root}/channels_first.npz"], "looks channels-first"),
    ("arrays-length-mismatch", NPZ + ["{root}/length_mismatch.npz"], "15 labels for 20 images"),
    ("arrays-negative-pixels", NPZ + ["{root}/negative_pixels.npz"], "float pixels must lie in [0, 1] or [0, 255]"),
    ("arrays-nan-pixels", NPZ + ["{root}/nan_pixels.npz"], "float pixels must lie in"),
    ("arrays-class-names-not-strings", NPZ + ["{root}/int_class_names.npz"], "class_names must be a 1-D array of strings"),
    ("arrays-label-beyond-class-names", NPZ + ["{root}/label_over_names.npz"], "label 2 is out of range for 2 class names"),
    ("arrays-one-class", NPZ + ["{root}/one_class.npz"], "only one class"),
    ("arrays-test-images-alone", NPZ + ["{root}/test_images_alone.npz"], "test_images given without test_labels"),
    ("arrays-bool-pixels", NPZ + ["{root}/bool_pixels.npz"], "got dtype bool"),
    ("arrays-test-shape-differs", NPZ + ["{root}/test_shape_differs.npz"], "both need the same (H, W, C)"),
    ("arrays-not-an-npz", NPZ + ["{root}/garbage.npz"], "cannot be read as an .npz archive"),
    ("arrays-missing-file", NPZ + ["{root}/nowhere.npz"], "nowhere.npz does not exist"),
    # own models
    ("model-too-many-outputs", MODEL + ["badnets:TooMany"], "returned logits of shape (batch, 13)"),
    ("model-too-few-outputs", MODEL + ["badnets:TooFew"], "returned logits of shape (batch, 2) with train=False"),
    ("model-spatial-outputs", MODEL + ["badnets:Spatial"], "returned logits of shape (batch, 8, 8, 10)"),
    ("model-one-number-per-image", MODEL + ["badnets:OneNumber"], "returned logits of shape (batch,)"),
    ("model-raises-only-training", MODEL + ["badnets:RaisesWhileTraining"],
     "model.name 'badnets:RaisesWhileTraining' raised ZeroDivisionError: no training today while tracing with "
     "train=True"),
    ("model-raises-key-error", MODEL + ["badnets:RaisesKeyError"], "raised KeyError: 'missing'"),
    ("model-integer-logits", MODEL + ["badnets:IntegerLogits"], "returned a int32 array"),
    ("model-returns-a-tuple", MODEL + ["badnets:TwoOutputs"], "returned a tuple"),
    ("model-train-without-default", MODEL + ["badnets:TrainWithoutDefault"], "takes train without a default"),
    ("model-not-a-module", MODEL + ["badnets:not_a_module"], "not a Flax module"),
    ("model-module-not-found", MODEL + ["nonets:Net"], "nonets"),
    ("model-class-not-found", MODEL + ["badnets:Nothing"], "Nothing"),
    ("model-option-not-taken", MODEL + ["badnets:TooMany", "--config.model.options={'width': 3}"], "width"),
    # members and sweeps
    ("members-repeated-seeds", MEMBERS + ["--config.seeds=(1, 1)"], "seeds"),
    ("members-no-seeds", MEMBERS + ["--config.seeds=()"], "seeds"),
    ("members-negative-count", MEMBERS + ["--config.seeds=-2"], "seeds"),
    ("members-sweep-model-width", MEMBERS + ["--config.sweep.model.hidden=((8,), (16,))"], "model.hidden"),
    ("members-sweep-repeated-values", MEMBERS + ["--config.sweep.optimizer.learning_rate=(0.1, 0.1)"],
     "optimizer.learning_rate"),
    ("members-sweep-negative-rate", MEMBERS + ["--config.sweep.optimizer.learning_rate=(-0.1, 0.1)"],
     "optimizer.learning_rate"),
    ("members-with-profile-steps", MEMBERS + ["--config.seeds=2", "--config.profile_steps=(1, 2)"], "profile"),
    # float16's dynamic loss scaling
    ("fp16-negative-initial-scale", TRAIN + T + ["--config.dtype=float16", "--config.loss_scale.initial=-1"],
     "loss_scale.initial must be > 0, got -1.0"),
    ("fp16-minimum-above-initial", TRAIN + T + ["--config.dtype=float16", "--config.loss_scale.minimum=1e6"],
     "loss_scale.minimum must be <= loss_scale.initial (32768.0), got 1000000.0"),
    ("fp16-growth-interval-0", TRAIN + T + ["--config.dtype=float16", "--config.loss_scale.growth_interval=0"],
     "loss_scale.growth_interval must be a positive integer, got 0"),
    ("fp16-unknown-loss-scale-key", TRAIN + T + ["--config.dtype=float16", "--config.loss_scale.scale=3"],
     "unknown config key 'loss_scale.scale'"),
    ("fp16-unknown-dtype", TRAIN + T + ["--config.dtype=float8"], "unknown dtype 'float8' (dtype)"),
    # export and predict --exported
    ("export-into-read-only-folder", EXPORT + ["{root}/ro_folder/model.jaxexport"], "cannot write in", {"ro": 1}),
    ("export-default-in-read-only-run", ["export", "--workdir", "{root}/ro_run"], "cannot write in", {"ro": 1}),
    ("export-out-is-a-folder", EXPORT + ["{root}/a_folder"], "is a folder"),
    ("export-out-below-a-file", EXPORT + ["{root}/a_file/model.jaxexport"], "is a file, not a folder"),
    ("export-a-run-of-members", ["export", "--workdir", "{root}/members", "--out", "{root}/new.jaxexport"],
     "trained 2 members"),
    ("export-step-not-saved", EXPORT + ["{root}/new.jaxexport", "--step", "999"], "no checkpoint for step 999"),
    ("export-unknown-platform", EXPORT + ["{root}/new.jaxexport", "--platforms", "gpu"], "--platforms"),
    ("exported-missing-file", ["predict", "--exported", "{root}/nowhere.jaxexport", "{root}/digit.png"], "nowhere"),
    ("exported-not-an-export", ["predict", "--exported", "{root}/a_file", "{root}/digit.png"], "a_file"),
    ("exported-fifo-artifact", ["predict", "--exported", "{root}/fifo.png", "{root}/digit.png"],
     "fifo.png: is a FIFO (named pipe), not a regular file"),
    ("exported-with-step", EXPORTED + ["--step", "1", "{root}/digit.png"], "--step applies to --workdir"),
    ("exported-fifo-image", EXPORTED + ["{root}/fifo.png"], "fifo.png: is a FIFO"),
    ("exported-dangling-image", EXPORTED + ["{root}/dangling.png"], "dangling.png: is a dangling symbolic link"),
    ("predict-fifo-image", ["predict", "--workdir", "{root}/run", "{root}/fifo.png"], "fifo.png: is a FIFO"),
    # eval and predict on checkpoints that are not the run's
    ("eval-replaced-checkpoints", ["eval", "--workdir", "{root}/replaced_checkpoints"], "seed (0 -> 7)"),
    ("predict-replaced-checkpoints", ["predict", "--workdir", "{root}/replaced_checkpoints", "{root}/digit.png"],
     "are not of the run in"),
    # verify
    ("verify-empty-certificate", ["verify", "{root}/cert_empty"], "params_sha256 is null"),
    ("verify-versions-a-number", ["verify", "{root}/cert_versions_number"], "expected a JSON object with versions"),
    ("verify-short-hash", ["verify", "{root}/cert_short_hash"], "params_sha256 is \"abc\""),
    ("verify-negative-steps", ["verify", "{root}/cert_negative_steps"], "steps is -1"),
    ("verify-no-devices", ["verify", "{root}/cert_no_devices"], "device_count is 0"),
    ("verify-certificate-a-list", ["verify", "{root}/cert_list"], "not a jaxcnn run certificate"),
    ("verify-missing-workdir", ["verify", "{root}/nowhere"], "nowhere"),
    ("verify-unfinished-run", ["verify", "{root}/unfinished"], "summary.json"),
    ("verify-steps-0", ["verify", "{root}/run", "--steps", "0"], "--steps"),
    ("verify-steps-beyond", ["verify", "{root}/run", "--steps", "100000"], "--steps"),
    # compare and report of a damaged run of members
    ("compare-member-without-seed", COMPARE + ["{root}/member_without_seed"], "members[0].seed"),
    ("compare-member-seed-text", COMPARE + ["{root}/member_seed_text"], "members[1].seed"),
    ("compare-member-sweep-list", COMPARE + ["{root}/member_sweep_list"], "members[0].sweep"),
    ("compare-member-accuracy-text", COMPARE + ["{root}/member_accuracy_text"], "members[0].test_accuracy"),
    ("compare-members-not-a-list", COMPARE + ["{root}/members_not_a_list"], "'members' is not a list"),
    ("compare-member-not-an-object", COMPARE + ["{root}/member_not_an_object"], "members[0] is not an object"),
    ("compare-aggregate-out-of-range", COMPARE + ["{root}/aggregate_member_out_of_range"], "aggregate[0].members"),
    ("compare-aggregate-metrics-text", COMPARE + ["{root}/aggregate_metrics_text"], "aggregate[0].metrics"),
    ("compare-no-shared-seed", COMPARE + ["{root}/other_seed"], "share no seed"),
    ("compare-unfinished-run", COMPARE + ["{root}/unfinished"], "unfinished run"),
    ("compare-not-a-run", COMPARE + ["{root}/a_folder"], "is not a jaxcnn workdir"),
    ("report-member-without-seed", ["report", "--out", "{root}/new_report", "{root}/member_without_seed"],
     "members[0].seed"),
    # several processes
    ("processes-unreachable-coordinator", PROCESS + ["--coordinator", "127.0.0.1:9", "--process-id", "1",
                                                     "--init-timeout", "1"], "could not be reached within 1 s"),
    ("processes-coordinator-without-port", PROCESS + ["--coordinator", "localhost", "--process-id", "1"],
     "--coordinator must be HOST:PORT"),
    ("processes-port-out-of-range", PROCESS + ["--coordinator", "localhost:70000", "--process-id", "1"],
     "--coordinator must be HOST:PORT"),
    ("processes-id-too-large", PROCESS + ["--coordinator", "localhost:1234", "--process-id", "2"], "--process-id"),
    ("processes-timeout-0", PROCESS + ["--coordinator", "localhost:1234", "--process-id", "1", "--init-timeout", "0"],
     "--init-timeout must be"),
    ("processes-without-coordinator", TRAIN + T + ["--num-processes", "2", "--process-id", "0"],
     "missing --coordinator"),
    # --seeds, the same everywhere
    ("bench-to-accuracy-seeds-0", ["bench", "--to-accuracy", "0.9", "--seeds", "0"], "--seeds must be a whole number"),
    ("bench-to-accuracy-seeds-negative", ["bench", "--to-accuracy", "0.9", "--seeds", "-1"],
     "--seeds must be a whole number"),
    ("bench-seeds-0", ["bench", "--seeds", "0"], "--seeds must be a whole number of seeds >= 1, got 0"),
    # MNIST: something else at a file's path
    ("mnist-folder-at-a-file", TRAIN + ["--config", "mnist_mlp", "--data-dir", "{root}/mnist_folder"],
     "train-images-idx3-ubyte.gz is a folder"),
    ("mnist-fifo-at-a-file", TRAIN + ["--config", "mnist_mlp", "--data-dir", "{root}/mnist_fifo"],
     "train-images-idx3-ubyte.gz is a FIFO"),
    ("mnist-dangling-link-at-a-file", TRAIN + ["--config", "mnist_mlp", "--data-dir", "{root}/mnist_dangling"],
     "train-images-idx3-ubyte.gz is a dangling symbolic link"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root, undo, why = build_files(tmp_path_factory.mktemp("surfaces"))
    yield root, why
    undo()


def fingerprint(path):
    """What `path` is, without opening anything but regular files (a FIFO would block)."""
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        return "link to " + os.readlink(path)
    if stat.S_ISDIR(mode):
        return "folder"
    if not stat.S_ISREG(mode):
        return "special"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_hashes(root):
    return {str(p.relative_to(root)): fingerprint(p) for p in sorted(pathlib.Path(root).rglob("*"))
            if "__pycache__" not in p.parts}


def expand(argv, root):
    return [a.replace("{root}", str(root)) for a in argv]


def run_case(argv, root, monkeypatch, capfd):
    """(exit status, stderr) of `jaxcnn ARGV` in this process, Python warnings counted as lines."""
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(root))
    start_capture(capfd)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        status = cli.main(expand(argv, root))
    stderr = capfd.readouterr().err
    return status, stderr + "".join(f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}\n" for w in caught)


def assert_one_line(status, stderr, expected):
    assert status == 2, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("jaxcnn: error: ") and expected in lines[0], lines[0]


@pytest.mark.parametrize("argv, expected, options", [(c[1], c[2], c[3] if len(c) > 3 else {}) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_a_bad_input_of_a_new_surface_is_one_line_exit_2_and_changes_no_file(files, argv, expected, options,
                                                                            monkeypatch, capfd):
    root, why_not_read_only = files
    if options.get("ro") and why_not_read_only:
        pytest.skip(why_not_read_only)
    before = tree_hashes(root)
    status, stderr = run_case(argv, root, monkeypatch, capfd)
    assert_one_line(status, stderr, expected.replace("{root}", str(root)))
    assert tree_hashes(root) == before


REAL_COMMAND_CASES = ["folder-fifo-named-png", "processes-unreachable-coordinator", "model-raises-only-training",
                      "export-into-read-only-folder"]


@pytest.mark.parametrize("case", REAL_COMMAND_CASES)
def test_a_case_that_once_hung_or_aborted_is_one_line_exit_2_as_a_real_command(files, case):
    root, why_not_read_only = files
    _, argv, expected, *options = next(c for c in CASES if c[0] == case)
    if options and options[0].get("ro") and why_not_read_only:
        pytest.skip(why_not_read_only)
    before = tree_hashes(root)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(root)])}
    result = subprocess.run([sys.executable, "-m", "jaxcnn.cli", *expand(argv, root)], cwd=root, env=env,
                            capture_output=True, text=True, timeout=120)
    assert_one_line(result.returncode, result.stderr, expected)
    assert tree_hashes(root) == before


def test_the_traceback_of_a_users_model_is_shown_with_jaxcnn_traceback_1(files, monkeypatch, capfd):
    root, _ = files
    monkeypatch.setenv("JAXCNN_TRACEBACK", "1")
    status, stderr = run_case(MODEL + ["badnets:RaisesWhileTraining"], root, monkeypatch, capfd)
    assert status == 2 and "Traceback" in stderr and 'raise ZeroDivisionError("no training today")' in stderr
    assert stderr.strip().splitlines()[-1].startswith("jaxcnn: error: ")


def test_a_healthy_run_of_members_passes_the_checks_of_compare_and_report(files, capsys):
    root, _ = files
    assert cli.main(["compare", str(root / "members"), str(root / "run")]) == 0
    assert "test_accuracy" in capsys.readouterr().out


def test_predict_exported_rescales_a_16_bit_png_as_predict_does_its_8_bit_twin(files, capsys):
    from PIL import Image

    root, _ = files
    pixels = np.random.default_rng(9).integers(0, 256, (8, 8)).astype(np.uint16)
    Image.fromarray(pixels * 257).save(root / "sixteen.png")  # mode I;16: 0..65535
    Image.fromarray(pixels.astype(np.uint8)).save(root / "eight.png")
    outputs = []
    try:
        for name in ("sixteen.png", "eight.png"):
            capsys.readouterr()
            assert cli.main([*expand(EXPORTED, root), "--json", "-", str(root / name)]) == 0
            outputs.append(capsys.readouterr().out)
    finally:
        (root / "sixteen.png").unlink()
        (root / "eight.png").unlink()
    assert outputs[0].replace("sixteen", "eight") == outputs[1]


def test_there_are_at_least_60_cases_over_every_new_surface():
    groups = {case[0].split("-")[0] for case in CASES}
    assert len(CASES) >= 60
    assert {"folder", "arrays", "model", "members", "export", "exported", "verify", "compare", "processes"} <= groups

"""The files of tests/test_bad_inputs_surfaces.py: one tiny run, one tiny run of members, an export,
image folders, `.npz` archives, a module of bad models, damaged summaries and certificates, MNIST
folders with the wrong things at a file's path, and read-only folders."""

import json
import os
import pathlib
import shutil
import subprocess

import numpy as np

from jaxcnn.config import load_config
from jaxcnn.commands.export import write_export
from jaxcnn.training.loop import train_and_evaluate

# A tiny run: 8x8 grey synthetic images, an MLP, one epoch (checkpointed: eval, export and verify need it).
RUN = ["dataset.name=synthetic", "dataset.image_shape=(8, 8, 1)", "dataset.num_train=64", "dataset.num_test=32",
       "model.name=mlp", "model.hidden=(8,)", "num_epochs=1", "batch_size=16", "eval_batch_size=32",
       "schedule.name=constant"]
T = [f"--config.{o}" for o in RUN]
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

BAD_MODELS = '''
import flax.linen as nn
import jax.numpy as jnp


def flat(x):
    return x.reshape((x.shape[0], -1))


class TooMany(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(self.num_classes + 3)(flat(x))


class TooFew(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(2)(flat(x))


class Spatial(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Conv(self.num_classes, (3, 3))(x)


class OneNumber(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(1)(flat(x))[:, 0]


class RaisesWhileTraining(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        if train:
            raise ZeroDivisionError("no training today")
        return nn.Dense(self.num_classes)(flat(x))


class RaisesKeyError(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        raise KeyError("missing")


class IntegerLogits(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(self.num_classes)(flat(x)).astype(jnp.int32)


class TwoOutputs(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        logits = nn.Dense(self.num_classes)(flat(x))
        return logits, logits


class TrainWithoutDefault(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train):
        return nn.Dense(self.num_classes)(flat(x))


def not_a_module(num_classes):
    return 42
'''


def png(path, pixels):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def shapes(folder, classes=("a", "b"), count=6, size=8):
    """A good image folder: `count` grey images of `size` per class."""
    rng = np.random.default_rng(0)
    for name in classes:
        for i in range(count):
            png(folder / name / f"{i}.png", rng.integers(0, 256, (size, size), dtype=np.uint8))
    return folder


def write_image_folders(root):
    shapes(root / "dangling")
    os.symlink("nowhere.png", root / "dangling" / "a" / "zz.png")
    shapes(root / "looping")
    os.symlink("zz.png", root / "looping" / "a" / "zz.png")
    shapes(root / "fifo")
    os.mkfifo(root / "fifo" / "a" / "zz.png")
    shapes(root / "one_class", classes=("a",))
    (root / "no_images" / "a").mkdir(parents=True)
    (root / "no_images" / "b").mkdir()
    shapes(root / "mixed")
    png(root / "mixed" / "b" / "big.png", np.zeros((12, 12), np.uint8))
    shapes(root / "train_only" / "train")
    shapes(root / "corrupt")
    (root / "corrupt" / "b" / "bad.png").write_bytes(b"\x89PNG not really")
    shapes(root / "extra_test_class" / "train")
    shapes(root / "extra_test_class" / "test", classes=("a", "b", "c"))


def write_npz_files(root):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 8, 8), dtype=np.uint8)
    labels = np.arange(20) % 2
    save = lambda name, **arrays: np.savez(root / f"{name}.npz", **arrays)  # noqa: E731
    save("complex", images=images.astype(np.complex64), labels=labels)
    save("huge_label", images=images, labels=np.where(labels == 1, 1_000_000, 0))
    save("no_labels", images=images)
    save("negative_label", images=images, labels=labels - 1)
    save("float_labels", images=images, labels=labels + 0.5)
    save("one_hot", images=images, labels=np.eye(2)[labels])
    save("channels_first", images=images[:, None].repeat(3, 1), labels=labels)
    save("length_mismatch", images=images, labels=labels[:15])
    save("negative_pixels", images=images.astype(np.float32) - 128, labels=labels)
    save("nan_pixels", images=np.where(images > 100, np.nan, images.astype(np.float32)), labels=labels)
    save("int_class_names", images=images, labels=labels, class_names=np.array([1, 2]))
    save("label_over_names", images=images, labels=labels * 2, class_names=np.array(["a", "b"]))
    save("one_class", images=images, labels=labels * 0)
    save("test_images_alone", images=images, labels=labels, test_images=images)
    save("bool_pixels", images=images > 100, labels=labels)
    save("test_shape_differs", images=images, labels=labels, test_images=images[:, :4], test_labels=labels)
    (root / "garbage.npz").write_bytes(b"not a zip" * 20)


def damaged_summaries(root, members_run, single_run):
    """Copies of the members run (without checkpoints) with one field of summary.json damaged."""
    summary = json.loads((members_run / "summary.json").read_text())

    def copy(name, change):
        target = shutil.copytree(members_run, root / name, ignore=shutil.ignore_patterns("checkpoints"))
        damaged = json.loads(json.dumps(summary))
        change(damaged)
        (target / "summary.json").write_text(json.dumps(damaged))

    copy("member_without_seed", lambda s: s["members"][0].pop("seed"))
    copy("member_seed_text", lambda s: s["members"][1].update(seed="one"))
    copy("member_sweep_list", lambda s: s["members"][0].update(sweep=[0.1]))
    copy("member_accuracy_text", lambda s: s["members"][0].update(test_accuracy="high"))
    copy("members_not_a_list", lambda s: s.update(members={"0": 1}))
    copy("member_not_an_object", lambda s: s["members"].__setitem__(0, 7))
    copy("aggregate_member_out_of_range", lambda s: s["aggregate"][0].update(members=[0, 99]))
    copy("aggregate_metrics_text", lambda s: s["aggregate"][0]["metrics"].update(test_accuracy="good"))
    other = shutil.copytree(single_run, root / "other_seed", ignore=shutil.ignore_patterns("checkpoints"))
    single = json.loads((other / "summary.json").read_text())
    (other / "summary.json").write_text(json.dumps({**single, "seed": 5}))
    unfinished = shutil.copytree(single_run, root / "unfinished", ignore=shutil.ignore_patterns("checkpoints"))
    (unfinished / "summary.json").unlink()


def damaged_certificates(root, run):
    certificate = json.loads((run / "certificate.json").read_text())
    for name, value in {"cert_empty": {}, "cert_versions_number": {**certificate, "versions": 5},
                        "cert_short_hash": {**certificate, "params_sha256": "abc"},
                        "cert_negative_steps": {**certificate, "steps": -1},
                        "cert_no_devices": {**certificate, "device_count": 0},
                        "cert_list": [1, 2]}.items():
        target = shutil.copytree(run, root / name)
        (target / "certificate.json").write_text(json.dumps(value))


def mnist_dirs(root):
    """DATA_DIR copies whose mnist/ holds a folder, a FIFO or a dangling link at a file's path."""
    for kind in ("folder", "fifo", "dangling"):
        folder = root / f"mnist_{kind}" / "mnist"
        folder.mkdir(parents=True)
        path = folder / f"{MNIST_FILES[0]}.gz"
        {"folder": path.mkdir, "fifo": lambda: os.mkfifo(path),
         "dangling": lambda: os.symlink("nowhere.gz", path)}[kind]()
        for name in MNIST_FILES[1:]:
            (folder / f"{name}.gz").write_bytes(b"")


def read_only(root, names):
    """Makes `root/NAME` read-only: a read-only bind mount as root, else a chmod. Returns the
    undo function and why it could not be done (None: done)."""
    if os.geteuid() != 0:
        for name in names:
            (root / name).chmod(0o555)
        return lambda: [(root / name).chmod(0o755) for name in names], None
    mounted = []
    for name in names:
        for args in (["--bind", str(root / name), str(root / name)], ["-o", "remount,ro,bind", str(root / name)]):
            result = subprocess.run(["mount", *args], capture_output=True, text=True)
            if result.returncode != 0:
                return lambda: None, f"mount {' '.join(args)}: {result.stderr.strip()}"
        mounted.append(root / name)
    return lambda: [subprocess.run(["umount", str(p)], capture_output=True) for p in reversed(mounted)], None


def build_files(root):
    """Everything the table reads; returns (root, the undo of the read-only folders, why none)."""
    train_and_evaluate(load_config("digits_cnn", RUN), root / "run", quiet=True)
    train_and_evaluate(load_config("digits_cnn", RUN + ["seeds=2"]), root / "members", quiet=True)
    write_export(root / "run", out=root / "export" / "model.jaxexport")
    (root / "badnets.py").write_text(BAD_MODELS)
    write_image_folders(root)
    write_npz_files(root)
    damaged_summaries(root, root / "members", root / "run")
    damaged_certificates(root, root / "run")
    mnist_dirs(root)
    replaced = shutil.copytree(root / "run", root / "replaced_checkpoints")
    config = json.loads((replaced / "config.json").read_text())
    (replaced / "config.json").write_text(json.dumps({**config, "seed": 7}))
    (root / "a_file").write_text("not a folder\n")
    (root / "a_folder").mkdir()
    (root / "fifo.png").parent.mkdir(exist_ok=True)
    os.mkfifo(root / "fifo.png")
    os.symlink("nowhere.png", root / "dangling.png")
    png(root / "digit.png", np.zeros((8, 8), np.uint8))
    shutil.copytree(root / "run", root / "ro_run")
    (root / "ro_folder").mkdir()
    undo, why = read_only(root, ["ro_run", "ro_folder"])
    return pathlib.Path(root), undo, why

"""Grain sources read record by record: a TFDS dataset's prepared ArrayRecord files through
`tfds.data_source` (`dataset.name=tfds:NAME`), and jaxcnn's own ArrayRecord files
(`dataset.name=array_record`, written by `jaxcnn pack` or `pack_arrays`). Read lazily they decode
to the pixels the eager loaders give; 0 and 2 Grain workers train bitwise alike; a bad record
folder is one line and exit status 2.

The TFDS dataset is a builder of this file, prepared here without network or TensorFlow (its
images given as PNG bytes, which TFDS stores as they are)."""

import io
import json

import jax
import numpy as np
import pytest

from cli_run import assert_one_line_error, run_cli
from jaxcnn.config import load_config
from jaxcnn.data import array_records, load_dataset
from jaxcnn.data.tfds import TfdsReader
from jaxcnn.training.loop import train_and_evaluate

pytest.importorskip("grain", reason="dataset.input=grain needs the [grain] extra")
tfds = pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets is not installed (extra [tfds])")
Image = pytest.importorskip("PIL.Image", reason="images are encoded with Pillow")

# 3 classes of 8x8 grey images: 90 for training (81 after validation: 10 steps of 8), 24 for test.
RUN = ["model.name=mlp", "model.hidden=(16,)", "num_epochs=2", "batch_size=8", "log_every_steps=5",
       "dataset.input=grain", "augment.random_resized_crop=(0.5, 1.0)", "optimizer.name=sgd",
       "optimizer.momentum=0.9"]


def shades(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` grey 8x8 images whose brightness tells their class, and the classes."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = np.clip(rng.normal(40 + 80 * labels[:, None, None, None], 25, (n, 8, 8, 1)), 0, 255)
    return images.astype(np.uint8), labels


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0]).save(buffer, format="PNG")
    return buffer.getvalue()


class TinyShades(tfds.core.GeneratorBasedBuilder):
    """`tfds:tiny_shades`: `shades` as a TFDS dataset."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(8, 8, 1)),
                                               "label": tfds.features.ClassLabel(names=["dark", "mid", "light"])})
        return tfds.core.DatasetInfo(builder=self, features=features, supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(90, 0), "test": self._generate_examples(24, 1)}

    def _generate_examples(self, n, seed):
        for i, (pixels, label) in enumerate(zip(*shades(n, seed))):
            yield i, {"image": png(pixels), "label": int(label)}


@pytest.fixture(scope="module")
def tfds_root(tmp_path_factory):
    """A data directory with tiny_shades prepared in DATA/tfds/ (ArrayRecord), as `--download` would."""
    root = tmp_path_factory.mktemp("data")
    TinyShades(data_dir=str(root / "tfds"), file_format="array_record").download_and_prepare()
    return root


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """`shades` written by `pack_arrays` as jaxcnn's ArrayRecord files."""
    out = tmp_path_factory.mktemp("records") / "shades"
    (x_train, y_train), (x_test, y_test) = shades(90, 0), shades(24, 1)
    assert array_records.pack_arrays(out, x_train, y_train, x_test, y_test, ["dark", "mid", "light"]) == {
        "train": 90, "test": 24}
    return out


def params(workdir):
    from jaxcnn.commands.saved import load_saved_model

    return [np.asarray(x).tobytes() for x in jax.tree.leaves(load_saved_model(workdir, "latest").state.params)]


def trained_with_0_and_2_workers(tmp_path, overrides, data_dir=None):
    runs = []
    for workers in (0, 2):
        config = load_config("digits_cnn", RUN + overrides + [f"dataset.workers={workers}"])
        summary = train_and_evaluate(config, tmp_path / f"w{workers}", data_dir=data_dir, quiet=True)
        assert summary["input"] == "grain" and summary["steps"] == 20
        runs.append((summary["test_loss"], params(tmp_path / f"w{workers}")))
    return runs


def test_a_prepared_tfds_dataset_is_read_through_its_data_source_as_the_eager_cache_decodes_it(tfds_root):
    lazy = load_dataset("tfds:tiny_shades", data_dir=tfds_root, lazy=True, val_fraction=0.1)
    assert isinstance(lazy.train.images, array_records.RecordImages)
    assert isinstance(lazy.train.images.reader, TfdsReader) and lazy.train.images.shape == (81, 8, 8, 1)
    cache = tfds_root / "tfds" / "jaxcnn_cache" / "tiny_shades"
    assert sorted(p.name.split("-")[0] for p in cache.rglob("*.npy")) == ["test", "train"]  # labels only
    assert not list(cache.rglob("*.images.npy"))
    eager = load_dataset("tfds:tiny_shades", data_dir=tfds_root, val_fraction=0.1)  # decodes into the .npy cache
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(np.asarray(getattr(lazy, split).images), getattr(eager, split).images)
        np.testing.assert_array_equal(getattr(lazy, split).labels, getattr(eager, split).labels)
    assert lazy.class_names == ("dark", "mid", "light")


def test_a_tfds_dataset_read_by_0_and_2_grain_workers_trains_bitwise_alike(tfds_root, tmp_path):
    (loss0, params0), (loss2, params2) = trained_with_0_and_2_workers(
        tmp_path, ["dataset.name=tfds:tiny_shades"], data_dir=str(tfds_root))
    assert np.isfinite(loss0) and loss0 == loss2 and params0 == params2


def test_array_record_files_read_by_0_and_2_grain_workers_train_bitwise_alike(packed, tmp_path):
    (loss0, params0), (loss2, params2) = trained_with_0_and_2_workers(
        tmp_path, ["dataset.name=array_record", f"dataset.path={packed}"])
    assert np.isfinite(loss0) and loss0 == loss2 and params0 == params2


def test_array_record_files_decode_to_the_packed_arrays_lazily_and_eagerly(packed):
    (x_train, y_train), (x_test, y_test) = shades(90, 0), shades(24, 1)
    for lazy in (True, False):
        dataset = load_dataset("array_record", path=str(packed), val_fraction=0.0, lazy=lazy)
        assert isinstance(dataset.train.images, array_records.RecordImages) == lazy
        np.testing.assert_array_equal(np.asarray(dataset.train.images), x_train)
        np.testing.assert_array_equal(np.asarray(dataset.test.images), x_test)
        assert dataset.train.labels.tolist() == y_train.tolist() and dataset.test.labels.tolist() == y_test.tolist()


def test_jaxcnn_pack_writes_an_image_folder_that_reads_back_as_the_folder_does(tmp_path, capsys):
    folder, rng = tmp_path / "folder", np.random.default_rng(0)
    for c in ("cat", "dog"):
        (folder / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), np.uint8)).save(folder / c / f"{i}.jpg", quality=90)
    code, out, err = run_cli(capsys, "pack", folder, tmp_path / "packed", "--image-size", "12,12")
    assert code == 0 and out.strip() == f"wrote 16 training and 4 test records to {tmp_path / 'packed'}", err
    assert json.loads((tmp_path / "packed" / "meta.json").read_text())["image_shape"] == [12, 12, 3]
    records = load_dataset("array_record", path=str(tmp_path / "packed"), lazy=True, val_fraction=0.25)
    images = load_dataset("image_folder", path=str(folder), image_size=(12, 12), val_fraction=0.25)
    assert records.class_names == images.class_names == ("cat", "dog")
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(np.asarray(getattr(records, split).images), getattr(images, split).images)
        np.testing.assert_array_equal(getattr(records, split).labels, getattr(images, split).labels)


def _break(folder, case):
    if case == "no-meta":
        (folder / "meta.json").unlink()
    elif case == "other-meta":
        (folder / "meta.json").write_text(json.dumps({"format": "something else"}))
    elif case == "no-test-records":
        (folder / "test.array_record").unlink()
    elif case == "not-array-record":
        (folder / "train.array_record").write_bytes(b"not an ArrayRecord file" * 100)
    elif case == "not-our-records":
        from array_record.python.array_record_module import ArrayRecordWriter

        writer = ArrayRecordWriter(str(folder / "train.array_record"), "group_size:1")
        for _ in range(90):
            writer.write(b"a record of someone else's format")
        writer.close()
    elif case == "labels-mismatch":
        np.save(folder / "train.labels.npy", np.zeros(89, np.int32))


@pytest.mark.parametrize("case, fragment", [
    ("no-meta", "meta.json does not exist; dataset.name=array_record needs a folder with meta.json"),
    ("other-meta", 'meta.json: expected {"format": "jaxcnn-array-record", "version": 1'),
    ("no-test-records", "test.array_record does not exist; write it with `jaxcnn pack IMAGE_FOLDER DIR`"),
    ("not-array-record", "train.array_record: cannot be read as an ArrayRecord file"),
    ("not-our-records", "train.array_record: record 0: not a jaxcnn image record (expected b'JXR1'"),
    ("labels-mismatch", "train.array_record: holds 90 records but train.labels.npy has 89 labels"),
])
def test_a_bad_array_record_folder_is_one_line(packed, tmp_path, capsys, case, fragment):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(packed, folder)
    _break(folder, case)
    result = run_cli(capsys, "train", "--workdir", tmp_path / "w", "--quiet", "--config.dataset.name=array_record",
                     f"--config.dataset.path={folder}", "--config.dataset.input=grain", "--config.model.name=mlp")
    assert_one_line_error(result, fragment)


def test_a_damaged_record_read_by_a_grain_worker_is_one_line_naming_it(packed, tmp_path, capsys):
    """Record 7's image cut short: found by the worker that decodes it, after training began."""
    import shutil

    from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

    folder = tmp_path / "damaged"
    shutil.copytree(packed, folder)
    reader = ArrayRecordReader(str(folder / "train.array_record"))
    kept = reader.read(list(range(90)))
    reader.close()
    writer = ArrayRecordWriter(str(folder / "train.array_record"), "group_size:1")
    for i, record in enumerate(kept):
        writer.write(record[:20] if i == 7 else record)
    writer.close()
    result = run_cli(capsys, "train", "--workdir", tmp_path / "w", "--quiet", "--config.dataset.name=array_record",
                     f"--config.dataset.path={folder}", "--config.dataset.input=grain", "--config.dataset.workers=2",
                     "--config.model.name=mlp", "--config.dataset.val_fraction=0")
    assert_one_line_error(result, f"{folder / 'train.array_record'}: record 7: cannot be read as an image "
                                  "(UnidentifiedImageError: cannot identify image file its bytes)")

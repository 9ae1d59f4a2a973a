"""`dataset.name=image_folder`: class subfolders of image files, decoded once into a memory-mapped cache."""

import time

import numpy as np
import pytest
from PIL import Image

from cli_run import assert_one_line_error, run_cli
from jaxcnn.config import load_config
from jaxcnn.data import image_folder, load_dataset
from jaxcnn.errors import JaxcnnError
from jaxcnn.training.loop import train_and_evaluate

CLASSES = ("bottom_left", "top_left", "top_right")  # sorted, as the class names come out


def quadrant_image(label: int, rng: np.random.Generator, size: int = 16, rgb: bool = False) -> Image.Image:
    """Dark noise with one bright quadrant per class: an easy task."""
    pixels = rng.integers(0, 80, (size, size), dtype=np.uint8)
    half = size // 2
    row, col = [(1, 0), (0, 0), (0, 1)][label]
    pixels[row * half:(row + 1) * half, col * half:(col + 1) * half] += 170
    return Image.fromarray(np.stack([pixels] * 3, -1) if rgb else pixels)


def make_folder(root, per_class=40, size=16, seed=0, suffix=".png"):
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            quadrant_image(label, rng, size).save(root / name / f"{i:03d}{suffix}")
    return root


def write_truncated(root):
    good = (root / CLASSES[1] / "000.png").read_bytes()
    (root / CLASSES[1] / "truncated.png").write_bytes(good[:len(good) - 30])


def load(root, **options):
    return load_dataset("image_folder", val_fraction=0.0, path=str(root), **options)


def test_three_classes_of_generated_pngs_train_to_95_percent_and_the_second_run_loads_from_the_cache(
        tmp_path, monkeypatch):
    root = make_folder(tmp_path / "shapes")
    config = load_config("digits_cnn", ["dataset.name=image_folder", f"dataset.path={root}", "model.name=mlp",
                                        "model.hidden=(32,)", "num_epochs=5", "batch_size=16",
                                        "schedule.name=constant", "checkpoint.enabled=false"])
    start = time.perf_counter()
    summary = train_and_evaluate(config, tmp_path / "run", quiet=True)
    assert summary["test_accuracy"] >= 0.95 and summary["test_examples"] == 24  # 20% of 3 x 40
    assert summary["class_names"] == list(CLASSES)
    print(f"first run (decodes 120 PNGs): {time.perf_counter() - start:.2f} s")

    def no_decoding(*args):
        raise AssertionError("decoded again although the cache is current")

    monkeypatch.setattr(image_folder, "decode_into", no_decoding)
    start = time.perf_counter()
    dataset = load_dataset("image_folder", path=str(root))
    print(f"second load (from the cache): {time.perf_counter() - start:.3f} s")
    assert dataset.input_shape == (16, 16, 1) and len(dataset.test) == 24


def test_the_cache_is_rebuilt_when_a_file_changes_and_the_old_one_removed(tmp_path):
    root = make_folder(tmp_path / "shapes", per_class=5)
    caches = lambda: sorted(p.name for p in (root / image_folder.CACHE_DIR).iterdir())
    first = load(root)
    load(root, image_size=(8, 8))  # a second size: a cache of its own
    before = caches()
    assert len(before) == 2
    quadrant_image(0, np.random.default_rng(9)).save(root / CLASSES[0] / "new.png")
    second = load(root)
    assert len(first.train) + len(first.test) == 15 and len(second.train) + len(second.test) == 16
    after = caches()
    native, resized = (next(name for name in before if name.startswith(tag)) for tag in ("native-", "8x8-"))
    assert len(after) == 2 and native not in after and resized in after  # the native-size one replaced


def test_train_and_test_subfolders_are_the_splits_and_one_rgb_image_makes_all_rgb(tmp_path):
    make_folder(tmp_path / "data" / "train", per_class=4)
    make_folder(tmp_path / "data" / "test", per_class=2, seed=1)
    quadrant_image(2, np.random.default_rng(5), rgb=True).save(tmp_path / "data" / "test" / CLASSES[2] / "rgb.png")
    dataset = load(tmp_path / "data", test_fraction=0.5)  # not used: the folders give the split
    assert (len(dataset.train), len(dataset.test)) == (12, 7)
    assert dataset.class_names == CLASSES and dataset.input_shape == (16, 16, 3)
    assert dataset.test.labels.tolist() == [0, 0, 1, 1, 2, 2, 2]


def test_image_size_resizes_images_of_mixed_sizes_and_formats(tmp_path):
    root = make_folder(tmp_path / "mixed", per_class=3)
    rng = np.random.default_rng(2)
    quadrant_image(1, rng, size=32).save(root / CLASSES[1] / "big.jpg")
    quadrant_image(0, rng, size=20).save(root / CLASSES[0] / "odd.bmp")
    dataset = load(root, image_size=(8, 8))
    assert dataset.input_shape == (8, 8, 1) and len(dataset.train) + len(dataset.test) == 11


def test_a_folder_that_cannot_be_written_caches_in_the_user_cache_folder(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "shapes", per_class=3)
    (root / image_folder.CACHE_DIR).write_text("in the way")  # creating the cache folder fails
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    dataset = load(root)
    assert len(dataset.train) + len(dataset.test) == 9
    assert list((tmp_path / "user-cache" / "jaxcnn" / "image_folder").rglob("images.npy"))


def test_skip_bad_images_leaves_out_unreadable_files_with_one_warning(tmp_path, capsys):
    root = make_folder(tmp_path / "shapes", per_class=5)
    (root / CLASSES[0] / "garbage.png").write_bytes(b"not an image")
    write_truncated(root)  # the header reads, the pixels do not
    for _ in range(2):  # decoding, then from the cache: the same warning
        dataset = load(root, skip_bad_images=True)
        assert len(dataset.train) + len(dataset.test) == 15
        warning = capsys.readouterr().err.strip().splitlines()
        assert len(warning) == 1 and "skipped 2 unreadable image(s)" in warning[0]
        assert f"{CLASSES[0]}/garbage.png" in warning[0]


@pytest.mark.parametrize("case", ["no images", "one class", "mixed sizes", "corrupt", "truncated", "missing",
                                  "unset", "train without test", "empty test", "bad image_size", "a file"])
def test_a_bad_image_folder_is_one_line_and_exit_2(tmp_path, capsys, case):
    root = tmp_path / "data"
    root.mkdir()
    extra, fragments = [], []
    if case == "no images":
        (root / "cats").mkdir()
        (root / "cats" / "notes.txt").write_text("no images here")
        fragments = ["has no images"]
    elif case == "one class":
        (root / "cats").mkdir()
        quadrant_image(0, np.random.default_rng(0)).save(root / "cats" / "a.png")
        fragments = ["only one class folder", "'cats'"]
    elif case == "mixed sizes":
        make_folder(root, per_class=2)
        quadrant_image(0, np.random.default_rng(0), size=12).save(root / CLASSES[2] / "small.png")
        fragments = ["different sizes", "12x12", "dataset.image_size"]
    elif case == "corrupt":
        make_folder(root, per_class=2)
        (root / CLASSES[0] / "bad.png").write_bytes(b"not an image")
        fragments = [f"{CLASSES[0]}/bad.png", "cannot be read", "skip_bad_images"]
    elif case == "truncated":
        make_folder(root, per_class=2)
        write_truncated(root)
        fragments = [f"{CLASSES[1]}/truncated.png", "cannot be read", "skip_bad_images"]
    elif case == "missing":
        root = tmp_path / "nowhere"
        fragments = ["dataset.path", "does not exist"]
    elif case == "unset":
        root = ""
        fragments = ["dataset.path: not set"]
    elif case == "train without test":
        make_folder(root / "train", per_class=2)
        fragments = ["has train/ but no test/"]
    elif case == "empty test":
        make_folder(root / "train", per_class=2)
        (root / "test" / CLASSES[0]).mkdir(parents=True)
        fragments = ["the test split has no readable images"]
    elif case == "bad image_size":
        make_folder(root, per_class=2)
        extra, fragments = ["--config.dataset.image_size=(0, 8)"], ["dataset.image_size"]
    elif case == "a file":
        root = tmp_path / "x.png"
        quadrant_image(0, np.random.default_rng(0)).save(root)
        fragments = ["is not a folder"]
    result = run_cli(capsys, "train", "--workdir", tmp_path / "run", "--config.dataset.name=image_folder",
                     f"--config.dataset.path={root}", "--config.model.name=mlp", "--config.batch_size=2", *extra)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_image_folder_options_are_in_its_config_section():
    config = load_config("digits_cnn", ["dataset.name=image_folder", "dataset.image_size=(28, 28)",
                                        "dataset.skip_bad_images=true"])
    assert {k: config.dataset[k] for k in image_folder.OPTIONS} == {
        "path": "", "image_size": (28, 28), "test_fraction": 0.2, "skip_bad_images": True}
    with pytest.raises(JaxcnnError, match="dataset.test_fraction"):
        load_dataset("image_folder", path="x", test_fraction=1.5)

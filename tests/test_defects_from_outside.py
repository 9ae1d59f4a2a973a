"""The defects a harness written outside the project found (issue 22) that the table of
tests/test_bad_inputs_surfaces.py does not show as one bad input: own data trained without a data
directory, 16-bit images, left-out links and FIFOs, the coordinator probe, a damaged checkpoint's
message. Each test failed before its fix."""

import os
import socket

import numpy as np
import pytest

from jaxcnn import cli
from jaxcnn.commands import saved
from jaxcnn.data import arrays, image_folder, images
from jaxcnn.runtime.distributed import wait_for_coordinator
from jaxcnn.errors import JaxcnnError

Image = pytest.importorskip("PIL.Image", reason="images are read with Pillow")


def shapes(folder, count=6):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / name / f"{i}.png")
    return folder


def test_own_images_and_arrays_train_with_no_data_directory_anywhere(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("JAXCNN_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    shapes(tmp_path / "shapes")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "mine.npz", images=rng.integers(0, 256, (80, 8, 8), dtype=np.uint8), labels=np.arange(80) % 2)
    common = ["--config.model.name=mlp", "--config.max_steps=2", "--config.batch_size=4", "--quiet"]
    assert cli.main(["train", "--config.dataset.name=image_folder", "--config.dataset.path=shapes",
                     "--workdir", "runs/s", *common]) == 0, capsys.readouterr().err
    assert cli.main(["train", "--config.dataset.name=arrays", "--config.dataset.path=mine.npz",
                     "--workdir", "runs/a", *common]) == 0, capsys.readouterr().err
    assert cli.main(["eval", "--workdir", "runs/s"]) == 0, capsys.readouterr().err


def test_a_16_bit_png_is_rescaled_by_257_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], np.uint16)  # 0, 1, 128, 255 in 8 bits
    Image.fromarray(values).save(tmp_path / "sixteen.png")
    with Image.open(tmp_path / "sixteen.png") as opened:
        assert opened.mode.startswith("I")
    pixels = images.load_image(tmp_path / "sixteen.png", (1, 4, 1))
    assert pixels[0, :, 0].tolist() == [0, 1, 128, 255]


def test_an_image_folder_of_16_bit_pngs_keeps_their_contrast(tmp_path):
    dark, bright = np.full((8, 8), 5000, np.uint16), np.full((8, 8), 60000, np.uint16)
    for name, value in (("a", dark), ("b", bright)):
        for i in range(5):
            (tmp_path / name).mkdir(exist_ok=True)
            Image.fromarray(value).save(tmp_path / name / f"{i}.png")
    train, test, _ = image_folder.load_image_folder(0, str(tmp_path))
    found = set(np.concatenate([train.images, test.images]).reshape(-1).tolist())
    assert found == {round(5000 / 257), round(60000 / 257)}


def test_links_and_fifos_are_left_out_with_skip_bad_images_and_counted(tmp_path, capsys):
    shapes(tmp_path)
    os.symlink("nowhere.png", tmp_path / "a" / "x.png")
    os.symlink("y.png", tmp_path / "a" / "y.png")
    os.mkfifo(tmp_path / "b" / "z.png")
    train, test, _ = image_folder.load_image_folder(0, str(tmp_path), skip_bad_images=True)
    assert len(train) + len(test) == 12
    assert "skipped 3 unreadable image(s)" in capsys.readouterr().err


def test_a_failed_decoding_leaves_no_cache_folder_behind(tmp_path):
    shapes(tmp_path)
    os.mkfifo(tmp_path / "b" / "z.png")
    with pytest.raises(JaxcnnError, match="is a FIFO"):
        image_folder.load_image_folder(0, str(tmp_path))
    assert not (tmp_path / image_folder.CACHE_DIR).exists()


def test_labels_with_gaps_are_accepted_when_class_names_declare_the_classes():
    x = np.zeros((10, 4, 4), np.uint8)
    y = np.array([0, 2] * 5)
    with pytest.raises(JaxcnnError, match="1 of them without any example"):
        arrays.dataset_arrays(x, y)
    _, _, names = arrays.dataset_arrays(x, y, class_names=["a", "b", "c"])
    assert names == ("a", "b", "c")


def test_the_coordinator_probe_returns_once_the_port_listens_and_fails_in_one_line_otherwise():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        wait_for_coordinator("127.0.0.1", listening.getsockname()[1], 2)
        port = listening.getsockname()[1]
    with pytest.raises(JaxcnnError, match=f"127.0.0.1:{port} could not be reached within 1 s"):
        wait_for_coordinator("127.0.0.1", port, 1)


def test_a_damaged_checkpoints_many_line_message_becomes_one_line(tmp_path):
    def fails(*args):
        raise ValueError("Orbax says\n  line two\n  line three\n  line four")

    with pytest.raises(JaxcnnError) as info:
        saved._read(fails, None, 3, tmp_path)
    assert "\n" not in str(info.value) and "Orbax says line two line three line four" in str(info.value)

"""On-device augmentation: deterministic per (seed, step), different between steps, off in eval."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.core import build
from jaxcnn.training import loop
from jaxcnn.core.augment import AugmentConfig, augment_config, cutout, make_augment, random_crop, random_flip, step_key
from jaxcnn.config import load_config
from jaxcnn.errors import JaxcnnError

ALL = AugmentConfig(crop_padding=4, flip=True, cutout=8)


def images(batch: int = 16, size: int = 32, channels: int = 3) -> jax.Array:
    return jax.random.normal(jax.random.PRNGKey(42), (batch, size, size, channels))


def test_same_key_gives_the_same_augmentation():
    augment = jax.jit(make_augment(ALL))
    key = step_key(jax.random.PRNGKey(0), jnp.int32(7))
    np.testing.assert_array_equal(augment(images(), key), augment(images(), step_key(jax.random.PRNGKey(0), 7)))


def test_consecutive_steps_augment_differently():
    augment = jax.jit(make_augment(ALL))
    rng = jax.random.PRNGKey(0)
    a, b = augment(images(), step_key(rng, 1)), augment(images(), step_key(rng, 2))
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, images())


def test_random_crop_is_a_shifted_window_of_the_zero_padded_image():
    x = images(batch=64, size=8)
    out = np.asarray(random_crop(x, jax.random.PRNGKey(3), padding=2))
    padded = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)))
    windows = {(dy, dx) for dy in range(5) for dx in range(5)}
    found = []
    for i in range(64):
        matches = [(dy, dx) for dy, dx in windows if np.array_equal(padded[i, dy:dy + 8, dx:dx + 8], out[i])]
        assert matches, f"image {i} is not a crop of its padded image"
        found.append(matches[0])
    assert len(set(found)) > 5  # offsets vary across the batch


def test_random_flip_mirrors_about_half_the_images():
    x = images(batch=200, size=4)
    out = np.asarray(random_flip(x, jax.random.PRNGKey(5)))
    flipped = [np.array_equal(out[i], np.asarray(x)[i, :, ::-1]) for i in range(200)]
    kept = [np.array_equal(out[i], np.asarray(x)[i]) for i in range(200)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 70 < sum(flipped) < 130


def test_cutout_zeroes_one_square_per_image():
    x = jnp.ones((32, 16, 16, 3))
    out = np.asarray(cutout(x, jax.random.PRNGKey(1), size=4))
    zeroed = (out == 0).all(axis=-1).sum(axis=(1, 2))
    assert zeroed.max() == 16 and zeroed.min() >= 4  # a full 4x4 square, or one clipped by a border
    assert ((out == 0) | (out == 1)).all()


def test_nothing_enabled_means_no_augmentation_function():
    assert make_augment(AugmentConfig()) is None


@pytest.mark.parametrize("key, value", [("crop_padding", -1), ("cutout", 1.5), ("flip", 1)])
def test_bad_augment_values_name_the_key(key, value):
    section = {"crop_padding": 0, "flip": False, "cutout": 0, key: value}
    with pytest.raises(JaxcnnError, match=f"augment.{key} must be"):
        augment_config(section)


# Also used by test_host.py, whose bitwise host-vs-device comparison runs with augmentation on.
SYNTHETIC = ["dataset.name=synthetic", "dataset.image_shape=(8, 8, 3)", "dataset.num_train=256",
             "dataset.num_test=64", "model.name=mlp", "model.hidden=(16,)", "num_epochs=2", "batch_size=32",
             "eval_batch_size=50", "log_every_steps=4", "schedule.name=constant"]
AUGMENTED = SYNTHETIC + ["augment.crop_padding=2", "augment.flip=true", "augment.cutout=3"]


def test_augmentation_runs_in_training_steps_only(tmp_path, monkeypatch):
    traced_batch_sizes = []

    def recording_make_augment(config):
        augment = make_augment(config)

        def record(images, key):
            traced_batch_sizes.append(images.shape[0])
            return augment(images, key)
        return record

    monkeypatch.setattr(build, "make_augment", recording_make_augment)
    loop.train_and_evaluate(load_config("digits_cnn", AUGMENTED), tmp_path / "w", quiet=True)
    assert traced_batch_sizes == [32]  # traced once, in the train step; never with the eval batch of 50

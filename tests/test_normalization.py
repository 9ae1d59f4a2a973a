"""Per-channel normalisation: the statistics, their checks, and their use on the device."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.config import load_config
from jaxcnn.data import Split
from jaxcnn.data.device import normalize
from jaxcnn.data.normalization import channel_stats, check_mean_std, mean_std_for, record_mean_std
from jaxcnn.errors import JaxcnnError


def test_channel_stats_match_numpy_across_chunks():
    images = np.random.default_rng(0).integers(0, 256, (5000, 2, 2, 3), dtype=np.uint8)  # > one 4096 chunk
    mean, std = channel_stats(images)
    scaled = images / 255.0
    np.testing.assert_allclose(mean, scaled.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(std, scaled.std(axis=(0, 1, 2)), rtol=1e-9)


def test_normalize_applies_one_value_per_channel():
    images = np.array([[[[255, 0, 51]]]], np.uint8)
    out = np.asarray(normalize(jnp.asarray(images), (0.5, 0.0, 0.1), (0.5, 1.0, 0.2)))
    np.testing.assert_allclose(out[0, 0, 0], [1.0, 0.0, 0.5], rtol=1e-6)


@pytest.mark.parametrize("mean, std, message", [
    (0.0, 0.0, "dataset.std must be a positive number"),
    ((0.1, 0.2), 1.0, "dataset.mean must be a number or a tuple of 3 numbers"),
    (0.0, (1.0, -1.0, 1.0), "dataset.std must be a positive number or a tuple of 3 positive numbers"),
    ("auto", 1.0, "dataset.mean must be"),
])
def test_bad_mean_or_std_names_the_key(mean, std, message):
    with pytest.raises(JaxcnnError, match=message):
        check_mean_std(mean, std, channels=3)


def test_per_channel_stats_come_from_the_training_split_and_are_recorded_in_a_copy():
    config = load_config("digits_cnn", ["dataset.per_channel_stats=true"])
    images = np.zeros((4, 1, 1, 2), np.uint8)
    images[:2, ..., 0] = 255
    images[0, ..., 1] = 255
    mean, std = mean_std_for(config.dataset, Split(images, np.zeros(4, np.int32)))
    assert mean == (0.5, 0.25) and std == pytest.approx((0.5, 0.4330127))
    recorded = record_mean_std(config, mean, std)
    assert recorded.dataset.mean == (0.5, 0.25) and config.dataset.mean == 0.0


def test_a_constant_channel_cannot_be_standardised():
    config = load_config("digits_cnn", ["dataset.per_channel_stats=true"])
    with pytest.raises(JaxcnnError, match="channel 0 is constant"):
        mean_std_for(config.dataset, Split(np.full((3, 2, 2, 1), 7, np.uint8), np.zeros(3, np.int32)))


def test_configured_per_channel_values_must_match_the_channels():
    config = load_config("digits_cnn")
    with config.unlocked():
        config.dataset.mean = (0.1, 0.2, 0.3)
    with pytest.raises(JaxcnnError, match="tuple of 1 numbers"):
        mean_std_for(config.dataset, Split(np.zeros((2, 8, 8, 1), np.uint8), np.zeros(2, np.int32)))

"""Pixel normalisation `(x / 255 - mean) / std`: one value for all channels, or one per channel.

With `dataset.per_channel_stats`, mean and std are measured on the training split (after the
validation split is carved out) and written into the run's `config.json` as `dataset.mean` /
`dataset.std`, so evaluation and prediction read the same numbers instead of recomputing them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from jaxcnn.data.splits import Split
from jaxcnn.errors import JaxcnnError
from jaxcnn.spec import stat

Stat = float | tuple[float, ...]
_CHUNK = 4096  # images per pass: bounds the float64 copy for memory-mapped datasets


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 `images` (N, H, W, C) scaled to [0, 1]."""
    total = np.zeros(images.shape[-1])
    squares = np.zeros(images.shape[-1])
    for start in range(0, len(images), _CHUNK):
        chunk = np.asarray(images[start:start + _CHUNK], np.float64) / 255.0
        total += chunk.sum(axis=(0, 1, 2))
        squares += np.square(chunk).sum(axis=(0, 1, 2))
    count = images.size / images.shape[-1]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def check_mean_std(mean: object, std: object, channels: int | None = None) -> tuple[Stat, Stat]:
    """`mean` and `std` as floats or tuples of floats, after checking them; `channels` (when known)
    is the number of values a per-channel tuple must have."""
    return stat("dataset.mean", mean, False, channels), stat("dataset.std", std, True, channels)


def mean_std_for(section: Mapping[str, Any], train: Split) -> tuple[Stat, Stat]:
    """The run's mean and std: measured on `train` when `section.per_channel_stats`, else the
    configured ones (checked against the number of channels)."""
    if section["per_channel_stats"]:
        mean, std = channel_stats(train.images)
        flat = [c for c, s in enumerate(std) if s == 0]
        if flat:
            raise JaxcnnError(f"dataset.per_channel_stats: channel {flat[0]} is constant over the training "
                              "split (std 0); set dataset.per_channel_stats=false and give dataset.mean/std")
        return mean, std
    return check_mean_std(section["mean"], section["std"], train.images.shape[-1])


def record_mean_std(config: ml_collections.ConfigDict, mean: Stat, std: Stat) -> ml_collections.ConfigDict:
    """A copy of `config` whose `dataset.mean` / `dataset.std` are the values the run uses."""
    config = copy.deepcopy(config)
    config.dataset.mean, config.dataset.std = mean, std
    return config

"""A seeded synthetic dataset: each class is a fixed random template plus per-example noise.

The noise is small next to the differences between templates, so any model can fit it quickly:
that is what tests and smoke runs need.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxcnn.data.splits import Split
from jaxcnn.errors import JaxcnnError
from jaxcnn.spec import is_int

DEFAULTS = {"image_shape": (28, 28, 1), "num_classes": 10, "num_train": 1024, "num_test": 256}
OPTIONS = tuple(DEFAULTS)
NOISE_STD = 48.0
CHUNK = 4096  # examples drawn at a time


def load_synthetic(seed: int, image_shape: Sequence[int] = (28, 28, 1), num_classes: int = 10,
                   num_train: int = 1024, num_test: int = 256) -> tuple[Split, Split, tuple[str, ...]]:
    """(train, test, class_names), all drawn from `np.random.default_rng(seed)`; classes are balanced."""
    shape = check_image_shape(image_shape)
    for key, value in (("num_classes", num_classes), ("num_train", num_train), ("num_test", num_test)):
        _check_positive_int(key, value)
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, (num_classes, *shape))

    def sample(n: int) -> Split:
        labels = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
        images = np.empty((n, *shape), np.uint8)
        for start in range(0, n, CHUNK):  # the same draws as one call, without n float64 images at once
            rows = labels[start:start + CHUNK]
            pixels = templates[rows] + rng.normal(0, NOISE_STD, (len(rows), *shape))
            images[start:start + CHUNK] = np.clip(np.rint(pixels), 0, 255)
        return Split(images, labels)

    train = sample(num_train)
    return train, sample(num_test), tuple(str(c) for c in range(num_classes))


def _check_positive_int(key: str, value: object) -> None:
    if not is_int(value) or value <= 0:
        raise JaxcnnError(f"dataset.{key}: expected a positive integer, got {value!r}; set e.g. dataset.{key}=10")


def check_num_classes(value: object) -> int:
    _check_positive_int("num_classes", value)
    return int(value)


def check_image_shape(value: object) -> tuple[int, int, int]:
    ok = (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 3
          and all(is_int(v) and v > 0 for v in value))
    if not ok:
        raise JaxcnnError(
            f"dataset.image_shape: expected 3 positive integers (height, width, channels), got {value!r}; "
            "set e.g. dataset.image_shape=(28, 28, 1)")
    return tuple(int(v) for v in value)

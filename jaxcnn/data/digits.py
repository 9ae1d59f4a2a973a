"""scikit-learn's bundled 8x8 digits (1,797 images; no download)."""

from __future__ import annotations

import numpy as np

from jaxcnn.data.splits import Split, stratified_holdout

CLASS_NAMES = tuple(str(d) for d in range(10))
IMAGE_SHAPE = (8, 8, 1)
TEST_FRACTION = 0.2
# Fixed, not the run seed: every run must be scored on the same test split.
TEST_SEED = 0


def load_digits() -> tuple[Split, Split, tuple[str, ...]]:
    """(train, test, class_names): a fixed stratified 20% test split, the rest train.

    Pixel values 0..16 are scaled to uint8 0..255 as round(v * 255 / 16).
    """
    from sklearn.datasets import load_digits as sklearn_load_digits  # lazy: importing sklearn takes ~1 s

    bunch = sklearn_load_digits()
    everything = Split(
        np.rint(bunch.images * 255 / 16).astype(np.uint8)[..., None],
        bunch.target.astype(np.int32),
    )
    train_idx, test_idx = stratified_holdout(everything.labels, TEST_FRACTION, TEST_SEED)
    return everything.take(train_idx), everything.take(test_idx), CLASS_NAMES

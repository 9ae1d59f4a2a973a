"""The `Split` container and the seeded ways of carving one split out of another."""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from jaxcnn.errors import JaxcnnError


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class Split:
    """One split of a dataset: `images` uint8 (N, H, W, C) and `labels` int32 (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"Split.images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}")
        if self.labels.dtype != np.int32 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"Split.labels must be int32 ({len(self.images)},), got {self.labels.dtype} {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> Split:
        """The examples at `indices`, as a new split (copies)."""
        return Split(self.images[indices], self.labels[indices])


def check_val_fraction(val_fraction: float) -> None:
    """Raise unless `val_fraction` is a number in [0, 1)."""
    ok = isinstance(val_fraction, numbers.Real) and not isinstance(val_fraction, bool)
    if not (ok and math.isfinite(val_fraction) and 0 <= val_fraction < 1):
        raise JaxcnnError(
            f"dataset.val_fraction: expected a number in [0, 1), got {val_fraction!r}; "
            "use e.g. 0.1 (0 means no validation split)")


def train_val_split(split: Split, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """Carve a random validation split (a `val_fraction` share, seeded by `seed`) out of `split`.

    Both parts keep the original example order; at least one example always stays in train.
    With no validation examples, `split` itself is the train part (no copy: it may be memory-mapped).
    """
    check_val_fraction(val_fraction)
    train, val = train_val_indices(len(split), val_fraction, seed)
    if len(val) == 0:
        return split, split.take(val)
    return split.take(train), split.take(val)


def train_val_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted int32 indices (train, validation) of `train_val_split` for a split of `n` examples:
    the same examples, as indices (several seeds' splits of one pool cost only these arrays)."""
    n_val = min(round(n * val_fraction), max(n - 1, 0))
    if n_val == 0:
        return np.arange(n, dtype=np.int32), np.arange(0, dtype=np.int32)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]).astype(np.int32), np.sort(order[:n_val]).astype(np.int32)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices (kept, held out): `fraction` of each class held out, chosen by `seed`."""
    rng = np.random.default_rng(seed)
    held = [
        rng.permutation(members)[: round(len(members) * fraction)]
        for members in (np.flatnonzero(labels == c) for c in np.unique(labels))
    ]
    held_out = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(labels)), held_out), held_out

"""MNIST and Fashion-MNIST from the canonical IDX files under the data directory."""

from __future__ import annotations

from pathlib import Path

from jaxcnn.data.idx import load_idx_dataset
from jaxcnn.data.splits import Split

IMAGE_SHAPE = (28, 28, 1)  # both datasets
MNIST_CLASS_NAMES = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def load_mnist(root: Path) -> tuple[Split, Split, tuple[str, ...]]:
    """(train, test, class_names) from `root/mnist/`."""
    return *load_idx_dataset(root / "mnist"), MNIST_CLASS_NAMES


def load_fashion_mnist(root: Path) -> tuple[Split, Split, tuple[str, ...]]:
    """(train, test, class_names) from `root/fashion_mnist/`."""
    return *load_idx_dataset(root / "fashion_mnist"), FASHION_MNIST_CLASS_NAMES

"""The Flax-example CNN on Fashion-MNIST, with early stopping on the validation loss.

A mirror of the preset jaxcnn/configs/fashion_mnist_cnn.py, where its notes are; `--config fashion_mnist_cnn` is the same.
"""

from jaxcnn.configs.fashion_mnist_cnn import get_config  # noqa: F401

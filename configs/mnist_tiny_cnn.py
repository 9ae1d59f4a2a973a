"""The NumPy-tutorial CNN of the course notes: Conv 3x3x8 VALID -> max-pool 2 -> Dense 10.

A mirror of the preset jaxcnn/configs/mnist_tiny_cnn.py, where its notes are; `--config mnist_tiny_cnn` is the same.
"""

from jaxcnn.configs.mnist_tiny_cnn import get_config  # noqa: F401

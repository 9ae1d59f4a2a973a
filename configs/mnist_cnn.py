"""The Flax-example CNN on MNIST: Conv32-ReLU-AvgPool, Conv64-ReLU-AvgPool, Dense 256 ReLU, Dense 10.

A mirror of the preset jaxcnn/configs/mnist_cnn.py, where its notes are; `--config mnist_cnn` is the same.
"""

from jaxcnn.configs.mnist_cnn import get_config  # noqa: F401

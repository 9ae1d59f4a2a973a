"""MNIST to 99% test accuracy in seconds: a small CNN with BatchNorm, two epochs, one-cycle SGD.

A mirror of the preset jaxcnn/configs/mnist_speedrun.py, where its notes are; `--config mnist_speedrun` is the same.
"""

from jaxcnn.configs.mnist_speedrun import get_config  # noqa: F401

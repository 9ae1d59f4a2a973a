"""MNIST to 99% test accuracy in seconds: a small CNN with BatchNorm, one epoch of batches of 32, one-cycle SGD.

A mirror of the preset jaxcnn/configs/mnist_speedrun.py, where its notes are; `--config mnist_speedrun` is the same.
"""

from jaxcnn.configs.mnist_speedrun import get_config  # noqa: F401

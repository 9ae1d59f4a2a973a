"""LeNet-5 on MNIST: Conv6 5x5 - pool - Conv16 5x5 - pool - Dense 120 - Dense 84 - Dense 10.

A mirror of the preset jaxcnn/configs/mnist_lenet5.py, where its notes are; `--config mnist_lenet5` is the same.
"""

from jaxcnn.configs.mnist_lenet5 import get_config  # noqa: F401

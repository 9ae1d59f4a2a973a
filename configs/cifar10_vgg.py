"""A CIFAR-scale VGG (six 3×3 convs with BatchNorm, 64-128-256, Dense 512, 3.2M params) on CIFAR-10.

A mirror of the preset jaxcnn/configs/cifar10_vgg.py, where its notes are; `--config cifar10_vgg` is the same.
"""

from jaxcnn.configs.cifar10_vgg import get_config  # noqa: F401

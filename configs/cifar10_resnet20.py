"""ResNet-20 (He et al. 2016, 272k params) on CIFAR-10 with the paper's recipe.

A mirror of the preset jaxcnn/configs/cifar10_resnet20.py, where its notes are; `--config cifar10_resnet20` is the same.
"""

from jaxcnn.configs.cifar10_resnet20 import get_config  # noqa: F401

"""Fashion-MNIST to 92% test accuracy in seconds: mnist_speedrun's recipe, wider and a few epochs longer.

A mirror of the preset jaxcnn/configs/fashion_speedrun.py, where its notes are; `--config fashion_speedrun` is the same.
"""

from jaxcnn.configs.fashion_speedrun import get_config  # noqa: F401

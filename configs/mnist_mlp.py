"""The seed MLP of the course notes: flatten 28x28 -> Dense 512 ReLU -> Dense 10 (softmax in the loss).

A mirror of the preset jaxcnn/configs/mnist_mlp.py, where its notes are; `--config mnist_mlp` is the same.
"""

from jaxcnn.configs.mnist_mlp import get_config  # noqa: F401

"""Models: the registry (`register_model`, `create_model`, `list_models`, ...) and the built-in presets.

A preset is a family module (`MLP`, `ConvNet`, `ResNet`) registered with some defaults overridden;
its options are the family's fields, so `config.model = {"name": name, **model_defaults(name)}` lists
them all. Users' models go through the same `register_model`, or are named by import path
(`my_pkg.nets:MyNet`, see `jaxcnn.models.imported`).
"""

from typing import Any

import jax

from jaxcnn.models import cnn, resnet
from jaxcnn.models.cnn import ConvNet
from jaxcnn.models.imported import IMPORT_PATH_HINT, is_import_path
from jaxcnn.models.mlp import MLP
from jaxcnn.models.registry import (ModelEntry, create_model, default_input_shape, list_models, model_defaults,
                                    register_model)
from jaxcnn.models.resnet import ResNet

__all__ = ["IMPORT_PATH_HINT", "ConvNet", "MLP", "ModelEntry", "ResNet", "count_params", "create_model",
           "default_input_shape", "is_import_path", "list_models", "model_defaults", "register_model"]

_MNIST = (28, 28, 1)
_CIFAR = (32, 32, 3)

register_model("mlp", MLP, input_shape=_MNIST)
register_model("tiny_cnn", ConvNet, cnn.TINY_CNN, input_shape=_MNIST)
register_model("cnn", ConvNet, cnn.CNN, input_shape=_MNIST)
register_model("lenet5", ConvNet, cnn.LENET5, input_shape=_MNIST)
register_model("vgg", ConvNet, cnn.VGG, input_shape=_CIFAR)
register_model("resnet20", ResNet, resnet.RESNET20, input_shape=_CIFAR)
register_model("resnet18", ResNet, resnet.RESNET18, input_shape=_CIFAR)


def count_params(params: Any) -> int:
    """The number of scalars in a params pytree."""
    return sum(leaf.size for leaf in jax.tree.leaves(params))

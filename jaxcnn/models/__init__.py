"""Models: the registry (`register_model`, `create_model`, `list_models`, ...) and the built-in presets.

A preset is a family module (`MLP`, `ConvNet`, `ResNet`) registered with some defaults overridden;
its options are the family's fields, so `config.model = {"name": name, **model_defaults(name)}` lists
them all. Users' models go through the same `register_model`, or are named by import path
(`my_pkg.nets:MyNet`, see `jaxcnn.models.imported`).
"""

from collections.abc import Sequence
from numbers import Integral
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.errors import JaxcnnError
from jaxcnn.models import cnn, resnet
from jaxcnn.models.cnn import ConvNet
from jaxcnn.models.imported import IMPORT_PATH_HINT, is_import_path
from jaxcnn.models.mlp import MLP
from jaxcnn.models.registry import (ModelEntry, create_model, default_input_shape, list_models, model_defaults,
                                    register_model)
from jaxcnn.models.resnet import ResNet

__all__ = ["IMPORT_PATH_HINT", "ConvNet", "MLP", "ModelEntry", "ResNet", "count_params", "create_model",
           "check_input_shape", "default_input_shape", "is_import_path", "list_models", "model_defaults", "register_model"]

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


def check_input_shape(model: nn.Module, input_shape: Sequence[int]) -> None:
    """Raise one `JaxcnnError` line unless `model` can take images of `input_shape` (H, W, C).

    Every layer is traced over the shape (`jax.eval_shape` of `init`: nothing computed or
    allocated), so a kernel, dilated kernel or pool window larger than its layer's input is named
    with its layer and sizes (`layers.check_window_fits`) before any data loads or step compiles,
    whatever `conv_impl` computes the convolutions.
    """
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(v, Integral) and not isinstance(v, bool) and v > 0 for v in shape):
        raise JaxcnnError(f"invalid input shape {input_shape!r}; expected 3 positive ints (height, width, "
                          "channels)")
    x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    try:
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    except JaxcnnError as e:
        raise JaxcnnError(f"input shape {'x'.join(map(str, shape))}: {e}") from e
    except (ValueError, TypeError) as e:  # a user's model (import path) that cannot take this input
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise JaxcnnError(f"input shape {'x'.join(map(str, shape))}: the model cannot take it "
                          f"({type(e).__name__}: {first}); check the model's options against the data") from e

"""Models: the registry (`register_model`, `create_model`, `list_models`, ...) and the built-in presets.

A preset is a family module (`MLP`, `ConvNet`, `ResNet`) registered with some defaults overridden;
its options are the family's fields, so `config.model = {"name": name, **model_defaults(name)}` lists
them all. Users' models go through the same `register_model`, or are named by import path
(`my_pkg.nets:MyNet`, see `jaxcnn.models.imported`).
"""

import functools
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
from jaxcnn.models.registry import (EXPECTED_ATTRIBUTE, ModelEntry, create_model, default_input_shape, list_models,
                                    model_defaults, register_model)
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
    """Raise one `JaxcnnError` line unless `model` can take images of `input_shape` (H, W, C) and
    returns logits of shape (batch, num_classes), in evaluation and in training mode.

    Shapes only (`jax.eval_shape` of `init` and of a training `apply`: nothing computed or
    allocated), before any data loads or step compiles, so that a kernel or pool window larger than
    its layer's input (`layers.check_window_fits`), a model of the wrong output shape (which would
    fail in the loss, look like a divergence, or train silently on extra classes) or an exception
    raised inside a user's module (say only with train=True) is one line naming the model. The full
    traceback of a user's exception: `JAXCNN_TRACEBACK=1` (`jaxcnn.cli`).

    A model that passed for a shape passes again at once: a run checks its config's model first
    thing (`config.validate_config`) and its setup checks the same model once the data is loaded.
    """
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(v, Integral) and not isinstance(v, bool) and v > 0 for v in shape):
        raise JaxcnnError(f"invalid input shape {input_shape!r}; expected 3 positive ints (height, width, "
                          "channels)")
    expected = getattr(model, EXPECTED_ATTRIBUTE, None)
    if _hashable((model, expected)):
        _check_once(model, shape, expected)
    else:  # a module with a list or dict field: checked every time
        _check_model(model, shape, expected)


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


@functools.lru_cache(maxsize=8)
def _check_once(model: nn.Module, shape: tuple[int, int, int], expected: tuple | None) -> None:
    """`_check_model`, remembered when it passes (a failure raises, and is not remembered)."""
    _check_model(model, shape, expected)


def _check_model(model: nn.Module, shape: tuple[int, int, int], expected: tuple | None) -> None:
    num_classes, label, axis_name = expected or (None, f"model {type(model).__name__}", None)
    where = f"input shape {'x'.join(map(str, shape))}"
    for train in (False, True):
        try:
            output = jax.eval_shape(functools.partial(_outputs, model, train=train, axis_name=axis_name),
                                    jax.ShapeDtypeStruct((2, *shape), jnp.float32))
        except JaxcnnError as e:
            raise JaxcnnError(f"{where}: {e}") from e
        except (ValueError, TypeError) as e:  # shapes or options that do not fit this input
            raise JaxcnnError(f"{where}: the model cannot take it ({label} raised {_one_line(e)} while tracing "
                              f"with train={train}); check the model's options against the data "
                              "(JAXCNN_TRACEBACK=1 shows the traceback)") from e
        except Exception as e:  # anything else a user's module raises: one line, not a traceback
            raise JaxcnnError(f"{where}: {label} raised {_one_line(e)} while tracing with train={train}; "
                              "fix the model (JAXCNN_TRACEBACK=1 shows the traceback)") from e
        _check_output(output, num_classes, label, where, train)


def _outputs(model: nn.Module, x: jax.Array, *, train: bool, axis_name: str | None = None) -> Any:
    """The model's output as a training step (`train=True`, dropout, batch statistics) or an
    evaluation computes it: Flax's pure call convention, as in `jaxcnn.core.steps`. A model built for
    pmap (BatchNorm over `axis_name`) trains inside a mapped axis of that name: a vmap of one."""
    variables = model.init(jax.random.key(0), x[:1])
    if not train:
        return model.apply(variables, x, train=False)

    def step(x: jax.Array) -> Any:
        output, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)},
                                mutable=["batch_stats"])
        return output

    return jax.vmap(step, axis_name=axis_name)(x[None])[0] if axis_name else step(x)


def _check_output(output: Any, num_classes: int | None, label: str, where: str, train: bool) -> None:
    """One line unless `output` is one float array of shape (2, num_classes) for a batch of 2."""
    expected = f"(batch, {num_classes}) for the num_classes={num_classes} it was given" if num_classes \
        else "(batch, num_classes)"
    got = getattr(output, "shape", None)
    if got is None or not jnp.issubdtype(output.dtype, jnp.floating):
        what = type(output).__name__ if got is None else f"{output.dtype} array"
        raise JaxcnnError(f"{where}: {label} returned a {what} with train={train}; expected float logits of "
                          f"shape {expected}")
    if len(got) != 2 or got[0] != 2 or (num_classes is not None and got[1] != num_classes):
        dims = ["batch" if got and got[0] == 2 else str(d) for d in got[:1]] + [str(d) for d in got[1:]]
        shown = f"({dims[0]},)" if len(dims) == 1 else f"({', '.join(dims)})"
        raise JaxcnnError(f"{where}: {label} returned logits of shape {shown} with train={train} for a batch of "
                          f"2, expected {expected}; the model's last layer must give one logit per class "
                          "(flatten spatial outputs, use num_classes)")


def _one_line(error: BaseException) -> str:
    first = (str(error).strip().splitlines() or [""])[0][:200]
    return f"{type(error).__name__}: {first}" if first else type(error).__name__

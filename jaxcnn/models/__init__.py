"""The model registry: preset name → model family, its default options and its default input.

A preset is a family module (`MLP`, `ConvNet`, `ResNet`) with some defaults overridden; its options
are the family's fields, so `config.model = {"name": name, **model_defaults(name)}` lists them all.
"""

import dataclasses
from numbers import Integral
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxcnn.errors import JaxcnnError
from jaxcnn.models import cnn, resnet
from jaxcnn.models.cnn import ConvNet
from jaxcnn.models.mlp import MLP
from jaxcnn.models.resnet import ResNet


class _Preset(NamedTuple):
    family: type[nn.Module]
    overrides: dict[str, Any]
    input_shape: tuple[int, int, int]  # (H, W, C)


_MNIST = (28, 28, 1)
_CIFAR = (32, 32, 3)

_PRESETS: dict[str, _Preset] = {
    "mlp": _Preset(MLP, {}, _MNIST),
    "tiny_cnn": _Preset(ConvNet, cnn.TINY_CNN, _MNIST),
    "cnn": _Preset(ConvNet, cnn.CNN, _MNIST),
    "lenet5": _Preset(ConvNet, cnn.LENET5, _MNIST),
    "vgg": _Preset(ConvNet, cnn.VGG, _CIFAR),
    "resnet20": _Preset(ResNet, resnet.RESNET20, _CIFAR),
    "resnet18": _Preset(ResNet, resnet.RESNET18, _CIFAR),
}

# Module fields that are not options: set by create_model's arguments or by Flax itself.
_NOT_OPTIONS = ("num_classes", "dtype", "bn_axis_name", "parent", "name")


def list_models() -> list[str]:
    return sorted(_PRESETS)


def _preset(name: str) -> _Preset:
    if name not in _PRESETS:
        raise JaxcnnError(f"unknown model {name!r} (model.name); expected one of: {', '.join(list_models())}")
    return _PRESETS[name]


def model_defaults(name: str) -> dict[str, Any]:
    """Every option of model `name` with its default (plain ints/floats/strs/bools/tuples)."""
    preset = _preset(name)
    fields = dataclasses.fields(preset.family)
    defaults = {f.name: f.default for f in fields if f.name not in _NOT_OPTIONS}
    return {**defaults, **preset.overrides}


def default_input_shape(name: str) -> tuple[int, int, int]:
    """The (H, W, C) input the preset is designed for: MNIST-sized or CIFAR-sized."""
    return _preset(name).input_shape


def _to_tuples(value: Any) -> Any:
    """Lists (as ml_collections may give) to tuples, recursively: module fields must be hashable."""
    if isinstance(value, (list, tuple)):
        return tuple(_to_tuples(v) for v in value)
    return value


def create_model(name: str, num_classes: int, dtype: Any = jnp.float32, bn_axis_name: str | None = None,
                 **options: Any) -> nn.Module:
    """Model `name` with `num_classes` logits; `options` override its defaults (see `model_defaults`).

    `dtype` is the computation dtype (params stay float32; logits are always float32).
    `bn_axis_name` is BatchNorm's cross-device axis, set only under pmap (models without
    BatchNorm ignore it).
    """
    defaults = model_defaults(name)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise JaxcnnError(
            f"unknown option model.{unknown[0]} for model {name!r}; "
            f"expected one of: {', '.join(sorted(defaults))}"
        )
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise JaxcnnError(f"invalid number of classes {num_classes!r}; expected an int >= 1")
    merged = {k: _to_tuples(v) for k, v in {**defaults, **options}.items()}
    family = _preset(name).family
    if bn_axis_name is not None and "bn_axis_name" in {f.name for f in dataclasses.fields(family)}:
        merged["bn_axis_name"] = bn_axis_name
    return family(num_classes=num_classes, dtype=dtype, **merged)


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

"""The one model registry: name → factory, its options with their defaults, its default input.

Built-in presets and users' models are entries of the same mapping, added by `register_model`. A
`model.name` of the form `package.module:Attribute` is an import path instead of a registered name
(see `jaxcnn.models.imported`); its keyword arguments come from `model.options`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import flax.linen as nn

from jaxcnn.errors import JaxcnnError
from jaxcnn.spec import is_int, one_of
from jaxcnn.models import imported
from jaxcnn.models.imported import to_tuples

DEFAULT_INPUT_SHAPE = (28, 28, 1)
# Factory arguments that are not options: set by create_model's arguments or by Flax itself.
NOT_OPTIONS = ("num_classes", "dtype", "bn_axis_name", "conv_plan", "parent", "name", "rngs", "self")


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A registered model: `factory(num_classes=..., **options)` builds it; `defaults` are every option
    a config can set; `input_shape` (H, W, C) is what `jaxcnn models` and `jaxcnn bench` feed it."""

    factory: Callable[..., Any]
    defaults: Mapping[str, Any]
    input_shape: tuple[int, int, int]


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, factory: Callable[..., Any], defaults: Mapping[str, Any] | None = None, *,
                   input_shape: tuple[int, int, int] = DEFAULT_INPUT_SHAPE, replace: bool = False) -> None:
    """Make `factory` available as `model.name = name`.

    `factory` is a Flax linen Module class, a function returning a linen Module, or a Flax NNX Module
    class (run through `flax.nnx.bridge.ToLinen`); it is called with `num_classes` and the options as
    keyword arguments (plus `dtype` and `bn_axis_name` when it accepts them). Its options are its
    keyword arguments with plain default values (numbers, strings, bools, None, tuples); `defaults`
    adds options or changes their defaults. `replace=True` replaces an entry of the same name.
    """
    if not isinstance(name, str) or not name or imported.is_import_path(name) or name != name.strip():
        raise JaxcnnError(f"register_model: invalid name {name!r}; expected a non-empty string without ':' "
                          "(a name with ':' is an import path)")
    if name in _MODELS and not replace:
        raise JaxcnnError(f"register_model: model {name!r} is already registered; pass replace=True to replace it")
    imported.check_factory(factory, f"register_model({name!r})")
    options = {**factory_options(factory), **dict(defaults or {})}
    bad = next((k for k in options if k in NOT_OPTIONS or not imported.accepts(factory, k)), None)
    if bad is not None:
        raise JaxcnnError(f"register_model({name!r}): default {bad!r} is not a keyword argument "
                          f"{getattr(factory, '__name__', factory)} accepts as an option")
    odd = next((k for k, v in options.items() if not _is_plain(v)), None)
    if odd is not None:
        raise JaxcnnError(f"register_model({name!r}): default {odd}={options[odd]!r} is not a plain value (number, "
                          "string, bool, None or a tuple of them), which a config can hold")
    _MODELS[name] = ModelEntry(factory, {k: to_tuples(v) for k, v in options.items()}, tuple(input_shape))


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_MODELS)


def _entry(name: str) -> ModelEntry:
    one_of("model.name", name, _MODELS, "model", also=", or an import path such as my_package.nets:MyNet")
    return _MODELS[name]


def model_defaults(name: str) -> dict[str, Any]:
    """Every option of model `name` with its default; for an import path, `{"options": {}}`
    (its keyword arguments go in one dict, checked when the model is built)."""
    if imported.is_import_path(name):
        imported.resolve(name)  # fails early, and in one line, if it cannot be imported
        return {"options": {}}
    return dict(_entry(name).defaults)


def default_input_shape(name: str) -> tuple[int, int, int]:
    """The (H, W, C) input the model is meant for (28×28×1 for import paths)."""
    return DEFAULT_INPUT_SHAPE if imported.is_import_path(name) else _entry(name).input_shape


def factory_options(factory: Callable[..., Any]) -> dict[str, Any]:
    """The keyword arguments of `factory` (a linen Module's fields) whose defaults are plain values."""
    if isinstance(factory, type) and issubclass(factory, nn.Module):
        found = {f.name: f.default for f in dataclasses.fields(factory) if f.default is not dataclasses.MISSING}
    else:
        params = imported.signature(factory).parameters.values()
        found = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty
                 and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: to_tuples(v) for k, v in found.items() if k not in NOT_OPTIONS and _is_plain(v)}


def _is_plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


EXPECTED_ATTRIBUTE = "_jaxcnn_expected_output"


def create_model(name: str, num_classes: int, dtype: Any = jnp.float32, bn_axis_name: str | None = None,
                 conv_plan: tuple | None = None, **options: Any) -> nn.Module:
    """Model `name` with `num_classes` logits, as a linen Module; `options` override its defaults
    (see `model_defaults`); for an import path, `options={...}` holds its keyword arguments.

    `dtype` is the computation dtype (params stay float32); `bn_axis_name` is BatchNorm's
    cross-device axis, set only under pmap; `conv_plan` the measured convolution plan
    (`jaxcnn.models.conv_plan`). Each is passed only to factories that accept it.
    """
    if not is_int(num_classes) or num_classes < 1:
        raise JaxcnnError(f"invalid number of classes {num_classes!r}; expected an int >= 1")
    defaults = model_defaults(name)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise JaxcnnError(
            f"unknown option model.{unknown[0]} for model {name!r}; "
            f"expected one of: {', '.join(sorted(defaults))}"
        )
    merged = {k: to_tuples(v) for k, v in {**defaults, **options}.items()}
    if imported.is_import_path(name):
        factory, label = imported.resolve(name), f"model.name {name!r}"
        merged = imported.options_dict(merged["options"])
    else:
        factory, label = _entry(name).factory, f"model {name!r}"
    extra = {"dtype": dtype, "bn_axis_name": bn_axis_name, "conv_plan": conv_plan or None}
    merged.update({k: v for k, v in extra.items() if v is not None and imported.accepts(factory, k, named=True)})
    module = imported.build(factory, label, num_classes, merged)
    # What `check_input_shape` checks the output against; a plain attribute, not a field, so the
    # module's parameters and checkpoints are those of the module itself.
    object.__setattr__(module, EXPECTED_ATTRIBUTE, (num_classes, label, bn_axis_name))
    return module

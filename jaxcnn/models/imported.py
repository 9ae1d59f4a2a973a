"""Users' models: import paths (`my_pkg.nets:MyNet`), factories, and NNX modules through Flax's bridge.

Whatever the source, the result is a linen Module called as the built-in models are:
`apply(variables, x, train=..., rngs={"dropout": key}, mutable=["batch_stats"])`, `init(key, x)`.
- A linen Module class (or a function returning a linen Module) gets `num_classes` and the options as
  keyword arguments; its `__call__` may take `train` (with a default), else it is called without it.
- An NNX Module class is wrapped in `flax.nnx.bridge.ToLinen` (inside `NNXModel`): its `__init__`
  gets `num_classes`, the options and `rngs`; its `__call__` gets `train` if it takes one, otherwise
  the module is switched with `.train()` / `.eval()` (Dropout's `deterministic`, BatchNorm's
  `use_running_average`). Its `nnx.Param`s become the `params` collection, its `nnx.BatchStat`s the
  `batch_stats` collection, and Dropout draws from the `dropout` rng, so training, checkpoints and
  resuming work unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import os
import sys
from collections.abc import Mapping
from typing import Any, Callable

import flax.linen as nn
from flax.core import FrozenDict

from jaxcnn.checks import without_bytecode
from jaxcnn.errors import JaxcnnError


IMPORT_PATH_HINT = ", or an import path module.path:Class (see README, Your own model)"


def is_import_path(name: object) -> bool:
    """`package.module:Attribute` (a registered name has no ':')."""
    return isinstance(name, str) and ":" in name


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _is_missing(error: ModuleNotFoundError, module_name: str) -> bool:
    """Whether `module_name` itself (or a package above it) is what could not be found."""
    return error.name is not None and (module_name + ".").startswith(error.name + ".")


def _import(module_name: str, path: str) -> Any:
    """The module, looked up on sys.path and then in the current folder (as `python -m` would)."""
    here = os.getcwd()
    try:
        with without_bytecode():  # the user's folder stays as it was
            try:
                return importlib.import_module(module_name)
            except ModuleNotFoundError as e:
                if not _is_missing(e, module_name) or here in sys.path or "" in sys.path:
                    raise
                sys.path.append(here)
                return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if _is_missing(e, module_name):
            raise JaxcnnError(f"model.name {path!r}: no module named {e.name!r}; put the folder holding it on "
                              "PYTHONPATH (or run from that folder)") from e
        raise JaxcnnError(f"model.name {path!r}: importing {module_name!r} failed: {_first_line(e)}") from e
    except Exception as e:  # the user's module raised while being imported
        raise JaxcnnError(f"model.name {path!r}: importing {module_name!r} failed: {_first_line(e)}") from e


@functools.lru_cache(maxsize=None)
def resolve(path: str) -> Any:
    """The object an import path names, checked to be a model factory (see `check_factory`)."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute or ":" in attribute:
        raise JaxcnnError(f"model.name {path!r}: expected an import path module.path:Attribute, "
                          "e.g. my_package.nets:MyNet")
    obj = _import(module_name, path)
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise JaxcnnError(f"model.name {path!r}: module {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    check_factory(obj, f"model.name {path!r}")
    return obj


def is_nnx_class(obj: Any) -> bool:
    nnx = sys.modules.get("flax.nnx")  # an NNX class means its defining module imported flax.nnx
    return nnx is not None and isinstance(obj, type) and issubclass(obj, nnx.Module)


def check_factory(obj: Any, label: str) -> None:
    """Raise unless `obj` is a linen Module class, an NNX Module class, or a function (whose result
    is checked when it is called)."""
    if isinstance(obj, type) and (issubclass(obj, nn.Module) or is_nnx_class(obj)):
        return
    if callable(obj) and not isinstance(obj, (type, nn.Module)) and not is_nnx_class(type(obj)):
        return
    what = f"the class {obj.__name__}" if isinstance(obj, type) else f"{obj!r:.40} (of type {type(obj).__name__})"
    raise JaxcnnError(f"{label}: {what} is not a Flax module; expected a flax.linen.Module class, a "
                      "flax.nnx.Module class, or a function returning a linen Module, taking num_classes")


def signature(factory: Callable[..., Any]) -> inspect.Signature:
    """The parameters `factory` is called with (a class's `__init__` without `self`)."""
    if isinstance(factory, type):
        init = inspect.signature(factory.__init__)
        return init.replace(parameters=list(init.parameters.values())[1:])
    return inspect.signature(factory)


def accepts(factory: Callable[..., Any], key: str, named: bool = False) -> bool:
    """Whether `factory` takes keyword `key` (by name; or through **kwargs unless `named`)."""
    params = signature(factory).parameters
    if key in params:
        return params[key].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return not named and any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())


def options_dict(value: Any) -> dict[str, Any]:
    """`model.options` as a plain dict with tuples for lists (a ConfigDict once in a config)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and k.isidentifier() for k in value):
        raise JaxcnnError(f"model.options: expected a dict of keyword arguments, got {value!r}; "
                          "set e.g. --config.model.options=\"{'features': 32}\"")
    return {k: to_tuples(v) for k, v in value.items()}


def to_tuples(value: Any) -> Any:
    """Lists (as ml_collections may give) to tuples, recursively: module fields must be hashable."""
    if isinstance(value, (list, tuple)):
        return tuple(to_tuples(v) for v in value)
    return value


def _name(factory: Any) -> str:
    return getattr(factory, "__qualname__", None) or type(factory).__name__


def _call_takes_train(cls: type, label: str) -> bool:
    params = inspect.signature(cls.__call__).parameters
    if "train" in params and params["train"].default is inspect.Parameter.empty:
        raise JaxcnnError(f"{label}: {cls.__qualname__}.__call__ takes train without a default; "
                          "declare it as train: bool = False (init calls the model without it)")
    return "train" in params or any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())


def build(factory: Callable[..., Any], label: str, num_classes: int, options: dict[str, Any]) -> nn.Module:
    """`factory(num_classes=..., **options)` as a linen Module taking `train` (see the module doc)."""
    kwargs = {"num_classes": num_classes, **options}
    nnx_class = is_nnx_class(factory)
    try:
        signature(factory).bind(**kwargs, **({"rngs": None} if nnx_class else {}))
    except TypeError as e:
        raise JaxcnnError(f"{label}: {_name(factory)} cannot be called with num_classes and options "
                          f"{sorted(options)} ({e}); it gets num_classes and model.options as keyword arguments") from e
    if nnx_class:
        return NNXModel(factory, FrozenDict(kwargs), _call_takes_train(factory, label))
    module = factory(**kwargs)
    if is_nnx_class(type(module)):
        raise JaxcnnError(f"{label}: {_name(factory)} returned an NNX module instance; give the NNX Module "
                          "class itself (it is built through flax.nnx.bridge.ToLinen)")
    if not isinstance(module, nn.Module):
        raise JaxcnnError(f"{label}: {_name(factory)} returned a {type(module).__name__}, not a Flax module; "
                          "return a flax.linen.Module")
    return module if _call_takes_train(type(module), label) else IgnoresTrain(module)


class IgnoresTrain(nn.Module):
    """A linen module whose `__call__` has no `train` argument, called as the others are."""

    module: nn.Module

    def __call__(self, x: Any, train: bool = False) -> Any:
        return self.module(x)


@dataclasses.dataclass(frozen=True)
class _NNXFactory:
    """Builds the NNX module inside ToLinen. At `init` Flax gives only the `params` rng; a `default`
    stream (the params key) lets Dropout layers be constructed then (init runs in eval mode)."""

    nnx_class: type

    def __call__(self, *, rngs: Any, **kwargs: Any) -> Any:
        from flax import nnx

        if "default" not in rngs:
            rngs = nnx.Rngs(default=rngs["params"], **dict(rngs.items()))
        return self.nnx_class(rngs=rngs, **kwargs)


def _call_nnx(module: Any, x: Any, *, train: bool, takes_train: bool) -> Any:
    if takes_train:
        return module(x, train=train)
    if train:
        module.train()
    else:
        module.eval()
    return module(x)


class NNXModel(nn.Module):
    """An NNX Module class as a linen Module (`flax.nnx.bridge.ToLinen`), built with `kwargs`."""

    nnx_class: type
    kwargs: FrozenDict
    takes_train: bool

    @nn.compact
    def __call__(self, x: Any, train: bool = False) -> Any:
        from flax import nnx

        method = functools.partial(_call_nnx, train=train, takes_train=self.takes_train)
        return nnx.bridge.ToLinen(_NNXFactory(self.nnx_class), kwargs=self.kwargs, name="nnx")(x, nnx_method=method)

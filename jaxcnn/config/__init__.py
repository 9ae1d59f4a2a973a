"""Experiment configs: loading config files, `--config.KEY=VALUE` overrides, validation.

A config file is a Python file whose `get_config()` returns a locked `ml_collections.ConfigDict`,
usually built with `base_config(...)` and a few changed fields; it is trusted code, run as it is.
The presets ship in `jaxcnn/configs/`. A run's `config.json` loads as a config too (finding and
reading the files: `jaxcnn.config.files`). The keys, their defaults and their checks are declared
once, in `jaxcnn.spec`; `validate_config` turns the config into those typed sections. The config is
read here, in one place; library functions receive the sections they need.
"""

from __future__ import annotations

import ast
import difflib
import json
import pathlib
from typing import Any, Iterable

import ml_collections

from jaxcnn import spec
from jaxcnn.config.files import (CONFIG_SUFFIXES, CONFIGS_DIR, DEFAULT_CONFIG, as_tuple,  # noqa: F401 (re-exported)
                                 config_from_json, config_name, list_presets, read_json_config, resolve_config_path,
                                 run_config_file)
from jaxcnn.config import run_options
from jaxcnn.errors import JaxcnnError
from jaxcnn.spec import DATASET_COMMON_KEYS, dataset_options, model_options  # noqa: F401 (re-exported)


def _section(values: dict[str, Any]) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(values, type_safe=False)


def model_section(name: str) -> ml_collections.ConfigDict:
    """`config.model` for a registered model: its name and every option with its default."""
    from jaxcnn import models  # the registry; imported when a model section is made

    return _section({"name": name, **models.model_defaults(name)})


def dataset_section(name: str, **fields: Any) -> ml_collections.ConfigDict:
    """`config.dataset`: common keys (`spec.DatasetSpec`), plus the dataset's own options (synthetic's
    generator options, image_folder's and arrays' `path`, a registered dataset's defaults, ...)."""
    from jaxcnn import data  # the registry; data imports heavy optional pieces lazily

    return _section({**spec.DatasetSpec.defaults(), "name": name, **data.dataset_defaults(name), **fields})


def base_config(model: str = "cnn", dataset: str = "digits") -> ml_collections.ConfigDict:
    """Every key jaxcnn reads, with its default from `jaxcnn.spec.RunSpec` and its sections. Config
    files start here and change a few fields.

    The returned config is unlocked; `get_config()` returns it with `.lock()` so that a mistyped
    key fails (with a suggestion) instead of being silently added.
    """
    config = _section(spec.RunSpec.defaults())
    for key, section in spec.sections().items():
        config[key] = _section(section.defaults())
    config.dataset = dataset_section(dataset)
    config.model = model_section(model)
    return config


def load_config(path: str | None = None, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Loads a config (default: the preset `digits_cnn`; see `resolve_config_path`), applies
    overrides, validates it. Python config files are trusted code: they run as they are."""
    config = read_config(path, overrides)
    validate_config(config)
    return config


def read_config(path: str | None = None, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """`load_config` without the validation, which builds the model and so starts JAX's backend:
    for what must happen before it starts (`jaxcnn.runtime.determinism.apply`)."""
    file = resolve_config_path(path)
    config = config_from_json_file(file) if file.suffix == ".json" else run_config_file(file)
    config.lock()
    apply_overrides(config, overrides)
    return config


def config_from_json_file(file: pathlib.Path) -> ml_collections.ConfigDict:
    """A run's `config.json` (what `config_to_json` wrote): exactly that config. Keys it lacks
    take the defaults of its model and dataset; keys jaxcnn does not know are refused."""
    from jaxcnn import data  # data imports heavy optional pieces lazily

    loaded = read_json_config(file)
    data.check_dataset_name(loaded.dataset.get("name"))
    config = base_config(loaded.model.get("name"), loaded.dataset.name)
    _merge(config, loaded, file)
    return config


def _merge(config: ml_collections.ConfigDict, loaded: ml_collections.ConfigDict, file: pathlib.Path,
           prefix: str = "") -> None:
    """Sets every key of `loaded` in `config`, which must already have it (as a section or a value)."""
    for key, value in loaded.items():
        name = f"{prefix}{key}"
        if key not in config:
            close = difflib.get_close_matches(key, list(config.keys()), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise JaxcnnError(f"{file}: unknown config key '{name}'{hint}")
        is_section = isinstance(config[key], ml_collections.ConfigDict)
        if is_section != isinstance(value, ml_collections.ConfigDict):
            expected = "a section (a JSON object)" if is_section else "a value, not a section"
            raise JaxcnnError(f"{file}: config key '{name}' must be {expected}")
        if is_section:
            _merge(config[key], value, file, f"{name}.")
        else:
            config[key] = value


def parse_override(item: str) -> tuple[str, str]:
    """`model.name=mlp` (the `--config.` prefix already stripped) -> ("model.name", "mlp")."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise JaxcnnError(f"bad override '--config.{item}'; expected --config.KEY=VALUE, "
                          "e.g. --config.optimizer.learning_rate=0.01")
    return key, value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
    """Applies `KEY=VALUE` overrides in place.

    `model.name` and `dataset.name` go first: changing them rebuilds their section with the new
    model's (dataset's) own options, so `--config.model.name=mlp` works on a CNN config.
    """
    from jaxcnn.models import is_import_path  # the model registry; imported when overrides are applied

    pairs = [parse_override(item) for item in overrides]
    pairs.sort(key=lambda kv: kv[0] not in ("model.name", "dataset.name"))
    for key, raw in pairs:
        if key == "model.name":
            name = _coerce(key, config.model.name, raw)
            if name != config.model.name:
                section = model_section(name)  # an unknown name: one line listing the known ones
                with config.unlocked():
                    config.model = section
                config.lock()
            continue
        if is_import_path(config.model.name) and (key + ".").startswith("model.options."):
            _set_model_options(config, key, raw)
            continue
        if key == "dataset.name":
            name = _coerce(key, config.dataset.name, raw)
            if name != config.dataset.name:
                keep = {k: config.dataset[k] for k in DATASET_COMMON_KEYS if k != "name"}
                with config.unlocked():
                    config.dataset = dataset_section(name, **keep)
                config.lock()
            continue
        if key.startswith("sweep.") and key[len("sweep."):] not in spec.SWEEPABLE:
            raise JaxcnnError(spec.not_sweepable(key[len("sweep."):]))
        parent, leaf = _lookup_parent(config, key)
        if isinstance(parent[leaf], ml_collections.ConfigDict):
            raise JaxcnnError(f"config key '{key}' is a section; set one of its keys, e.g. "
                              f"--config.{key}.{next(iter(parent[leaf].keys()))}=...")
        parent[leaf] = _coerce(key, parent[leaf], raw)


def _set_model_options(config: ml_collections.ConfigDict, key: str, raw: str) -> None:
    """`model.options={...}` replaces the import-path model's keyword arguments; `model.options.K=V`
    sets one (new keys allowed: they are the user's model's own)."""
    options = getattr(config.model.options, "to_dict", dict)()
    if key == "model.options":
        parsed = _coerce(key, {}, raw)
        if not isinstance(parsed, dict):
            raise JaxcnnError(f"config key 'model.options' expects a dict of keyword arguments, got '{raw}'; "
                              "e.g. --config.model.options=\"{'features': 32}\"")
        options = parsed
    else:
        leaf = key[len("model.options."):]
        options[leaf] = _coerce(key, options[leaf], raw) if leaf in options else _literal(raw)
    with config.unlocked():
        config.model.options = ml_collections.ConfigDict({k: as_tuple(v) for k, v in options.items()},
                                                         type_safe=False)
    config.lock()


def _literal(raw: str) -> Any:
    """A new option's value: true/false, a Python literal, else the string itself."""
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _lookup_parent(config: ml_collections.ConfigDict, key: str) -> tuple[ml_collections.ConfigDict, str]:
    parts = key.split(".")
    node = config
    for depth, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            options = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            close = difflib.get_close_matches(part, options, n=1)
            prefix = parts[:depth]
            hint = (f"; did you mean '{'.'.join(prefix + close)}'?" if close
                    else f"; keys here: {', '.join(options)}" if options else "")
            raise JaxcnnError(f"unknown config key '{key}'{hint}")
        if depth < len(parts) - 1:
            node = node[part]
    return node, parts[-1]


def _coerce(key: str, current: Any, raw: str) -> Any:
    """Parses a command-line value to the type of the value it replaces."""
    if isinstance(current, bool):
        lowered = raw.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise JaxcnnError(f"config key '{key}' expects true or false, got '{raw}'")
    try:
        parsed = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        parsed = raw
    if isinstance(current, str):
        return parsed if isinstance(parsed, (int, tuple, list)) and not isinstance(parsed, bool) else raw
    if isinstance(current, float) and isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
        return float(parsed)
    if isinstance(current, int) and not (isinstance(parsed, int) and not isinstance(parsed, bool)):
        raise JaxcnnError(f"config key '{key}' expects an integer, got '{raw}'")
    if isinstance(current, float):
        raise JaxcnnError(f"config key '{key}' expects a number, got '{raw}'")
    return as_tuple(parsed)


def validate_config(config: ml_collections.ConfigDict) -> spec.RunSpec:
    """Checks the config before any work starts and returns it as typed sections: every key's type
    and range (`spec.parse`), then the dataset's name and the model, built once through
    `jaxcnn.core.build` (its options, and its layers against the dataset's input shape when known)."""
    from jaxcnn import data, models  # the registries; data imports heavy optional pieces lazily
    from jaxcnn.core import members
    from jaxcnn.core.build import build  # a layer below; imported here because building starts JAX
    from jaxcnn.data.feed import check_input_options

    run = spec.parse(config)
    member_list = members.members_of(config)  # the seeds and the swept values
    check_input_options(run.dataset, run.augment.random_resized_crop, member_list is not None)
    run_options.parse_profile_steps(config.profile_steps)  # its range is checked with the data (profiling)
    data.check_dataset_name(config.dataset.name)
    # The model the run will train where the dataset's classes are known before loading: setup's
    # check of it, once the data is loaded, is then the same check (models.check_input_shape).
    parts = build(config, num_classes=data.expected_num_classes(config.dataset) or 2, steps_per_epoch=1)
    input_shape = data.expected_input_shape(config.dataset)
    if input_shape is not None:  # else checked once the data is loaded (training.run.load_data)
        models.check_input_shape(parts.model, input_shape)
    return run


def config_to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)

"""Experiment configs: loading config files, `--config.KEY=VALUE` overrides, validation.

A config file is a Python file whose `get_config()` returns a locked `ml_collections.ConfigDict`,
usually built with `base_config(...)` and a few changed fields; it is trusted code, run as it is.
The presets ship in `jaxcnn/configs/`. A run's `config.json` loads as a config too. The config is
read here, in one place; library functions receive the sections they need.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import math
import numbers
import pathlib
import traceback
from typing import Any, Iterable

import ml_collections

from jaxcnn import augment, checkpoint, models, optim
from jaxcnn.data import host, normalization, tfds
from jaxcnn.errors import JaxcnnError
from jaxcnn.executor import PARALLEL

CONFIGS_DIR = pathlib.Path(__file__).resolve().parent / "configs"  # the presets, shipped in the package
DEFAULT_CONFIG = "digits_cnn"
CONFIG_SUFFIXES = (".py", ".json")  # a Python config file, a run's config.json

# Keys of the `dataset` section that are not options of the dataset loader itself.
DATASET_COMMON_KEYS = ("name", "val_fraction", "data_dir", "mean", "std", "per_channel_stats", "download",
                       "input", "device_budget_mb")
SYNTHETIC_DEFAULTS = {"image_shape": (28, 28, 1), "num_classes": 10, "num_train": 1024, "num_test": 256}
EARLY_STOPPING_MONITORS = ("val_loss", "val_accuracy")


def model_section(name: str) -> ml_collections.ConfigDict:
    """`config.model` for a registered model: its name and every option with its default."""
    return ml_collections.ConfigDict({"name": name, **models.model_defaults(name)}, type_safe=False)


def dataset_section(name: str, **fields: Any) -> ml_collections.ConfigDict:
    """`config.dataset`: common keys, plus the dataset's own options (synthetic's generator options,
    image_folder's and arrays' `path`, a registered dataset's defaults, ...)."""
    from jaxcnn import data

    section = {"name": name, "val_fraction": 0.1, "data_dir": "", "mean": 0.0, "std": 1.0,
               "per_channel_stats": False, "download": False, "input": "auto", "device_budget_mb": 4096.0}
    if name == "synthetic":
        section.update(SYNTHETIC_DEFAULTS)
    if name.startswith(tfds.PREFIX):
        section.update(tfds.DEFAULTS)
    section.update(data.dataset_defaults(name))
    section.update(fields)
    return ml_collections.ConfigDict(section, type_safe=False)


def base_config(model: str = "cnn", dataset: str = "digits") -> ml_collections.ConfigDict:
    """Every key jaxcnn reads, with defaults. Config files start here and change a few fields.

    The returned config is unlocked; `get_config()` returns it with `.lock()` so that a mistyped
    key fails (with a suggestion) instead of being silently added.
    """
    config = ml_collections.ConfigDict(type_safe=False)
    config.seed = 0
    config.batch_size = 128
    config.eval_batch_size = 1000
    config.num_epochs = 10
    config.log_every_steps = 100
    config.logging = ml_collections.ConfigDict({"tensorboard": False}, type_safe=False)
    config.parallel = "auto"  # none | pmap | sharded | auto (sharded on >1 device): see jaxcnn/executor.py
    config.grad_accum_steps = 1  # > 1: average the gradients of that many batches per update
    config.steps_per_call = 1  # > 1: run up to that many training steps per compiled call (jaxcnn/executor.py)
    config.max_steps = 0  # > 0: stop training after that many steps (a quick run), then test and summarise
    config.limit_eval_batches = 0  # > 0: validate and test on at most that many eval batches (a quick run)
    config.dtype = "float32"  # computation dtype: float32 or bfloat16 (params stay float32)
    # The persistent compilation cache: "auto" = $XDG_CACHE_HOME/jaxcnn or ~/.cache/jaxcnn (off where
    # that cannot be written), a folder, or '' = off (jaxcnn/compilation.py).
    config.compilation_cache_dir = "auto"
    config.dataset = dataset_section(dataset)
    config.augment = ml_collections.ConfigDict(
        {"crop_padding": 0, "flip": False, "cutout": 0}, type_safe=False)
    config.model = model_section(model)
    config.loss = ml_collections.ConfigDict(
        {"name": "cross_entropy", "label_smoothing": 0.0, "l2": 0.0}, type_safe=False)
    config.optimizer = ml_collections.ConfigDict(optim.default_optimizer_config(), type_safe=False)
    config.schedule = ml_collections.ConfigDict(optim.default_schedule_config(), type_safe=False)
    config.early_stopping = ml_collections.ConfigDict(
        {"enabled": False, "monitor": "val_loss", "patience": 3, "min_delta": 0.0,
         "restore_best": True}, type_safe=False)
    config.checkpoint = ml_collections.ConfigDict(checkpoint.default_checkpoint_config(), type_safe=False)
    return config


def list_presets() -> list[str]:
    """The preset names: the config modules shipped in `jaxcnn/configs/`."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.py") if not p.name.startswith("_"))


def resolve_config_path(path: str | None) -> pathlib.Path:
    """The config file `--config` names (default: the preset `digits_cnn`).

    A bare name (no folder, no suffix) is a preset, looked up only in `jaxcnn/configs/`: a file
    of that name in the current folder never stands in for it (give it as a path, `./NAME.py`).
    Anything else is a path: a Python config file (`.py`) or a run's `config.json` (`.json`).
    """
    name = path or DEFAULT_CONFIG
    file = pathlib.Path(name)
    if "/" not in name and "\\" not in name and not file.suffix:
        return _preset_path(name)
    if file.is_dir():
        saved = file / "config.json"
        hint = f", e.g. its run's config: --config {saved}" if saved.is_file() else ""
        raise JaxcnnError(f"config '{name}' is a folder; pass a config file (.py or a run's config.json){hint}")
    if file.suffix not in CONFIG_SUFFIXES:
        raise JaxcnnError(f"config '{name}': expected a Python config file (.py), a run's config.json "
                          "(.json) or a preset name such as mnist_cnn")
    if not file.exists():
        where = "" if file.is_absolute() else f" (relative to {pathlib.Path.cwd()})"
        preset = f"; the preset '{file.stem}' is --config {file.stem}" if file.stem in list_presets() else ""
        raise JaxcnnError(f"config file '{name}' not found{where}{preset}")
    return file


def _preset_path(name: str) -> pathlib.Path:
    presets = list_presets()
    if name in presets:
        return CONFIGS_DIR / f"{name}.py"
    close = difflib.get_close_matches(name, presets, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    local = next((f"./{c}" for c in (name, f"{name}.py", f"{name}/config.json") if pathlib.Path(c).is_file()), None)
    there = f"; to use the file in the current folder, pass --config {local}" if local else ""
    raise JaxcnnError(f"config '{name}' is not a preset{hint}; pass a path to a config file (.py or a run's "
                      f"config.json) or one of the presets: {', '.join(presets) or 'none found'}{there}")


def config_name(path: str | None) -> str:
    """A short name for the config `--config` names (default workdirs are `runs/NAME-DATE`): the
    file's stem, or for a run's `config.json` its run folder's name."""
    file = resolve_config_path(path)
    return (file.resolve().parent.name or "config") if file.name == "config.json" else file.stem


def load_config(path: str | None = None, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Loads a config (default: the preset `digits_cnn`; see `resolve_config_path`), applies
    overrides, validates it. Python config files are trusted code: they run as they are."""
    file = resolve_config_path(path)
    config = config_from_json_file(file) if file.suffix == ".json" else run_config_file(file)
    config.lock()
    apply_overrides(config, overrides)
    validate_config(config)
    return config


def run_config_file(file: pathlib.Path) -> ml_collections.ConfigDict:
    """`get_config()` of the Python config file `file`. An exception raised while importing it or
    inside `get_config()` becomes one line naming the file, the line and the message."""
    try:
        spec = importlib.util.spec_from_file_location(f"jaxcnn_config_{file.stem}", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as e:  # a broken config file is the user's to fix
        raise JaxcnnError(_failure(file, e, "loading it")) from e
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise JaxcnnError(f"{file}: has no get_config() function returning a ConfigDict")
    try:
        config = get_config()
    except Exception as e:
        raise JaxcnnError(_failure(file, e, "get_config()")) from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise JaxcnnError(f"{file}: get_config() must return an ml_collections.ConfigDict, "
                          f"got {type(config).__name__}")
    return config


def _failure(file: pathlib.Path, error: Exception, during: str) -> str:
    """`FILE:LINE: during raised Type: message` on one line, LINE from the innermost frame of the
    error's traceback inside `file` (a SyntaxError's own line)."""
    target, line = file.resolve(), None
    if isinstance(error, SyntaxError) and error.filename and pathlib.Path(error.filename).resolve() == target:
        line = error.lineno
    for frame, lineno in traceback.walk_tb(error.__traceback__):
        if pathlib.Path(frame.f_code.co_filename).resolve() == target:
            line = lineno
    where = f"{file}:{line}" if line else str(file)
    message = " ".join(str(error.msg if isinstance(error, SyntaxError) else error).split())
    if isinstance(error, JaxcnnError):
        return f"{where}: {message}"
    return f"{where}: {during} raised {type(error).__name__}" + (f": {message}" if message else "")


def config_from_json_file(file: pathlib.Path) -> ml_collections.ConfigDict:
    """A run's `config.json` (what `config_to_json` wrote): exactly that config. Keys it lacks
    take the defaults of its model and dataset; keys jaxcnn does not know are refused."""
    from jaxcnn import data  # data imports heavy optional pieces lazily

    try:
        loaded = config_from_json(file.read_text())
    except (OSError, ValueError, JaxcnnError) as e:  # ValueError: bad JSON or not UTF-8
        raise JaxcnnError(f"{file}: cannot be read as a JSON config: {' '.join(str(e).split())}") from e
    sections = [key for key in ("model", "dataset") if not isinstance(loaded.get(key), ml_collections.ConfigDict)]
    if sections:
        raise JaxcnnError(f"{file}: not a jaxcnn config (no '{sections[0]}' section); expected a run's "
                          "config.json as `jaxcnn train` writes it")
    _check_name("model.name", loaded.model.get("name"), models.list_models())
    data.check_dataset_name(loaded.dataset.get("name"))
    config = base_config(loaded.model.name, loaded.dataset.name)
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


def config_from_json(text: str) -> ml_collections.ConfigDict:
    """The config of a finished run, as written to its `config.json`, locked."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise JaxcnnError(f"a config in JSON must be an object, got a JSON {type(value).__name__}")
    return ml_collections.ConfigDict(_lists_to_tuples(value), type_safe=False).lock()


def _lists_to_tuples(value: Any) -> Any:
    """JSON has no tuples; configs use them for shapes and layer sizes."""
    if isinstance(value, dict):
        return {k: _lists_to_tuples(v) for k, v in value.items()}
    return _as_tuple(value)


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


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
    pairs = [parse_override(item) for item in overrides]
    pairs.sort(key=lambda kv: kv[0] not in ("model.name", "dataset.name"))
    for key, raw in pairs:
        if key == "model.name":
            name = _coerce(key, config.model.name, raw)
            if name != config.model.name:
                if not models.is_import_path(name):
                    _check_name(key, name, models.list_models(), models.IMPORT_PATH_HINT)
                with config.unlocked():
                    config.model = model_section(name)
                config.lock()
            continue
        if models.is_import_path(config.model.name) and (key + ".").startswith("model.options."):
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
        config.model.options = ml_collections.ConfigDict({k: _as_tuple(v) for k, v in options.items()},
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
    return _as_tuple(parsed)


def _check_name(key: str, name: Any, known: Iterable[str], alternative: str = "") -> None:
    known = sorted(known)
    if name not in known:
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise JaxcnnError(f"unknown name '{name}' for {key}{hint}; expected one of: {', '.join(known)}{alternative}")


def _check_positive_int(config: ml_collections.ConfigDict, key: str) -> None:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise JaxcnnError(f"{key} must be a positive integer, got {value!r}")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks values that no other module checks before any work starts (names, ranges)."""
    from jaxcnn import data  # data imports heavy optional pieces lazily
    from jaxcnn.build import build  # build reads configs through this module

    check_finite(config)
    if isinstance(config.seed, bool) or not isinstance(config.seed, int) or config.seed < 0:
        raise JaxcnnError(f"seed must be a non-negative integer, got {config.seed!r}")
    for key in ("batch_size", "eval_batch_size", "num_epochs", "log_every_steps", "grad_accum_steps",
                "steps_per_call"):
        _check_positive_int(config, key)
    for key in ("max_steps", "limit_eval_batches"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise JaxcnnError(f"{key} must be a whole number >= 0 (0: off), got {value!r}")
    if not isinstance(config.compilation_cache_dir, str):
        raise JaxcnnError(f"compilation_cache_dir must be a folder, 'auto' or '' (off), "
                          f"got {config.compilation_cache_dir!r}")
    if not isinstance(config.logging.tensorboard, bool):
        raise JaxcnnError(f"logging.tensorboard must be true or false, got {config.logging.tensorboard!r}")
    _check_name("parallel", config.parallel, PARALLEL)
    data.check_dataset_name(config.dataset.name)
    fraction = config.dataset.val_fraction
    if not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
        raise JaxcnnError(f"dataset.val_fraction must be in [0, 1), got {fraction!r}")
    normalization.check_mean_std(config.dataset.mean, config.dataset.std)
    host.check_input_mode(config.dataset.input)
    for key in ("per_channel_stats", "download"):
        if not isinstance(config.dataset[key], bool):
            raise JaxcnnError(f"dataset.{key} must be true or false, got {config.dataset[key]!r}")
    budget = config.dataset.device_budget_mb
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0:
        raise JaxcnnError(f"dataset.device_budget_mb must be a positive number of MiB, got {budget!r}")
    augment.augment_config(config.augment)
    if not models.is_import_path(config.model.name):
        _check_name("model.name", config.model.name, models.list_models(), models.IMPORT_PATH_HINT)
    if not isinstance(config.loss.l2, (int, float)) or config.loss.l2 < 0:
        raise JaxcnnError(f"loss.l2 must be >= 0, got {config.loss.l2!r}")
    parts = build(config, num_classes=2, steps_per_epoch=1)  # every name and option of model, optimizer and loss
    input_shape = data.expected_input_shape(config.dataset)
    if input_shape is not None:  # else checked once the data is loaded (loop.load_data)
        models.check_input_shape(parts.model, input_shape)
    stopping = config.early_stopping
    if stopping.monitor not in EARLY_STOPPING_MONITORS:
        raise JaxcnnError(f"early_stopping.monitor must be one of {', '.join(EARLY_STOPPING_MONITORS)}, "
                          f"got {stopping.monitor!r}")
    if isinstance(stopping.patience, bool) or not isinstance(stopping.patience, int) or stopping.patience < 1:
        raise JaxcnnError(f"early_stopping.patience must be a positive integer, got {stopping.patience!r}")
    if stopping.enabled and config.dataset.val_fraction == 0:
        raise JaxcnnError("early_stopping.enabled needs a validation split; set dataset.val_fraction > 0")


def check_finite(config: ml_collections.ConfigDict) -> None:
    """Refuses NaN and infinite numbers anywhere in the config (`1e999` parses as infinity)."""
    for key, value in _leaves(config):
        if isinstance(value, numbers.Real) and not math.isfinite(value):
            raise JaxcnnError(f"config key '{key}' is {value}; every number in a config must be finite")


def _leaves(value: Any, key: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted key, value) of every value in a config, inside tuples and lists too."""
    if isinstance(value, ml_collections.ConfigDict):
        for name, item in value.items():
            yield from _leaves(item, f"{key}.{name}" if key else name)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _leaves(item, key)
    else:
        yield key, value


def model_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The model constructor's keyword arguments: `config.model` without its name."""
    return {k: v for k, v in config.model.items() if k != "name"}


def dataset_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The dataset loader's own options: `config.dataset` without the common keys."""
    return {k: v for k, v in config.dataset.items() if k not in DATASET_COMMON_KEYS}


def config_to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)

"""Experiment configs: loading config files, `--config.KEY=VALUE` overrides, validation.

A config file is a Python file under `configs/` whose `get_config()` returns a locked
`ml_collections.ConfigDict`, usually built with `base_config(...)` and a few changed fields. The
config is read here, in one place; library functions receive the sections they need.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import pathlib
from typing import Any, Iterable

import ml_collections

from jaxcnn import augment, checkpoint, models, optim, precision
from jaxcnn.data import host, normalization, tfds
from jaxcnn.errors import JaxcnnError
from jaxcnn.parallel import STRATEGIES

CONFIGS_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = "digits_cnn"

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
    config.parallel = "auto"  # none | pmap | sharded | auto (sharded on >1 device): see jaxcnn/parallel.py
    config.grad_accum_steps = 1  # > 1: average the gradients of that many batches per update
    config.steps_per_call = 1  # > 1: run up to that many training steps per compiled call (jaxcnn/fused.py)
    config.dtype = "float32"  # computation dtype: float32 or bfloat16 (params stay float32)
    config.compilation_cache_dir = ""  # persistent compilation cache; '' = off
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


def resolve_config_path(path: str | None) -> pathlib.Path:
    """A config file path, or a bare preset name such as `mnist_cnn` looked up in `configs/`."""
    name = path or DEFAULT_CONFIG
    candidate = pathlib.Path(name)
    if candidate.is_file():
        return candidate
    for folder in (pathlib.Path.cwd() / "configs", CONFIGS_DIR):
        preset = folder / (name if name.endswith(".py") else name + ".py")
        if preset.is_file():
            return preset
    known = ", ".join(sorted(p.stem for p in CONFIGS_DIR.glob("*.py"))) or "none found"
    raise JaxcnnError(f"config file '{name}' not found; pass a path to a config file or one of "
                      f"the presets in configs/: {known}")


def load_config(path: str | None = None, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Loads a config file (default `configs/digits_cnn.py`), applies overrides, validates it."""
    file = resolve_config_path(path)
    spec = importlib.util.spec_from_file_location(f"jaxcnn_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except JaxcnnError:
        raise
    except Exception as e:  # a broken config file is the user's to fix
        raise JaxcnnError(f"{file}: could not be loaded: {type(e).__name__}: {e}") from e
    if not hasattr(module, "get_config"):
        raise JaxcnnError(f"{file}: has no get_config() function returning a ConfigDict")
    config = module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise JaxcnnError(f"{file}: get_config() must return an ml_collections.ConfigDict, "
                          f"got {type(config).__name__}")
    config.lock()
    apply_overrides(config, overrides)
    validate_config(config)
    return config


def config_from_json(text: str) -> ml_collections.ConfigDict:
    """The config of a finished run, as written to its `config.json`, locked."""
    return ml_collections.ConfigDict(_lists_to_tuples(json.loads(text)), type_safe=False).lock()


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
    from jaxcnn import data, losses  # data imports heavy optional pieces lazily

    if isinstance(config.seed, bool) or not isinstance(config.seed, int) or config.seed < 0:
        raise JaxcnnError(f"seed must be a non-negative integer, got {config.seed!r}")
    for key in ("batch_size", "eval_batch_size", "num_epochs", "log_every_steps", "grad_accum_steps",
                "steps_per_call"):
        _check_positive_int(config, key)
    if not isinstance(config.logging.tensorboard, bool):
        raise JaxcnnError(f"logging.tensorboard must be true or false, got {config.logging.tensorboard!r}")
    _check_name("parallel", config.parallel, STRATEGIES)
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
    precision.compute_dtype(config.dtype)
    models.create_model(config.model.name, num_classes=2, **model_options(config))
    losses.make_classification_loss(config.loss.name, num_classes=2,
                                    label_smoothing=config.loss.label_smoothing)
    if not isinstance(config.loss.l2, (int, float)) or config.loss.l2 < 0:
        raise JaxcnnError(f"loss.l2 must be >= 0, got {config.loss.l2!r}")
    optim.create_optimizer(config.optimizer, config.schedule, steps_per_epoch=1,
                           num_epochs=config.num_epochs)
    stopping = config.early_stopping
    if stopping.monitor not in EARLY_STOPPING_MONITORS:
        raise JaxcnnError(f"early_stopping.monitor must be one of {', '.join(EARLY_STOPPING_MONITORS)}, "
                          f"got {stopping.monitor!r}")
    if isinstance(stopping.patience, bool) or not isinstance(stopping.patience, int) or stopping.patience < 1:
        raise JaxcnnError(f"early_stopping.patience must be a positive integer, got {stopping.patience!r}")
    if stopping.enabled and config.dataset.val_fraction == 0:
        raise JaxcnnError("early_stopping.enabled needs a validation split; set dataset.val_fraction > 0")


def model_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The model constructor's keyword arguments: `config.model` without its name."""
    return {k: v for k, v in config.model.items() if k != "name"}


def dataset_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The dataset loader's own options: `config.dataset` without the common keys."""
    return {k: v for k, v in config.dataset.items() if k not in DATASET_COMMON_KEYS}


def config_to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)

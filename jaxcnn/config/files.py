"""Config files: finding the file `--config` names (a preset, a Python file, a run's `config.json`),
running a Python config file, reading a JSON config. What the config means is `jaxcnn.config`'s.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import pathlib
import traceback
from typing import Any

import ml_collections

from jaxcnn.checks import without_bytecode
from jaxcnn.errors import JaxcnnError

# The presets, shipped in the package: found from the package, not from this file's folder, so that
# the module can live in any sub-package (scripts/relayout.py moves it).
CONFIGS_DIR = pathlib.Path(importlib.util.find_spec("jaxcnn.configs").origin).resolve().parent
DEFAULT_CONFIG = "digits_cnn"
CONFIG_SUFFIXES = (".py", ".json")  # a Python config file, a run's config.json


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


def run_config_file(file: pathlib.Path) -> ml_collections.ConfigDict:
    """`get_config()` of the Python config file `file`. An exception raised while importing it or
    inside `get_config()` becomes one line naming the file, the line and the message."""
    try:
        spec = importlib.util.spec_from_file_location(f"jaxcnn_config_{file.stem}", file)
        module = importlib.util.module_from_spec(spec)
        with without_bytecode():
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


def read_json_config(file: pathlib.Path) -> ml_collections.ConfigDict:
    """A run's `config.json` as a locked ConfigDict; refused unless it has `model` and `dataset` sections."""
    try:
        loaded = config_from_json(file.read_text())
    except (OSError, ValueError, JaxcnnError) as e:  # ValueError: bad JSON or not UTF-8
        raise JaxcnnError(f"{file}: cannot be read as a JSON config: {' '.join(str(e).split())}") from e
    sections = [key for key in ("model", "dataset") if not isinstance(loaded.get(key), ml_collections.ConfigDict)]
    if sections:
        raise JaxcnnError(f"{file}: not a jaxcnn config (no '{sections[0]}' section); expected a run's "
                          "config.json as `jaxcnn train` writes it")
    return loaded


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
    return as_tuple(value)


def as_tuple(value: Any) -> Any:
    """Lists (JSON's, a literal's) as tuples, nested too."""
    return tuple(as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value

"""The workdir: which folder a training run uses, and whether it resumes the run already there.

Choosing writes nothing: every refusal (a finished run, a different config, checkpointing off)
leaves the workdir exactly as it was.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import ml_collections

from jaxcnn.checkpoint import CHECKPOINT_DIR, validate_checkpoint_config
from jaxcnn.errors import JaxcnnError

# Config keys that may differ when a run is resumed; any other difference is refused.
RESUMABLE_KEYS = ("num_epochs", "log_every_steps", "eval_batch_size", "dataset.data_dir", "steps_per_call",
                  "max_steps", "limit_eval_batches")
RESUMABLE_SECTIONS = ("checkpoint.",)
# Written into config.json from the training split when dataset.per_channel_stats is on.
MEASURED_KEYS = ("dataset.mean", "dataset.std")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys (dotted) whose values differ between two configs as JSON dicts, ignoring the keys a
    resumed run may change; each as `key (saved -> now)`. When a section's `name` differs (another
    model or dataset), that name stands for the whole section."""
    old, new = _flatten(saved), _flatten(current)
    renamed = tuple(key[: -len("name")] for key in set(old) & set(new)
                    if key.endswith(".name") and old[key] != new[key])
    differing = []
    for key in sorted(set(old) | set(new)):
        if key in RESUMABLE_KEYS or key.startswith(RESUMABLE_SECTIONS) or old.get(key) == new.get(key):
            continue
        if key in MEASURED_KEYS and new.get("dataset.per_channel_stats"):
            continue  # measured on the training split and recorded in config.json: not a user change
        if key.startswith(renamed) and not key.endswith(".name"):
            continue
        differing.append(f"{key} ({json.dumps(old.get(key, '<unset>'))} -> {json.dumps(new.get(key, '<unset>'))})")
    return differing


def holds_run(path: pathlib.Path) -> bool:
    """Whether `path` has anything of a run: metrics, a config or a committed checkpoint step
    (a `checkpoints/` folder with only unfinished temporary folders is not a run yet)."""
    folder = path / CHECKPOINT_DIR
    committed = folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())
    return committed or any((path / name).exists() for name in ("metrics.jsonl", "config.json"))


def fresh_subfolder(path: pathlib.Path) -> pathlib.Path:
    """`path/run-N` for the smallest N >= 2 not yet taken (the interrupted run stays where it is)."""
    number = 2
    while holds_run(path / f"run-{number}") or (path / f"run-{number}").is_file():
        number += 1
    return path / f"run-{number}"


def choose_workdir(workdir: str | pathlib.Path, config: ml_collections.ConfigDict,
                   fresh: bool = False) -> tuple[pathlib.Path, bool]:
    """The workdir to train in, and whether to resume the run already there.

    Writes nothing: every refusal (a finished run, a different config, checkpointing off) leaves
    the workdir exactly as it was.
    """
    validate_checkpoint_config(config.checkpoint)
    path = pathlib.Path(workdir)
    if not path.is_dir() or not holds_run(path):
        return path, False
    if fresh:
        return fresh_subfolder(path), False
    config_file = path / "config.json"
    try:
        saved = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise JaxcnnError(f"{config_file}: cannot read the interrupted run's config ({e}); "
                          "pass --fresh to start over in a new subfolder") from e
    current = json.loads(json.dumps(config.to_dict()))  # tuples -> lists, as in the saved file
    differing = config_differences(saved, current)
    if differing:
        raise JaxcnnError(f"workdir '{path}' holds a run with a different config: {'; '.join(differing)}; "
                          f"resume with the saved config ({config_file}) or pass --fresh to start a new "
                          "run in a subfolder")
    if (path / "summary.json").exists():
        raise JaxcnnError(f"workdir '{path}' holds a finished run (summary.json); evaluate it with "
                          f"`jaxcnn eval --workdir {path}`, or pass --fresh to train again in a new subfolder")
    if not config.checkpoint.enabled:
        raise JaxcnnError(f"workdir '{path}' already holds a run and checkpoint.enabled is false, so it "
                          "cannot be resumed; pass --fresh or a new --workdir")
    return path, True


def prepare_workdir(workdir: str | pathlib.Path) -> pathlib.Path:
    """The workdir, created if missing."""
    path = pathlib.Path(workdir)
    if path.exists() and not path.is_dir():
        raise JaxcnnError(f"workdir '{path}' is a file; pass a directory path to --workdir")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JaxcnnError(f"workdir '{path}' cannot be created: {e.strerror}; pass a writable --workdir") from e
    return path

"""The weights another run left in its checkpoints, for fine-tuning (`config.init_from=WORKDIR[:STEP]`).

Read by name, without rebuilding the source run's model or optimizer: Orbax restores the saved tree
as it was written (nested dicts of arrays), and only `params` and `batch_stats` are taken, or the
moving averages when the source ran with EMA (the weights its test used). Here, beside the
checkpoints, so that training can read them (`jaxcnn.commands` sits above training).
"""

from __future__ import annotations

import pathlib
from typing import Any, NamedTuple

import orbax.checkpoint as ocp

from jaxcnn.core.finetune import parse_init_from
from jaxcnn.errors import JaxcnnError
from jaxcnn.files import checkpoint


class Pretrained(NamedTuple):
    """A source run's weights: `params`, `batch_stats` (host arrays), its classes, where they came from."""

    params: Any
    batch_stats: Any
    num_classes: int
    where: str


def choose_step(steps: list[int], step: str | None, best: int | None, directory: pathlib.Path) -> int:
    """STEP of `init_from`: None or "latest" the latest, "best" the early-stopping best, or a number."""
    if step in (None, "latest"):
        return max(steps)
    chosen = best if step == "best" else int(step)
    if chosen is None or chosen not in steps:
        raise JaxcnnError(f"init_from: {directory} has no checkpoint for step {step}; it has steps "
                          f"{', '.join(map(str, sorted(steps)))} (or use latest)")
    return chosen


def read_pretrained(value: str) -> Pretrained:
    """The weights of `init_from`'s run (`WORKDIR[:STEP]`); a missing, unfinished or multi-member
    source is refused in one line."""
    workdir, step = parse_init_from(value)
    directory = pathlib.Path(workdir) / checkpoint.CHECKPOINT_DIR
    if not directory.is_dir():
        raise JaxcnnError(f"init_from: '{workdir}' has no {checkpoint.CHECKPOINT_DIR}/ folder; give the workdir "
                          "of a run trained with checkpoint.enabled=true (WORKDIR[:STEP])")
    manager = checkpoint.open_manager(directory, read_only=True)
    try:
        if not manager.all_steps():
            raise JaxcnnError(f"init_from: {directory} holds no committed checkpoint")
        meta = checkpoint.read_meta(manager, manager.latest_step())
        chosen = choose_step(list(manager.all_steps()), step, meta.get("best_step"), directory)
        if meta.get("members"):
            raise JaxcnnError(f"init_from: '{workdir}' trained {len(meta['members'])} members; fine-tune from a "
                              "single run (train the member you want alone, seed=K)")
        saved = manager.restore(chosen, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    except JaxcnnError:
        raise
    except Exception as e:  # Orbax and tensorstore raise many types for damaged files
        raise JaxcnnError(f"init_from: the checkpoint in {directory} cannot be read ({type(e).__name__})") from e
    finally:
        manager.close()
    state = saved["train_state"]
    weights = state["ema"] if state.get("ema") else state  # the averages: what the source run tested
    return Pretrained(weights["params"], weights.get("batch_stats") or {}, int(meta["num_classes"]),
                      f"{workdir} step {chosen}")

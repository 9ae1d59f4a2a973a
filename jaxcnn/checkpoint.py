"""Checkpoints: an Orbax `CheckpointManager` under `WORKDIR/checkpoints`, and resuming from it.

Each checkpoint step holds two items, neither pickled:
- `state`: the `TrainState` pytree (params, batch_stats, opt_state, step, rng) and the loop's
  on-device log-interval accumulators, written by Orbax's `StandardSave` (tensorstore);
- `meta`: JSON: where the loop stands (`LoopState`: epoch and position in that epoch's shuffled
  order, the per-epoch sums, early-stopping and plateau state, the length of `metrics.jsonl`),
  the best step so far, the config, the dataset's input shape and classes, library versions.

Retention: Orbax's `best_fn` + `max_to_keep` can delete the latest step, so the manager gets
preservation policies instead: `LatestN(keep)` + `BestN(keep_best)`. "Best" is the early-stopping
tracker's best epoch (monitor and min_delta of `early_stopping`), the parameters the final test
uses when `restore_best` is on; it is recorded here (`best_step` in every step's meta) and given
to `BestN` as a rank (the epoch number of an epoch-end step that improved, 0 otherwise), so the
two never disagree: `BestN` keeps the last `keep_best` improvements.

Saves are asynchronous (the device-to-host copy happens before `save` returns, the writing in the
background) and atomic: Orbax writes `<step>.orbax-checkpoint-tmp*` and renames it when complete,
so a `kill -9` at any moment leaves the last committed step intact; leftovers are deleted when the
next run opens the manager.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import json
import os
import pathlib
import signal
import sys
import threading
from typing import Any, Callable

import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from jaxcnn.distributed import any_process, barrier, is_main_process
from jaxcnn.errors import JaxcnnError
from jaxcnn.loop_state import LoopState, due

CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "corrupt-checkpoints"
# Test hook: seconds each save waits, in its background commit, before writing its metadata, so a
# test can kill the process while a save is in flight. Unset in normal use.
SAVE_DELAY_ENV = "JAXCNN_CHECKPOINT_SAVE_DELAY_S"
VERSIONED_PACKAGES = ("jaxcnn", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint")


class TrainingInterrupted(Exception):
    """Raised by the loop after SIGTERM/SIGINT once the checkpoint is committed (exit status 0)."""

    def __init__(self, signal_name: str, step: int, workdir: pathlib.Path, saved: bool = True):
        self.signal_name, self.step, self.workdir = signal_name, step, workdir
        if not saved:
            super().__init__(f"{signal_name}: stopped after step {step}; nothing saved (checkpoint.enabled is "
                             "false)")
            return
        super().__init__(f"{signal_name}: stopped after step {step}; checkpoint saved in "
                         f"{workdir / CHECKPOINT_DIR}; resume with the same command: "
                         f"jaxcnn train --workdir {workdir} (and the same --config options)")


def library_versions() -> dict[str, str]:
    """Installed versions of the packages a checkpoint depends on ("unknown" for a source tree)."""
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


# ---------------------------------------------------------------------------- stop signals


class StopSignals:
    """SIGTERM / SIGINT -> a flag the loop polls after each step (no `jax.distributed` needed).

    A second SIGINT raises KeyboardInterrupt at once, for a user who does not want to wait.
    """

    def __init__(self) -> None:
        self.received: str | None = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)
            signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = name
        print(f"jaxcnn: {name} received: saving a checkpoint after the current call "
              "(press Ctrl-C again to quit without saving)", file=sys.stderr, flush=True)


def restores_signal_handlers(fn: Callable) -> Callable:
    """Decorator: whatever `fn` installs for SIGTERM/SIGINT is undone when it returns or raises."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return fn(*args, **kwargs)
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            return fn(*args, **kwargs)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    return wrapper


# ---------------------------------------------------------------------------- the manager


class _MetaHandler(ocp.JsonCheckpointHandler):
    """JSON metadata item; optionally delayed inside the background commit (`SAVE_DELAY_ENV`).

    Overrides `_save_fn`, the coroutine the pinned orbax-checkpoint 0.12.8 runs in the commit.
    """

    def __init__(self, delay_s: float = 0.0):
        super().__init__()
        self._delay_s = delay_s

    async def _save_fn(self, x: Any, directory: Any) -> None:
        if self._delay_s:
            await asyncio.sleep(self._delay_s)
        await super()._save_fn(x, directory)


def _save_delay() -> float:
    raw = os.environ.get(SAVE_DELAY_ENV, "")
    try:
        return float(raw) if raw else 0.0
    except ValueError as e:
        raise JaxcnnError(f"{SAVE_DELAY_ENV} must be a number of seconds, got {raw!r}") from e


def open_manager(directory: pathlib.Path, *, keep: int = 2, keep_best: int = 1, async_save: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
    """The Orbax manager with this module's items and retention.

    `read_only`: creates and cleans nothing (the caller must not save); Orbax's own read_only
    option is not used because it logs warnings on every open.
    """
    policies = [checkpoint_managers.LatestN(keep),
                checkpoint_managers.BestN(get_metric_fn=lambda m: m["best_rank"], n=keep_best,
                                          keep_checkpoints_without_metrics=False)]
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        cleanup_tmp_directories=not read_only, create=not read_only, enable_async_checkpointing=async_save)
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    state_handler, meta_handler = ocp.StandardCheckpointHandler(), _MetaHandler(_save_delay())
    registry.add("state", ocp.args.StandardSave, state_handler)
    registry.add("state", ocp.args.StandardRestore, state_handler)
    registry.add("meta", ocp.args.JsonSave, meta_handler)
    registry.add("meta", ocp.args.JsonRestore, meta_handler)
    return ocp.CheckpointManager(directory.absolute(), options=options, handler_registry=registry)


def _abstract(tree: Any) -> Any:
    """Shapes, dtypes and shardings of `tree`: Orbax restores each array onto the current
    state's devices, whatever the topology it was saved from."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def read_arrays(manager: ocp.CheckpointManager, step: int, like: dict[str, Any]) -> dict[str, Any]:
    """The `state` item of `step`, restored into the structure, dtypes and shardings of `like`."""
    return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(like))))["state"]


class Checkpointer:
    """The training loop's side of checkpointing: save, restore the latest good step, stop on signal.

    Every process of a multi-process run holds one, over the same shared workdir: all of them
    save and restore together (Orbax writes each array once), and they agree on when to stop.
    With `checkpoint.enabled` false nothing is saved, and a stop signal just stops.
    """

    def __init__(self, workdir: pathlib.Path, config: ml_collections.ConfigDict, run_info: dict[str, Any],
                 watch_signals: bool = False):
        self.workdir = workdir
        self.section = config.checkpoint
        self.manager = open_manager(workdir / CHECKPOINT_DIR, keep=self.section.keep,
                                    keep_best=self.section.keep_best,
                                    async_save=self.section.async_save) if self.section.enabled else None
        self.static_meta = {"config": json.loads(json.dumps(config.to_dict())), "versions": library_versions(),
                            **run_info}
        self.best_step: int | None = None
        self.signals = StopSignals()
        if watch_signals:
            self.signals.install()

    @property
    def every_steps(self) -> int:
        return self.section.every_steps if self.section.enabled else 0

    @property
    def stop_reason(self) -> str:
        return self.signals.received or "a stop signal to another process"

    def stop_agreed(self, sync_point: bool) -> bool:
        """Whether to stop now for a SIGTERM/SIGINT received by this process or, with several
        processes, by any of them. Those agree only at `sync_point`s (log, save and epoch
        boundaries, reached at the same steps by every process), so no call waits for them."""
        if jax.process_count() == 1:
            return self.signals.received is not None
        return sync_point and any_process(self.signals.received is not None)

    def due_in_epoch(self, step: int, stop: bool) -> bool:
        return self.section.enabled and (stop or due(step, self.section.every_steps))

    def due_at_epoch_end(self, step: int, improved: bool, last: bool, stop: bool) -> bool:
        """Epoch ends save when configured, on a save interval, on a new best (so the best is
        always on disk), at the end of training, and on a stop request."""
        return self.section.enabled and (self.section.on_epoch_end or improved or last or stop
                                         or due(step, self.section.every_steps))

    def save(self, state: Any, totals: dict[str, Any], loop: LoopState, *,
             improved: bool | None = None, monitor: str = "", value: float | None = None) -> None:
        """Saves asynchronously. `improved` is None for a step without validation metrics
        (mid-epoch), else whether this epoch-end step is the tracker's new best."""
        metrics = None
        if improved is not None:
            if improved:
                self.best_step = loop.step
            metrics = {"best_rank": loop.epochs_run if improved else 0, monitor: value}
        meta = {**self.static_meta, "loop": loop.to_json(), "best_step": self.best_step}
        self.manager.save(loop.step, args=ocp.args.Composite(
            state=ocp.args.StandardSave({"train_state": state, "totals": totals}),
            meta=ocp.args.JsonSave(meta)), metrics=metrics, force=True)

    def restore_latest(self, state: Any, totals: dict[str, Any]) -> tuple[Any, dict[str, Any], LoopState] | None:
        """The newest readable step as (state, totals, loop), or None when there is none.

        An unreadable step (truncated or corrupted files) is reported on stderr and the step
        before it is tried; once a good step is found, the unreadable newer ones are moved to
        `WORKDIR/corrupt-checkpoints/` (kept, and out of the way of the next saves). When no step
        can be read, nothing is moved and the run stops with an error.
        """
        unreadable: list[tuple[int, Exception]] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                meta = read_meta(self.manager, step)
                restored = read_arrays(self.manager, step, {"train_state": state, "totals": totals})
                loop = LoopState.from_json(meta["loop"])
            except Exception as e:  # any failure to read a step means that step is unusable
                print(f"jaxcnn: warning: checkpoint step {step} cannot be read ({type(e).__name__}: "
                      f"{str(e)[:200]}); trying the step before it", file=sys.stderr, flush=True)
                unreadable.append((step, e))
                continue
            if tuple(meta["input_shape"]) != tuple(self.static_meta["input_shape"]):
                raise JaxcnnError(f"checkpoint step {step} in {self.manager.directory} is for input shape "
                                  f"{tuple(meta['input_shape'])}, the dataset gives "
                                  f"{tuple(self.static_meta['input_shape'])}; pass --fresh to start a new run")
            for bad_step, _ in unreadable:
                self._set_aside(bad_step)
            self.best_step = meta["best_step"]
            return restored["train_state"], restored["totals"], loop
        if unreadable:
            step, error = unreadable[0]
            raise JaxcnnError(f"no checkpoint in {self.manager.directory} can be read (step {step}: "
                              f"{type(error).__name__}); pass --fresh to start a new run in a subfolder")
        return None

    def restore_variables(self, step: int, state: Any, totals: dict[str, Any]) -> tuple[Any, Any]:
        """(params, batch_stats) of `step`: the early-stopping best, for `restore_best`."""
        try:
            restored = read_arrays(self.manager, step, {"train_state": state, "totals": totals})["train_state"]
        except Exception as e:
            raise JaxcnnError(f"the best checkpoint (step {step} in {self.manager.directory}) cannot be read "
                              f"({type(e).__name__}); pass --fresh to start over") from e
        return restored.params, restored.batch_stats

    def _set_aside(self, step: int) -> None:
        target = self.workdir / CORRUPT_DIR / str(step)
        if is_main_process():
            target.parent.mkdir(exist_ok=True)
            os.replace(self.manager.directory / str(step), target)
            print(f"jaxcnn: warning: moved the unreadable checkpoint step {step} to {target}",
                  file=sys.stderr, flush=True)
        barrier(f"jaxcnn-set-aside-{step}")
        self.manager.reload()

    def wait(self) -> None:
        if self.manager is not None:
            self.manager.wait_until_finished()

    def close(self) -> None:
        if self.manager is not None:
            self.manager.wait_until_finished()
            self.manager.close()

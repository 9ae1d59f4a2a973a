"""Checkpoints: an Orbax `CheckpointManager` under `WORKDIR/checkpoints`, and resuming from it.

Each checkpoint step holds two items, neither pickled:
- `state`: the `TrainState` pytree (params, batch_stats, opt_state, step, rng) and the loop's
  on-device log-interval accumulators, written by Orbax's `StandardSave` (tensorstore);
- `meta`: JSON: where the loop stands (`LoopState`: epoch and position in that epoch's shuffled
  order, the per-epoch sums, early-stopping and plateau state, the length of `metrics.jsonl`),
  the best step so far, the config, the dataset's input shape and classes, library versions,
  and with `dataset.input=grain` every process's input iterator state (`inputs`, one per process,
  Grain's `get_state()`: `jaxcnn.data.grain_feed`), restored into the feed on resume.

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
import errno
import importlib.metadata
import json
import os
import pathlib
import shlex
import shutil
import sys
import time
import warnings
from typing import Any, Callable

import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from jaxcnn.core import ema
from jaxcnn.runtime import stop
from jaxcnn.runtime.distributed import any_process, barrier, is_main_process
from jaxcnn.errors import JaxcnnError, os_error_text
from jaxcnn.core.loop_state import LoopState, due
from jaxcnn.runtime.orbax_logs import silence_orbax_logs

# Moved to jaxcnn.runtime.stop (light, so the command installs them first); kept here for callers.
StopSignals, restores_signal_handlers = stop.StopSignals, stop.restores_signal_handlers

CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "corrupt-checkpoints"
# Test hook: seconds each save waits, in its background commit, before writing its metadata, so a
# test can kill the process while a save is in flight. Unset in normal use.
SAVE_DELAY_ENV = "JAXCNN_CHECKPOINT_SAVE_DELAY_S"
# Test hook: the background commit of every save after the first N raises OSError(ENOSPC), as a
# full disk would. Unset in normal use.
SAVE_FAIL_ENV = "JAXCNN_CHECKPOINT_FAIL_AFTER_SAVES"
VERSIONED_PACKAGES = ("jaxcnn", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint")


class TrainingInterrupted(Exception):
    """Raised by the loop after SIGTERM/SIGINT once the checkpoint is committed (exit status 0)."""

    def __init__(self, signal_name: str, step: int, workdir: pathlib.Path, saved: bool = True,
                 data_dir: str = ""):
        self.signal_name, self.step, self.workdir = signal_name, step, workdir
        if not saved:
            super().__init__(f"{signal_name}: stopped after step {step}; nothing saved (checkpoint.enabled is "
                             "false)")
            return
        super().__init__(f"{signal_name}: stopped after step {step}; checkpoint saved in "
                         f"{workdir / CHECKPOINT_DIR}; resume with: {resume_command(workdir, data_dir)}")


def resume_command(workdir: pathlib.Path, data_dir: str = "") -> str:
    """The command that resumes the run in `workdir`: its own config.json is its config."""
    workdir = pathlib.Path(workdir)
    command = f"jaxcnn train --workdir {shlex.quote(str(workdir))} --config {shlex.quote(str(workdir / 'config.json'))}"
    return command + (f" --data-dir {shlex.quote(str(data_dir))}" if data_dir else "")


def library_versions() -> dict[str, str]:
    """Installed versions of the packages a checkpoint depends on ("unknown" for a source tree)."""
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


# ---------------------------------------------------------------------------- the manager


class _MetaHandler(ocp.JsonCheckpointHandler):
    """JSON metadata item; optionally delayed (`SAVE_DELAY_ENV`) or failing (`SAVE_FAIL_ENV`)
    inside the background commit.

    Overrides `_save_fn`, the coroutine the pinned orbax-checkpoint 0.12.8 runs in the commit.
    """

    def __init__(self, delay_s: float = 0.0, fail_after: int | None = None):
        super().__init__()
        self._delay_s, self._fail_after, self._saves = delay_s, fail_after, 0

    async def _save_fn(self, x: Any, directory: Any) -> None:
        self._saves += 1
        if self._delay_s:
            await asyncio.sleep(self._delay_s)
        if self._fail_after is not None and self._saves > self._fail_after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
        await super()._save_fn(x, directory)


def _hook_number(name: str, kind: type) -> Any:
    raw = os.environ.get(name, "")
    try:
        return kind(raw) if raw else None
    except ValueError as e:
        raise JaxcnnError(f"{name} must be a {kind.__name__} number, got {raw!r}") from e


def open_manager(directory: pathlib.Path, *, keep: int = 2, keep_best: int = 1, async_save: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
    """The Orbax manager with this module's items and retention.

    `read_only`: creates and cleans nothing (the caller must not save); Orbax's own read_only
    option is not used because it logs warnings on every open.
    """
    silence_orbax_logs()
    policies = [checkpoint_managers.LatestN(keep),
                checkpoint_managers.BestN(get_metric_fn=lambda m: m["best_rank"], n=keep_best,
                                          keep_checkpoints_without_metrics=False)]
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        cleanup_tmp_directories=not read_only, create=not read_only, enable_async_checkpointing=async_save)
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    state_handler = ocp.StandardCheckpointHandler()
    meta_handler = _MetaHandler(_hook_number(SAVE_DELAY_ENV, float) or 0.0, _hook_number(SAVE_FAIL_ENV, int))
    registry.add("state", ocp.args.StandardSave, state_handler)
    registry.add("state", ocp.args.StandardRestore, state_handler)
    registry.add("meta", ocp.args.JsonSave, meta_handler)
    registry.add("meta", ocp.args.JsonRestore, meta_handler)
    return ocp.CheckpointManager(directory.absolute(), options=options, handler_registry=registry)


def remove_unfinished_saves(directory: pathlib.Path) -> None:
    """Removes the temporary folders of failed saves. Writes of the same save still running in
    Orbax's threads may create one again for a moment: looks again until none comes back (~2 s at most)."""
    for _ in range(10):
        leftovers = list(directory.glob("*.orbax-checkpoint-tmp*"))
        if not leftovers:
            return
        for leftover in leftovers:
            shutil.rmtree(leftover, ignore_errors=True)
        time.sleep(0.2)


def _abstract(tree: Any) -> Any:
    """Shapes, dtypes and shardings of `tree`: Orbax restores each array onto the current
    state's devices, whatever the topology it was saved from."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def read_arrays(manager: ocp.CheckpointManager, step: int, like: dict[str, Any]) -> dict[str, Any]:
    """The `state` item of `step`, restored into the structure, dtypes and shardings of `like`."""
    return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(like))))["state"]


def _members_text(members: list[dict] | None) -> str:
    if not members:
        return "a single run"
    return f"{len(members)} members (seeds {', '.join(str(m['seed']) for m in members[:8])}{', ...' * (len(members) > 8)})"


def save_interval(section: ml_collections.ConfigDict) -> int:
    """The steps between the saves of a config's `checkpoint` section (0: only at epoch ends, or none)."""
    return section.every_steps if section.enabled else 0


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
        self.restored_inputs: list[Any] | None = None  # every process's input state, of the step restored
        self.in_flight: int | None = None  # the step of the save not yet known to be committed
        self.failed = False  # a save failed (reported once, in one line)
        self.signals = stop.SIGNALS
        if watch_signals:
            self.signals.install()

    @property
    def directory(self) -> pathlib.Path:
        return self.workdir / CHECKPOINT_DIR

    @property
    def every_steps(self) -> int:
        return save_interval(self.section)

    @property
    def stop_reason(self) -> str:
        return self.signals.received or "a stop signal to another process"

    def stop_agreed(self, sync_point: bool) -> bool:
        """Whether to stop now for a SIGTERM/SIGINT received by this process or, with several
        processes, by any of them. Those agree only at `sync_point`s (log, save and epoch
        boundaries, reached at the same steps by every process), so no call waits for them."""
        self.check_saves(sync_point)
        if jax.process_count() == 1:
            return self.signals.received is not None
        return sync_point and any_process(self.signals.received is not None)

    def check_saves(self, sync_point: bool = True) -> None:
        """Raises, in one line, the failure of a background save that has ended (disk full,
        permissions): checked after every call, so the run stops at the next call boundary (with
        several processes at `sync_point`s, all together)."""
        if jax.process_count() > 1 and not sync_point:
            return
        ended = self.in_flight is not None and not self.manager.is_saving_in_progress()
        self._raise(self._settle() if ended else None)

    def _raise(self, error: JaxcnnError | None) -> None:
        """Raises `error`; with several processes all raise when any has one (every process must
        call this at the same point)."""
        if jax.process_count() > 1 and any_process(error is not None) and error is None:
            error = JaxcnnError(f"a checkpoint save in {self.directory} failed in another process of this run "
                                "(see its message); fix the cause and run the same command to resume")
        if error is not None:
            raise error

    def _settle(self) -> JaxcnnError | None:
        """Waits for the save in flight; its failure as the one-line error (None: committed)."""
        step, self.in_flight = self.in_flight, None
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # Orbax and tensorstore raise many types for an OS error
            return self._failure(step, e)
        return None

    def _failure(self, step: int | None, error: BaseException) -> JaxcnnError:
        """The one-line error for a failed save of `step`; its temporary folder removed."""
        self.failed = True
        # Orbax's coroutines of the failed save are left unawaited; Python would warn about each.
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
        if is_main_process():
            remove_unfinished_saves(self.directory)
        kept = self.latest_committed_step()
        kept_text = f"the checkpoint of step {kept} is kept" if kept is not None else "no checkpoint was committed yet"
        return JaxcnnError(f"cannot save the checkpoint of step {step} in {self.directory}: {os_error_text(error)}; "
                           f"{kept_text}; fix the cause (disk space, permissions) and run the same command to resume")

    def latest_committed_step(self) -> int | None:
        """The newest committed step on disk (None: none, or checkpointing off)."""
        if self.manager is None or not self.directory.is_dir():
            return None
        return max((int(p.name) for p in self.directory.iterdir() if p.name.isdigit()), default=None)

    def due_in_epoch(self, step: int, stop: bool) -> bool:
        return self.section.enabled and (stop or due(step, self.section.every_steps))

    def due_at_epoch_end(self, step: int, improved: bool, last: bool, stop: bool) -> bool:
        """Epoch ends save when configured, on a save interval, on a new best (so the best is
        always on disk), at the end of training, and on a stop request."""
        return self.section.enabled and (self.section.on_epoch_end or improved or last or stop
                                         or due(step, self.section.every_steps))

    def save(self, state: Any, totals: dict[str, Any], loop: LoopState, *,
             improved: bool | None = None, monitor: str = "", value: float | None = None,
             inputs: list[Any] | None = None) -> None:
        """Saves asynchronously. `improved` is None for a step without validation metrics
        (mid-epoch), else whether this epoch-end step is the tracker's new best. `inputs`: every
        process's input iterator state (JSON), or None for feeds that have none."""
        metrics = None
        if improved is not None:
            if improved:
                self.best_step = loop.step
            metrics = {"best_rank": loop.epochs_run if improved else 0, monitor: value}
        meta = {**self.static_meta, "loop": loop.to_json(), "best_step": self.best_step,
                **({"inputs": inputs} if inputs is not None else {})}
        self.wait()  # Orbax waits for the save before anyway; this reports its failure in one line
        try:
            self.manager.save(loop.step, args=ocp.args.Composite(
                state=ocp.args.StandardSave({"train_state": state, "totals": totals}),
                meta=ocp.args.JsonSave(meta)), metrics=metrics, force=True)
        except Exception as e:  # synchronous parts of the save: creating its folder, a sync save
            raise self._failure(loop.step, e) from e
        self.in_flight = loop.step

    def restore_latest(self, state: Any, totals: dict[str, Any], loop_from_json: Callable[[dict], Any] = LoopState.from_json
                       ) -> tuple[Any, dict[str, Any], LoopState] | None:
        """The newest readable step as (state, totals, loop), or None when there is none.
        `loop_from_json` reads the loop's record (a run of members keeps one per member).

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
                loop = loop_from_json(meta["loop"])
            except Exception as e:  # any failure to read a step means that step is unusable
                print(f"jaxcnn: warning: checkpoint step {step} cannot be read ({type(e).__name__}: "
                      f"{' '.join(str(e).split())[:200]}); trying the step before it", file=sys.stderr, flush=True)
                unreadable.append((step, e))
                continue
            if tuple(meta["input_shape"]) != tuple(self.static_meta["input_shape"]):
                raise JaxcnnError(f"checkpoint step {step} in {self.manager.directory} is for input shape "
                                  f"{tuple(meta['input_shape'])}, the dataset gives "
                                  f"{tuple(self.static_meta['input_shape'])}; pass --fresh to start a new run")
            if meta.get("members") != self.static_meta.get("members"):
                raise JaxcnnError(f"checkpoint step {step} in {self.manager.directory} is for "
                                  f"{_members_text(meta.get('members'))}, this config trains "
                                  f"{_members_text(self.static_meta.get('members'))}; pass --fresh to start a new run")
            for bad_step, _ in unreadable:
                self._set_aside(bad_step)
            self.best_step, self.restored_inputs = meta["best_step"], meta.get("inputs")
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
        restored = ema.view(restored)  # the weights validated: the averages when EMA is on
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

    def wait(self, agree: bool = True) -> None:
        """Waits for the save in flight; raises its failure in one line (in every process when
        `agree`: then every process must call it at the same point)."""
        if self.manager is None:
            return
        error = self._settle() if self.in_flight is not None else None
        if agree:
            self._raise(error)
        elif error is not None:
            raise error

    def close(self) -> None:
        if self.manager is None:
            return
        try:
            if not self.failed:
                self.wait(agree=False)  # also after another error, which other processes may not share
        finally:
            try:
                self.manager.close()
            except Exception:  # after a failed save Orbax may raise it again: reported already
                if not self.failed:
                    raise


"""`train_and_evaluate`: the training loop, as a table of contents.

build the run (data, members, state, compiled calls, checkpoints, writers: `jaxcnn.training.run`) -> for
each epoch: train the epoch (logging and saving on the way), end the epoch (validate, early stop,
plateau, save, epoch line) -> finish (test, predictions, summary, certificate: `jaxcnn.training.summary`).

Every run trains M members (a single run is the case of one): the host's bookkeeping is one
tracker per member (`loop_state.RunLoop`) and the device values come with a member axis when the
state is stacked (`Run.stacked`). What runs where is the executor's business (`jaxcnn.core.executor`);
who writes is the writer's (`jaxcnn.files.writers.RunWriter`). The host touches device values only at
logging intervals and once per epoch.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcnn import data
from jaxcnn.core import ema, members, optim
from jaxcnn.files import checkpoint
from jaxcnn.runtime import stop
from jaxcnn.core.executor import plan_calls
from jaxcnn.core.loop_state import RunLoop, due
from jaxcnn.training.callbacks import Callback, CallbackFailed, Callbacks
from jaxcnn.training.run import Run, build_run
from jaxcnn.training.summary import epoch_line, finish, member_field, scale_fields


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                       data_dir: str | None = None, quiet: bool = False, fresh: bool = False,
                       dataset: data.Dataset | None = None, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Trains `config`'s model (or its members: seeds, a sweep) on its dataset, evaluates it on the
    test split, writes the workdir.

    A workdir holding an unfinished run is resumed from its last checkpoint (`fresh`: start a new
    run in a subfolder instead). SIGTERM/SIGINT save a checkpoint after the current call (with
    several processes: at the next logging or saving step, all processes together) and raise
    `checkpoint.TrainingInterrupted`; one received during start-up stops before training
    (`stop.StartupInterrupted`). A non-finite loss stops the run (`divergence.TrainingDiverged`,
    with `on_nonfinite=stop`). `dataset`: an already built dataset (`Dataset.from_arrays`) instead
    of `config.dataset.name`'s. `callbacks`: `jaxcnn.Callback`s (`jaxcnn.training.callbacks`).
    Returns the summary (also written to `workdir/summary.json`).
    """
    return fit(config, workdir, data_dir=data_dir, quiet=quiet, fresh=fresh, dataset=dataset,
               callbacks=callbacks).summary


@dataclasses.dataclass(frozen=True)
class Trained:
    """What a finished training run leaves in memory: its summary and the state its test used
    (stacked over the members of a run of members)."""

    summary: dict[str, Any]
    state: Any
    config: ml_collections.ConfigDict  # as written to config.json (normalisation included)
    workdir: pathlib.Path
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...]


@checkpoint.restores_signal_handlers
def fit(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, data_dir: str | None = None,
        quiet: bool = False, fresh: bool = False, dataset: data.Dataset | None = None,
        callbacks: Sequence[Callback] = ()) -> Trained:
    """`train_and_evaluate`, returning the trained state too (the table of contents of a run)."""
    hooks = Callbacks.of(callbacks)  # not callbacks: refused before the workdir is touched
    run, state, loop = build_run(config, workdir, data_dir, quiet, fresh, dataset, hooks)
    try:
        stop.check_startup(agree=True)  # the loop's first check: a signal during start-up stops here
        hooks.call("on_train_start", train_info(run, loop))
        hooks.raise_failure(f"stopped before step {loop.step + 1}; nothing more trained")
        while loop.epoch <= run.config.num_epochs and not loop.all_stopped and not run.out_of_steps(loop):
            state = train_epoch(run, state, loop)
            state = end_epoch(run, state, loop)
        summary, state = finish(run, state, loop)
        hooks.call("on_train_end", summary)
        hooks.raise_failure(f"the run had finished: {run.workdir / 'summary.json'} is written")
        return Trained(summary, state, run.config, run.workdir, run.dataset.input_shape, run.dataset.class_names)
    finally:
        run.close()


def train_info(run: Run, loop: RunLoop) -> dict[str, Any]:
    """What `Callback.on_train_start` receives: the run's facts and where it starts."""
    return {"workdir": str(run.workdir), "config": run.config.to_dict(), "num_members": run.num_members,
            "members": [m.to_json() for m in run.members] if run.stacked else None,
            "steps_per_epoch": run.steps_per_epoch, "num_epochs": run.config.num_epochs,
            "start_step": loop.step, "start_epoch": loop.epoch, "resumed": loop.step > 0}


# ---------------------------------------------------------------------------- one epoch


def train_epoch(run: Run, state: Any, loop: RunLoop) -> Any:
    """Trains from where `loop` stands to the end of its epoch, logging and saving on the way."""
    config, saver = run.config, run.saver
    end = run.epoch_end(loop)
    plan = plan_calls(loop.position, end, loop.step, config.steps_per_call, (config.log_every_steps, saver.every_steps))
    inputs = run.train_calls(loop.epoch, plan)
    # Only early stopping and callbacks stop members: without them the calls keep every member (no select).
    stoppable = config.early_stopping.enabled or bool(run.callbacks)
    active = {"active": run.executor.put(loop.active())} if run.stacked and stoppable else {}
    run.clock.start_epoch(loop.step)
    for (position, num_steps), (call_inputs, start) in zip(plan, inputs):
        call_inputs = {**call_inputs, **active}
        compile_new(run, state, call_inputs, start, num_steps)
        run.profiler.before_call(loop.step, num_steps, state)
        state, run.totals = run.calls.train(state, run.totals, call_inputs, start, num_steps)
        epoch_end = count_call(run, loop, position, num_steps, end)
        if due(loop.step, config.log_every_steps) or epoch_end:
            log(run, state, loop)
        if epoch_end:  # the epoch's end validates, then saves and stops (end_epoch)
            break
        save_now, stop_now = stop_or_save(run, loop)
        if save_now:
            save(run, state, loop, stop_now)
        elif stop_now:
            interrupt(run, loop, saved=False)
    return state


def compile_new(run: Run, state: Any, inputs: dict, start: Any, num_steps: int) -> None:
    """Compiles the training program of the coming call if it is new to the run, outside the
    training time (`Clock.compile`); after the run's first, says so."""
    compile_fn = lambda: run.calls.compile_train(state, run.totals, inputs, start, num_steps)
    if run.clock.compile(compile_fn, run.cache_dir is not None):
        cached = " (from the compilation cache)" if run.clock.cache_hit else ""
        run.writer.line(f"compiled in {run.clock.compile_s:.1f} s{cached}; training")


def count_call(run: Run, loop: RunLoop, position: int, num_steps: int, end: int) -> bool:
    """Counts a call of `num_steps` steps from epoch position `position`; returns whether it
    reached `end`, the epoch's end."""
    loop.step, loop.position = loop.step + num_steps, position + num_steps
    run.writer.progress.step(loop.epoch, num_steps)
    run.clock.after_call(num_steps)
    return loop.position == end


def stop_or_save(run: Run, loop: RunLoop) -> tuple[bool, bool]:
    """After a call inside an epoch: (whether to save now, whether the processes agreed to stop)."""
    saver = run.saver
    agreed = (saver.stop_agreed(due(loop.step, run.config.log_every_steps) or due(loop.step, saver.every_steps))
              or run.callbacks.failure is not None)  # a callback that raised stops as a signal does
    return saver.due_in_epoch(loop.step, agreed), agreed


def per_member(run: Run, tree: Any) -> Any:
    """Fetched device values with a leading member axis (a single run's get one of length 1)."""
    fetched = jax.device_get(tree)
    return fetched if run.stacked else jax.tree.map(lambda x: np.reshape(x, (1,)), fetched)


def learning_rates(run: Run, state: Any) -> np.ndarray:
    """Each member's learning rate in effect (schedule × sweep factor × plateau scale)."""
    return per_member(run, optim.learning_rate_in_effect(state.opt_state))


def log(run: Run, state: Any, loop: RunLoop) -> None:
    """Fetches the interval's sums: a `train` record per training member when a log step is due,
    the progress bar (means over the training members), the epochs' running sums; then starts the
    next interval."""
    config, active = run.config, loop.active()
    fetched = per_member(run, run.totals)
    rate = run.clock.log_rate(loop.step, config.batch_size * run.num_members)
    applied = fetched["steps"] - fetched.get("skipped", 0)  # float16: less the steps skipped for overflow
    steps = np.maximum(applied, 1)  # a stopped member's sums stay 0
    loss = np.where(applied > 0, fetched["loss"] / steps, np.nan)  # only skipped steps: no loss (null)
    accuracy = np.where(applied > 0, fetched["accuracy"] / steps, np.nan)
    scaling = scale_fields(run, state)
    check_interval(run, state, loop, loss, active & (applied > 0), active & (applied == 0))
    if due(loop.step, config.log_every_steps):
        rates = learning_rates(run, state)
        for m in np.flatnonzero(active):
            record = {"event": "train", **member_field(run, m), "epoch": loop.epoch, "step": loop.step,
                      "loss": float(loss[m]), "accuracy": float(accuracy[m]), "learning_rate": float(rates[m]),
                      **scaling[m], "images_per_s": rate, "wall_time_s": run.clock.wall()}
            run.writer.write(record)
            run.callbacks.call("on_log", record)
    run.writer.progress.log(float(np.mean(loss[active])), float(np.mean(accuracy[active])), rate)
    for m in np.flatnonzero(active):
        sums = loop.members[m].epoch_sums
        loop.members[m].epoch_sums = {k: sums.get(k, 0) + fetched[k][m].item() for k in {**sums, **fetched}}
    run.totals = run.zero_totals()


def check_interval(run: Run, state: Any, loop: RunLoop, loss: np.ndarray, checked: np.ndarray,
                   all_skipped: np.ndarray) -> None:
    """The divergence guard (`config.on_nonfinite`) on a logging interval: a non-finite mean loss of
    a member that applied steps stops them all. A float16 step skipped for overflow is not
    divergence (its loss is left out of the mean), unless every step of the interval was skipped
    at the minimum loss scale, where scaling can do nothing more."""
    worst = loss[checked][~np.isfinite(loss[checked])]
    if checked.any():
        run.watch.check_loss(float(worst[0] if worst.size else np.max(loss[checked], initial=0.0)), loop.step, state)
    if all_skipped.any():
        scales = per_member(run, state.loss_scale["scale"])
        run.watch.check_skipped(bool(np.any(scales[all_skipped] <= state.scaling.minimum)), loop.step, state)


def end_epoch(run: Run, state: Any, loop: RunLoop) -> Any:
    """Validates every training member, feeds its trackers, writes its epoch record and the epoch
    line; then saves."""
    config, active = run.config, loop.active()
    epoch_s = run.clock.end_epoch()
    rates = learning_rates(run, state)
    scaling = scale_fields(run, state)
    records = {int(m): epoch_record(run, loop, int(m), float(rates[m]), scaling[m]) for m in np.flatnonzero(active)}
    improved = None  # None: no validation split
    if run.has_val:
        started = time.perf_counter()
        state, improved = validate(run, state, loop, records)
        run.clock.validation_s += time.perf_counter() - started
    images = sum(loop.members[m].epoch_sums["steps"] for m in records) * config.batch_size
    for record in records.values():
        record.update(epoch_time_s=epoch_s, images_per_s=images / max(epoch_s, 1e-9), wall_time_s=run.clock.wall())
        run.writer.write(record)
    run.writer.line(epoch_line(records, config.num_epochs, run.num_members, run.stacked))
    by_callback = {m: run.callbacks.wants_stop(record) for m, record in records.items()}  # True: that member stops
    for m in records:
        loop.members[m].stopped_early = (config.early_stopping.enabled and run.has_val
                                         and loop.members[m].stopping.should_stop) or by_callback[m] is not None
    loop.start_epoch(active)
    agreed = run.saver.stop_agreed(True) or run.callbacks.failure is not None
    last = loop.epoch > config.num_epochs or loop.all_stopped or run.out_of_steps(loop)
    # A single run's validated epoch ends are ranked for `checkpoint.keep_best`; members keep their
    # best variables in the saved state instead.
    ranked = improved is not None and not run.stacked
    best = ranked and bool(improved[0])
    if run.saver.due_at_epoch_end(loop.step, best, last, agreed):
        value = records[0].get(loop.members[0].stopping.monitor) if ranked else None
        save(run, state, loop, agreed, best if ranked else None, value)
    elif agreed:
        interrupt(run, loop, saved=False)
    early_stopping_lines(run, loop, records, by_callback)
    return state


def epoch_record(run: Run, loop: RunLoop, m: int, learning_rate: float, scaling: dict[str, Any]) -> dict[str, Any]:
    """Member `m`'s epoch record before validation: its training means over the steps applied (a
    float16 step skipped for overflow left out) and, under loss scaling, its scale (`scaling`)."""
    sums = loop.members[m].epoch_sums
    applied = sums["steps"] - sums.get("skipped", 0)
    mean = lambda key: sums[key] / applied if applied else float("nan")
    return {"event": "epoch", **member_field(run, m), "epoch": loop.epoch, "step": loop.step,
            "train_loss": mean("loss"), "train_accuracy": mean("accuracy"), "learning_rate": learning_rate,
            **scaling}


def early_stopping_lines(run: Run, loop: RunLoop, records: dict[int, dict], by_callback: dict[int, str | None]) -> None:
    """A line for each member that early stopping (or a callback: `by_callback`) stopped at this epoch's end."""
    for m in records:
        member = loop.members[m]
        if not member.stopped_early:
            continue
        if by_callback[m] is not None:
            who = f"member {m} ({run.members[m].label}): " if run.stacked else ""
            run.writer.line(f"{who}callback {by_callback[m]} stopped the run at epoch {member.epochs_run}")
            continue
        best = f"best {member.stopping.best:.4f} at epoch {member.stopping.best_epoch}"
        if run.stacked:
            run.writer.line(f"member {m} ({run.members[m].label}): early stopping at epoch {member.epochs_run} "
                            f"({member.stopping.monitor} {best})")
        else:
            run.writer.line(f"early stopping: {member.stopping.monitor} has not improved for "
                            f"{member.stopping.patience} epochs ({best})")


def validate(run: Run, state: Any, loop: RunLoop, records: dict[int, dict]) -> tuple[Any, np.ndarray]:
    """Each training member's validation metrics into its record and trackers; the best variables
    kept (`restore_best`); the plateau's learning-rate scale set. Returns the state and which
    members improved."""
    val = run.evaluate(ema.view(state), "val")  # the moving averages when EMA is on
    improved = np.zeros(run.num_members, bool)
    for m, record in records.items():
        member = loop.members[m]
        record.update(val_loss=float(val["loss"][m]), val_accuracy=float(val["accuracy"][m]))
        member.best_val_loss = min(member.best_val_loss, record["val_loss"])
        member.best_val_accuracy = max(member.best_val_accuracy, record["val_accuracy"])
        improved[m] = member.stopping.update(record[member.stopping.monitor], loop.epoch)
        if member.plateau is not None:
            member.plateau.update(record["val_loss"])
    keep_best_variables(run, ema.view(state), improved)
    if loop.members[0].plateau is not None:
        scales = [member.plateau.scale for member in loop.members]
        opt_state = (optim.set_lr_scale(state.opt_state, scales[0]) if not run.stacked else optim.set_lr_scale(
            state.opt_state, (members.lr_factors(run.members, run.config.optimizer.learning_rate)
                              * np.asarray(scales)).astype(np.float32)))
        state = run.put(state.replace(opt_state=opt_state))
    return state, improved


def keep_best_variables(run: Run, state: Any, improved: np.ndarray) -> None:
    """The best epoch's (params, batch_stats) of each member that improved, for `restore_best`."""
    if not run.config.early_stopping.restore_best:
        return
    if not run.stacked:
        if improved[0]:
            run.best_variables = jax.tree.map(jnp.copy, (state.params, state.batch_stats))
    elif run.best_variables is not None:
        run.best_variables = members.keep_best(run.executor.put(improved), (state.params, state.batch_stats),
                                               run.best_variables)


def save(run: Run, state: Any, loop: RunLoop, stop_now: bool, improved: bool | None = None,
         value: float | None = None) -> None:
    """Saves where the loop stands (asynchronously); after a stop request, waits and stops."""
    loop.metrics_bytes = run.writer.size()
    run.watch.check_state(state, loop.step)  # no checkpoint of a diverged state
    run.saver.save(run.saved(state), run.totals, loop, improved=improved, monitor=loop.members[0].stopping.monitor,
                   value=value, inputs=run.input_states())
    if stop_now:
        interrupt(run, loop, saved=True)


def interrupt(run: Run, loop: RunLoop, saved: bool) -> None:
    """Stops after a stop signal, or a callback's failure (`CallbackFailed`, naming it), once saved."""
    run.saver.wait()
    stopped = checkpoint.TrainingInterrupted(run.callbacks.failure or run.saver.stop_reason, loop.step, run.workdir,
                                             saved, run.config.dataset.data_dir)
    if run.callbacks.failure is not None:
        raise CallbackFailed(str(stopped)) from run.callbacks.error
    raise stopped

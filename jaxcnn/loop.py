"""`train_and_evaluate`: the training loop, as a table of contents.

build the run (data, state, compiled calls, checkpoints, writers) -> for each epoch: train the
epoch (logging and saving on the way), end the epoch (validate, early stop, plateau, save, epoch
line) -> finish (test, predictions, summary). What runs where is the executor's business
(`jaxcnn.executor`); who writes is the writer's (`jaxcnn.writers.RunWriter`). The host touches
device values only at logging intervals and once per epoch.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxcnn import certificate, checkpoint, data, determinism, divergence, members, models, optim, profiling, stop
from jaxcnn.build import build, make_prepare
from jaxcnn.clock import Clock
from jaxcnn.compilation import enable_compilation_cache
from jaxcnn.config import config_to_json, dataset_options, validate_config
from jaxcnn.data.feed import Feed, make_feeds
from jaxcnn.data.normalization import mean_std_for, record_mean_std
from jaxcnn.errors import JaxcnnError
from jaxcnn.evaluation import evaluate, predict
from jaxcnn.executor import Calls, Executor, plan_calls
from jaxcnn.host_memory import keep_freed_host_memory
from jaxcnn.loop_state import EarlyStopping, LoopState, due
from jaxcnn.metrics import TOP_K, classification_metrics, most_confident_mistakes
from jaxcnn.state import TrainState
from jaxcnn.steps import zero_train_totals
from jaxcnn.workdir import Claim, claim_workdir, record_data_dir
from jaxcnn.writers import RunWriter

# How many of the most confidently wrong test images `predictions.npz` keeps for the report.
NUM_MISTAKES_KEPT = 25


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                       data_dir: str | None = None, quiet: bool = False, fresh: bool = False,
                       dataset: data.Dataset | None = None) -> dict[str, Any]:
    """Trains `config`'s model on its dataset, evaluates it on the test split, writes the workdir.

    A workdir holding an unfinished run is resumed from its last checkpoint (`fresh`: start a new
    run in a subfolder instead). SIGTERM/SIGINT save a checkpoint after the current call (with
    several processes: at the next logging or saving step, all processes together) and raise
    `checkpoint.TrainingInterrupted`; one received during start-up stops before training
    (`stop.StartupInterrupted`). A non-finite loss stops the run (`divergence.TrainingDiverged`,
    with `on_nonfinite=stop`). `dataset`: an already built dataset (`Dataset.from_arrays`) instead
    of `config.dataset.name`'s. Returns the summary (also written to `workdir/summary.json`).
    """
    if members.is_multi(config):  # seeds or a sweep: members in one program (jaxcnn/members_loop.py)
        from jaxcnn.members_loop import train_members
        return train_members(config, workdir, data_dir=data_dir, quiet=quiet, fresh=fresh, dataset=dataset)
    return fit(config, workdir, data_dir=data_dir, quiet=quiet, fresh=fresh, dataset=dataset).summary


@dataclasses.dataclass(frozen=True)
class Trained:
    """What a finished training run leaves in memory: its summary and the state its test used."""

    summary: dict[str, Any]
    state: TrainState
    config: ml_collections.ConfigDict  # as written to config.json (normalisation included)
    workdir: pathlib.Path
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...]


@checkpoint.restores_signal_handlers
def fit(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, data_dir: str | None = None,
        quiet: bool = False, fresh: bool = False, dataset: data.Dataset | None = None) -> Trained:
    """`train_and_evaluate`, returning the trained state too (the table of contents of a run)."""
    if members.is_multi(config):  # several states: train_and_evaluate writes them, none is returned
        raise JaxcnnError("seeds and sweep train several models; jaxcnn.train returns one: use `jaxcnn train`")
    run, state, loop = build_run(config, workdir, data_dir, quiet, fresh, dataset)
    try:
        stop.check_startup(agree=True)  # the loop's first check: a signal during start-up stops here
        while loop.epoch <= run.config.num_epochs and not loop.stopped_early and not run.out_of_steps(loop):
            state = train_epoch(run, state, loop)
            state = end_epoch(run, state, loop)
        summary, state = finish(run, state, loop)
        return Trained(summary, state, run.config, run.workdir, run.dataset.input_shape, run.dataset.class_names)
    finally:
        run.close()


# ---------------------------------------------------------------------------- the run


@dataclasses.dataclass
class Run:
    """Everything one training run is made of, built once by `build_run`."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    dataset: data.Dataset
    executor: Executor
    calls: Calls
    feeds: dict[str, Feed]  # "train", "val", "test"
    steps_per_epoch: int
    saver: checkpoint.Checkpointer
    writer: RunWriter
    clock: Clock
    totals: Any  # the on-device sums of the current logging interval
    best_variables: Any = None  # (params, batch_stats) of the best epoch, for early_stopping.restore_best
    watch: divergence.Watch | None = None  # stops on a non-finite loss (config.on_nonfinite)
    claim: Claim | None = None  # the workdir's lock, released on close
    profiler: profiling.Profiler = profiling.OFF  # the trace of config.profile_steps
    cache_dir: pathlib.Path | None = None  # the persistent compilation cache (None: off)

    @property
    def has_val(self) -> bool:
        return len(self.feeds["val"]) > 0

    def evaluate(self, state: TrainState, split: str) -> dict[str, float]:
        config = self.config
        return evaluate(self.calls, state, self.feeds[split], config.eval_batch_size,
                        max_batches=config.limit_eval_batches)

    def epoch_end(self, loop: LoopState) -> int:
        """The epoch position training stops at in `loop`'s epoch: its end, or where `max_steps` is."""
        if not self.config.max_steps:
            return self.steps_per_epoch
        return min(self.steps_per_epoch, loop.position + max(self.config.max_steps - loop.step, 0))

    def out_of_steps(self, loop: LoopState) -> bool:
        return 0 < self.config.max_steps <= loop.step

    def close(self) -> None:
        try:
            self.profiler.stop()  # a trace still running when training stopped early or failed
            self.writer.close()
            self.saver.close()
        finally:
            if self.claim is not None:
                self.claim.release()


def load_data(config: ml_collections.ConfigDict, data_dir: str | None, executor: Executor,
              dataset: data.Dataset | None = None):
    """The dataset (`dataset` if given, else the config's), its feeds, the steps per epoch, and the
    config with the normalisation it uses."""
    dataset = data.load_dataset(dataset or config.dataset.name, data_dir=data_dir or config.dataset.data_dir or None,
                                val_fraction=config.dataset.val_fraction, seed=config.seed,
                                download=config.dataset.download, **dataset_options(config))
    if config.batch_size > len(dataset.train):
        raise JaxcnnError(f"batch_size {config.batch_size} is larger than the training split "
                          f"({len(dataset.train)} examples of {dataset.name}); lower batch_size")
    config = record_mean_std(config, *mean_std_for(config.dataset, dataset.train))  # config.json holds them
    config = record_data_dir(config, data_dir or config.dataset.data_dir or None)  # eval and resume use it
    splits = (dataset.train, dataset.val, dataset.test)
    feeds = make_feeds(splits, config.dataset.input, config.dataset.device_budget_mb, executor)
    return config, dataset, dict(zip(("train", "val", "test"), feeds)), len(dataset.train) // config.batch_size


def build_run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, data_dir: str | None,
              quiet: bool, fresh: bool, dataset: data.Dataset | None = None) -> tuple[Run, TrainState, LoopState]:
    """Data, model, compiled calls, checkpoints and writers; resumed from the workdir's last
    checkpoint when it holds an unfinished run."""
    validate_config(config)
    determinism.apply(config)  # a GPU backend started without the deterministic flag: refused
    executor = Executor(config.parallel)
    executor.check_batch_size(config.batch_size)
    claim = claim_workdir(workdir, config, fresh)  # chosen; checked, created and locked by process 0
    with claim.undone_on_failure():  # a failed start leaves no lock and no empty folder
        return assemble_run(config, claim, executor, data_dir or claim.data_dir, quiet, dataset)


def assemble_run(config: ml_collections.ConfigDict, claim: Claim, executor: Executor, data_dir: str | None,
                 quiet: bool, dataset: data.Dataset | None = None) -> tuple[Run, TrainState, LoopState]:
    """The run in the claimed workdir; a stop signal during its start-up stops it (`stop.check_startup`)."""
    workdir, resuming = claim.path, claim.resuming
    cache_dir = enable_compilation_cache(config.compilation_cache_dir)  # on by default ("auto")
    keep_freed_host_memory()  # XLA:CPU's per-call buffers are not faulted in again every call
    clock = Clock()
    config, dataset, feeds, steps_per_epoch = load_data(config, data_dir, executor, dataset)
    profiler = profiling.Profiler(config, workdir, steps_per_epoch)  # a range beyond the run: refused here
    parts = build(config, dataset.num_classes, steps_per_epoch, executor.bn_axis_name)
    models.check_input_shape(parts.model, dataset.input_shape)  # one line naming the layer, not a trace
    calls = executor.compile(make_prepare(config, train=True), make_prepare(config, train=False),
                             config.loss.name, TOP_K)
    state = executor.put(parts.init_state(config, dataset.input_shape))
    totals = executor.put(zero_train_totals())
    stopping = config.early_stopping
    loop = LoopState(EarlyStopping(stopping.monitor, stopping.patience, stopping.min_delta),
                     optim.make_plateau_scheduler(config.schedule))
    stop.check_startup(agree=True)  # a stop signal so far: stop before anything is written
    saver = checkpoint.Checkpointer(workdir, config, {
        "dataset": dataset.name, "input_shape": dataset.input_shape, "num_classes": dataset.num_classes,
        "class_names": dataset.class_names, "steps_per_epoch": steps_per_epoch}, watch_signals=True)
    restored = saver.restore_latest(state, totals) if resuming else None
    if restored is not None:
        state, totals, loop = restored
    writer = RunWriter(workdir, tensorboard=config.logging.tensorboard, quiet=quiet,
                       total_steps=steps_per_epoch * config.num_epochs, num_epochs=config.num_epochs,
                       metrics_bytes=loop.metrics_bytes if resuming else None)
    writer.write_text("config.json", config_to_json(config) + "\n")
    run = Run(config, workdir, dataset, executor, calls, feeds, steps_per_epoch, saver, writer, clock, totals,
              watch=divergence.Watch(config.on_nonfinite, loop.step, saver), claim=claim, cache_dir=cache_dir)
    run.profiler = profiler
    if restored is not None:
        if stopping.enabled and stopping.restore_best and saver.best_step is not None:
            run.best_variables = saver.restore_variables(saver.best_step, state, totals)
        writer.progress.resume(loop.step)
        writer.line(f"resuming from the checkpoint of step {loop.step} in {workdir / checkpoint.CHECKPOINT_DIR}")
    writer.line(f"training {config.model.name} ({models.count_params(state.params):,} parameters) on "
                f"{len(dataset.train):,} {dataset.name} images: {config.num_epochs} epochs of {steps_per_epoch} "
                f"steps of {config.batch_size}; compiling")
    return run, state, loop


# ---------------------------------------------------------------------------- one epoch


def train_epoch(run: Run, state: TrainState, loop: LoopState) -> TrainState:
    """Trains from where `loop` stands to the end of its epoch, logging and saving on the way."""
    config, saver = run.config, run.saver
    end = run.epoch_end(loop)
    plan = plan_calls(loop.position, end, loop.step, config.steps_per_call, (config.log_every_steps, saver.every_steps))
    inputs = run.feeds["train"].train_calls(config.seed, loop.epoch, config.batch_size, plan)
    run.clock.start_epoch(loop.step)
    for (position, num_steps), (call_inputs, start) in zip(plan, inputs):
        run.profiler.before_call(loop.step, num_steps, state)
        state, run.totals = run.calls.train(state, run.totals, call_inputs, start, num_steps)
        epoch_end = count_call(run, loop, position, num_steps, end)
        if due(loop.step, config.log_every_steps) or epoch_end:
            log(run, state, loop)
        if epoch_end:  # the epoch's end validates, then saves and stops (end_epoch)
            break
        save_now, stop = stop_or_save(run, loop)
        if save_now:
            save(run, state, loop, stop)
        elif stop:
            interrupt(run, loop, saved=False)
    return state


def count_call(run: Run, loop: Any, position: int, num_steps: int, end: int) -> bool:
    """Counts a training call of `num_steps` from `position` (steps, progress, the compile line after
    the first); returns whether it reached `end`, the epoch's end."""
    loop.step, loop.position = loop.step + num_steps, position + num_steps
    run.writer.progress.step(loop.epoch, num_steps)
    if run.clock.after_call(run.totals, loop.step, num_steps, run.cache_dir is not None):
        cached = " (from the compilation cache)" if run.clock.cache_hit else ""
        run.writer.line(f"compiled in {run.clock.compile_s:.1f} s{cached}; training")
    return loop.position == end


def stop_or_save(run: Run, loop: Any) -> tuple[bool, bool]:
    """After a call inside an epoch: (whether to save now, whether the processes agreed to stop)."""
    saver = run.saver
    stop = saver.stop_agreed(due(loop.step, run.config.log_every_steps) or due(loop.step, saver.every_steps))
    return saver.due_in_epoch(loop.step, stop), stop


def log(run: Run, state: TrainState, loop: LoopState) -> None:
    """Fetches the interval's sums: a `train` record when a log step is due, the progress bar, and
    the epoch's running sums; then starts the next interval."""
    config = run.config
    fetched = jax.device_get(run.totals)
    images_per_s = run.clock.log_rate(loop.step, config.batch_size)
    loss, accuracy = float(fetched["loss"] / fetched["steps"]), float(fetched["accuracy"] / fetched["steps"])
    run.watch.check_loss(loss, loop.step, state)  # a non-finite loss stops here, before it is written
    if due(loop.step, config.log_every_steps):
        run.writer.write({"event": "train", "epoch": loop.epoch, "step": loop.step, "loss": loss,
                          "accuracy": accuracy,
                          "learning_rate": float(optim.learning_rate_in_effect(state.opt_state)),
                          "images_per_s": images_per_s, "wall_time_s": run.clock.wall()})
    run.writer.progress.log(loss, accuracy, images_per_s)
    loop.epoch_sums = {k: loop.epoch_sums[k] + fetched[k].item() for k in loop.epoch_sums}
    run.totals = run.executor.put(zero_train_totals())


def end_epoch(run: Run, state: TrainState, loop: LoopState) -> TrainState:
    """Validates, tracks the best epoch and the plateau, writes the epoch's record and line, saves."""
    config, epoch = run.config, loop.epoch
    epoch_s = run.clock.end_epoch()
    record = {"event": "epoch", "epoch": epoch, "step": loop.step,
              "train_loss": loop.epoch_sums["loss"] / loop.epoch_sums["steps"],
              "train_accuracy": loop.epoch_sums["accuracy"] / loop.epoch_sums["steps"],
              "learning_rate": float(optim.learning_rate_in_effect(state.opt_state))}
    improved = None  # None: no validation split
    if run.has_val:
        started = time.perf_counter()
        state, improved = validate(run, state, loop, record)
        run.clock.validation_s += time.perf_counter() - started
    record.update(epoch_time_s=epoch_s, images_per_s=loop.epoch_sums["steps"] * config.batch_size / max(epoch_s, 1e-9),
                  wall_time_s=run.clock.wall())
    run.writer.write(record)
    run.writer.line(epoch_line(record, config.num_epochs))
    loop.stopped_early = config.early_stopping.enabled and run.has_val and loop.stopping.should_stop
    loop.start_epoch()
    stop = run.saver.stop_agreed(True)
    last = loop.epoch > config.num_epochs or loop.stopped_early or run.out_of_steps(loop)
    if run.saver.due_at_epoch_end(loop.step, bool(improved), last, stop):
        save(run, state, loop, stop, improved, record.get(loop.stopping.monitor))
    elif stop:
        interrupt(run, loop, saved=False)
    if loop.stopped_early:
        run.writer.line(f"early stopping: {loop.stopping.monitor} has not improved for {loop.stopping.patience} "
                        f"epochs (best {loop.stopping.best:.4f} at epoch {loop.stopping.best_epoch})")
    return state


def validate(run: Run, state: TrainState, loop: LoopState, record: dict) -> tuple[TrainState, bool]:
    """The validation metrics into `record`; the trackers fed; returns the state (its learning-rate
    scale changed on a plateau) and whether this epoch is the new best."""
    val = run.evaluate(state, "val")
    record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
    loop.best_val_loss = min(loop.best_val_loss, val["loss"])
    loop.best_val_accuracy = max(loop.best_val_accuracy, val["accuracy"])
    improved = loop.stopping.update(record[loop.stopping.monitor], loop.epoch)
    if improved and run.config.early_stopping.restore_best:
        run.best_variables = jax.tree.map(jnp.copy, (state.params, state.batch_stats))
    if loop.plateau is not None:
        scale = loop.plateau.update(val["loss"])
        state = run.executor.put(state.replace(opt_state=optim.set_lr_scale(state.opt_state, scale)))
    return state, improved


def save(run: Run, state: TrainState, loop: LoopState, stop: bool, improved: bool | None = None,
         value: float | None = None) -> None:
    """Saves where the loop stands (asynchronously); after a stop request, waits and stops."""
    loop.metrics_bytes = run.writer.size()
    run.watch.check_state(state, loop.step)  # no checkpoint of a diverged state
    run.saver.save(state, run.totals, loop, improved=improved, monitor=loop.stopping.monitor, value=value)
    if stop:
        interrupt(run, loop, saved=True)


def interrupt(run: Run, loop: LoopState, saved: bool) -> None:
    run.saver.wait()
    raise checkpoint.TrainingInterrupted(run.saver.stop_reason, loop.step, run.workdir, saved,
                                         run.config.dataset.data_dir)


# ---------------------------------------------------------------------------- the end


def finish(run: Run, state: TrainState, loop: LoopState) -> tuple[dict[str, Any], TrainState]:
    """Tests the final (or the best) parameters, writes predictions, the test record, the summary and
    the certificate; returns the summary and the state tested."""
    config, dataset, final = run.config, run.dataset, state
    if config.early_stopping.enabled and config.early_stopping.restore_best and run.best_variables is not None:
        state = state.replace(params=run.best_variables[0], batch_stats=run.best_variables[1])
    test = run.evaluate(state, "test")
    predictions = predict(run.calls, state, run.feeds["test"], config.eval_batch_size,
                          max_batches=config.limit_eval_batches)
    labels = dataset.test.labels[:len(predictions["predicted"])]
    test_metrics = classification_metrics(labels, predictions["predicted"], predictions["confidence"],
                                          predictions["in_top_k"], dataset.class_names)
    mistakes = most_confident_mistakes(labels, predictions["predicted"], predictions["confidence"],
                                       NUM_MISTAKES_KEPT)
    run.writer.write_predictions(labels, predictions, dataset.class_names, mistakes, dataset.test.images[mistakes])
    run.writer.write({"event": "test", "epoch": loop.epochs_run, "step": loop.step, "test_loss": test["loss"],
                      "test_accuracy": test["accuracy"],
                      **{f"test_{key}": test_metrics[key] for key in
                         ("top5_accuracy", "expected_calibration_error", "macro_f1") if key in test_metrics},
                      "wall_time_s": run.clock.wall()})
    summary = summarize(run, state, loop, test, test_metrics)
    run.saver.wait()  # the last save committed (or its failure reported) before the run is marked finished
    run.writer.write_json("summary.json", summary)
    certificate.write(run, final, loop.step)
    return summary, state


def summarize(run: Run, state: TrainState, loop: LoopState, test: dict, test_metrics: dict) -> dict[str, Any]:
    config, dataset, clock = run.config, run.dataset, run.clock
    return {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_examples": test["count"],
        "best_val_accuracy": loop.best_val_accuracy if run.has_val else None,
        "best_val_loss": loop.best_val_loss if run.has_val else None,
        "best_epoch": loop.stopping.best_epoch if run.has_val else None,
        "epochs_run": loop.epochs_run,
        "stopped_early": loop.epochs_run < config.num_epochs,
        "steps": loop.step,
        "seed": config.seed,
        "parallel": run.executor.name,
        "num_devices": run.executor.num_devices,
        "model": config.model.name,
        "num_params": models.count_params(state.params),
        "dataset": dataset.name,
        "num_train": len(dataset.train),
        "num_val": len(dataset.val),
        "input": run.feeds["train"].kind,
        "normalization": {"mean": config.dataset.mean, "std": config.dataset.std},
        "compile_s": clock.compile_s,
        "compile_cache_hit": clock.cache_hit,  # None: the compilation cache is off
        "compilation_cache": {"dir": str(run.cache_dir) if run.cache_dir else None, **clock.cache_counts()},
        # Training between log steps (no compile, validation or epoch ends), and the epochs' training
        # with log syncs and checkpoint saves; validation's time apart.
        "steady_train_images_per_s": clock.rate(clock.steady_steps * config.batch_size, clock.steady_s),
        "train_images_per_s": clock.rate(clock.timed_steps * config.batch_size, clock.train_s),
        "train_s": clock.train_s,
        "validation_s": clock.validation_s,
        "wall_time_s": clock.wall(),
        "class_names": list(dataset.class_names),
        "test_metrics": test_metrics,
        "memory": profiling.memory_summary(run, state),
    }


def epoch_line(record: dict[str, Any], num_epochs: int) -> str:
    text = (f"epoch {record['epoch']}/{num_epochs}  step {record['step']}  "
            f"loss {record['train_loss']:.4f}  acc {record['train_accuracy']:.4f}")
    if "val_loss" in record:
        text += f"  val_loss {record['val_loss']:.4f}  val_acc {record['val_accuracy']:.4f}"
    return text + f"  lr {record['learning_rate']:.3g}  {record['images_per_s']:.0f} img/s"

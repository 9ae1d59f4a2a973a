"""`train_and_evaluate`: the training loop, to be read top to bottom.

config -> data + model + optimizer -> state -> compiled steps -> epochs (train, validate, decay,
stop early) -> test -> `config.json`, `metrics.jsonl`, `summary.json`, `predictions.npz` in the workdir.
The host touches device values only at logging intervals and once per epoch.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from jaxcnn import checkpoint, data, fused, losses, models, optim, parallel, precision
from jaxcnn.compilation import enable_compilation_cache
from jaxcnn.augment import augment_config, make_augment, step_key
from jaxcnn.config import config_to_json, dataset_options, model_options, validate_config
from jaxcnn.data.device import DeviceSplit, eval_order, normalize, put_on_device
from jaxcnn.data.host import HostSplit
from jaxcnn.data.normalization import Stat, mean_std_for, record_mean_std
from jaxcnn.errors import JaxcnnError
from jaxcnn.host_memory import keep_freed_host_memory
from jaxcnn.metrics import TOP_K, classification_metrics, most_confident_mistakes
from jaxcnn.state import TrainState, create_train_state
from jaxcnn.steps import add_to_totals, eval_step, predict_step, train_step, zero_eval_sums, zero_train_totals
from jaxcnn.writers import PREDICTIONS_FILE, MetricsWriter, write_json, write_predictions

# How many of the most confidently wrong test images `predictions.npz` keeps for the report.
NUM_MISTAKES_KEPT = 25


@dataclasses.dataclass
class EarlyStopping:
    """Stops when the monitored validation metric has not improved by `min_delta` for `patience` epochs."""

    monitor: str
    patience: int
    min_delta: float
    best: float = math.nan
    best_epoch: int = 0
    bad_epochs: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Records one epoch's value; returns True when it is a new best."""
        sign = -1.0 if self.monitor.endswith("loss") else 1.0
        if math.isnan(self.best) or sign * (value - self.best) > self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience


def prepare_workdir(workdir: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(workdir)
    if path.exists() and not path.is_dir():
        raise JaxcnnError(f"workdir '{path}' is a file; pass a directory path to --workdir")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JaxcnnError(f"workdir '{path}' cannot be created: {e.strerror}; pass a writable --workdir") from e
    return path


def make_prepare(mean: Stat, std: Stat, augment_fn: Callable | None = None) -> Callable:
    """`prepare(batch, state)`: a uint8 batch normalised, and augmented with the step's own key
    (`augment.step_key`) when `augment_fn` is given (training only)."""

    def prepare(batch: dict, state: TrainState) -> dict:
        images = normalize(batch["image"], mean, std)
        if augment_fn is not None:
            images = augment_fn(images, step_key(state.rng, state.step))
        return {**batch, "image": images}

    return prepare


def make_train_fn(mean: Stat, std: Stat, batch_fn: Callable = DeviceSplit.train_batch,
                  augment_fn: Callable | None = None, strategy: parallel.Strategy | None = None) -> Callable:
    """The compiled call of one training step; state and totals donated.

    `batch_fn` turns the step's inputs (from the split's `train_inputs`) into the uint8 batch:
    gathered from the on-device split, or as fed from the host. `strategy` (default: one device)
    decides how the step runs.
    """

    def train_one(state: TrainState, totals: dict, batch: dict, axis_name: str | None):
        state, metrics = train_step(state, batch, axis_name)
        return state, add_to_totals(totals, metrics)

    return (strategy or parallel.Strategy()).compile_train(train_one, make_prepare(mean, std, augment_fn), batch_fn)


def make_train_many_fn(mean: Stat, std: Stat, augment_fn: Callable | None = None,
                       strategy: parallel.Strategy | None = None, unroll: bool | int | None = None) -> Callable:
    """The compiled call of many training steps (`config.steps_per_call`), the same steps as
    `make_train_fn`'s: `fn(state, totals, split, order, start, num_steps) -> (state, totals,
    per_step_metrics)` over an on-device split; state and totals donated (see `jaxcnn.fused`)."""
    return (strategy or parallel.Strategy()).compile_train_many(make_prepare(mean, std, augment_fn), unroll)


def make_eval_all_fn(mean: Stat, std: Stat, strategy: parallel.Strategy | None = None,
                     unroll: bool | int | None = None) -> Callable | None:
    """The compiled call of a whole evaluation, `fn(state, split, order, mask) -> totals`, summing
    the same batches in the same order as `make_eval_fn`'s calls; None where the strategy has none."""
    return (strategy or parallel.Strategy()).compile_eval_all(make_prepare(mean, std), unroll)


def make_eval_fn(mean: Stat, std: Stat, batch_fn: Callable = DeviceSplit.eval_batch,
                 strategy: parallel.Strategy | None = None) -> Callable:
    """The compiled call of one evaluation batch; the totals donated."""

    def eval_one(state: TrainState, totals: dict, batch: dict, axis_name: str | None):
        sums = eval_step(state, batch)
        if axis_name is not None:  # pmap: each device summed its slice of the batch
            sums = jax.lax.psum(sums, axis_name)
        return jax.tree.map(jnp.add, totals, sums)

    return (strategy or parallel.Strategy()).compile_eval(eval_one, make_prepare(mean, std), batch_fn)


def evaluate(eval_fn: Callable, state: TrainState, split: Any, batch_size: int,
             strategy: parallel.Strategy | None = None, eval_all_fn: Callable | None = None) -> dict[str, float]:
    """Loss and accuracy over every example of `split` exactly once (the last batch padded, masked;
    with several devices the batch is rounded up to a multiple of them). With `eval_all_fn`
    (`make_eval_all_fn`) an on-device split is evaluated in one call."""
    strategy = strategy or parallel.Strategy()
    if eval_all_fn is not None and isinstance(split, DeviceSplit):
        order, mask = eval_order(len(split), min(batch_size, len(split)))
        totals = eval_all_fn(state, split, jnp.asarray(order), jnp.asarray(mask))
    else:
        totals = strategy.replicate(zero_eval_sums())
        for inputs in strategy.eval_inputs(split, batch_size):
            totals = eval_fn(state, totals, *inputs)
    totals = jax.device_get(totals)
    return {"loss": float(totals["loss_sum"] / totals["count"]),
            "accuracy": float(totals["correct"] / totals["count"]),
            "count": int(totals["count"])}


def make_predict_fn(mean: Stat, std: Stat, loss_name: str,
                    batch_fn: Callable = DeviceSplit.eval_batch) -> Callable:
    """The compiled call of one batch's per-example predictions (see `steps.predict_step`)."""

    def predict_one(state: TrainState, *inputs: Any):
        batch = batch_fn(*inputs)
        batch = {**batch, "image": normalize(batch["image"], mean, std)}
        return predict_step(state, batch, loss_name, TOP_K)

    return jax.jit(predict_one)


def predict(predict_fn: Callable, state: TrainState, split: DeviceSplit | HostSplit,
            batch_size: int) -> dict[str, np.ndarray]:
    """Per-example `predicted`, `confidence`, `in_top_k` for every example of `split`, in order.

    The batches stay on the device until the host fetches them all once, at the end; the padding of
    the last batch (at the end of the order) is cut off.
    """
    outputs = [predict_fn(state, *inputs) for inputs in split.eval_inputs(batch_size)]
    fetched = jax.device_get(outputs)
    return {key: np.concatenate([batch[key] for batch in fetched])[:len(split)] for key in fetched[0]}


class Progress:
    """A tqdm bar on a terminal; otherwise one plain line per epoch (CI, pipes, nohup)."""

    def __init__(self, total_steps: int, num_epochs: int, quiet: bool):
        self.interactive = sys.stdout.isatty() and not quiet
        self.quiet = quiet
        self.num_epochs = num_epochs
        self.bar = tqdm.tqdm(total=total_steps, unit="step", dynamic_ncols=True,
                             disable=not self.interactive)

    def step(self, epoch: int, num_steps: int = 1) -> None:
        self.bar.update(num_steps)
        if self.interactive:
            self.bar.set_description(f"epoch {epoch}/{self.num_epochs}", refresh=False)

    def log(self, loss: float, accuracy: float, images_per_s: float) -> None:
        # ordered_dict keeps this order (keyword arguments would be sorted: acc, img_s, loss).
        self.bar.set_postfix(ordered_dict={"loss": f"{loss:.4f}", "acc": f"{accuracy:.4f}",
                                           "img/s": f"{images_per_s:.0f}"}, refresh=False)

    def epoch_line(self, text: str) -> None:
        if self.interactive:
            self.bar.write(text)
        elif not self.quiet:
            print(text, flush=True)

    def close(self) -> None:
        self.bar.close()


@checkpoint.restores_signal_handlers
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                       data_dir: str | None = None, quiet: bool = False, fresh: bool = False) -> dict[str, Any]:
    """Trains `config`'s model on its dataset, evaluates it on the test split, writes the workdir.

    A workdir holding an unfinished run is resumed from its last checkpoint (`fresh`: start a new
    run in a subfolder instead). SIGTERM/SIGINT save a checkpoint after the current call (one step, or
    up to `steps_per_call` fused steps) and raise `checkpoint.TrainingInterrupted`. Returns the
    summary (also written to `workdir/summary.json`).
    """
    validate_config(config)
    strategy = parallel.create_strategy(config.parallel)
    strategy.check_batch_size(config.batch_size)
    is_main = parallel.is_main_process()  # only process 0 writes the workdir and prints
    workdir, resuming = checkpoint.choose_workdir(workdir, config, fresh)
    workdir = prepare_workdir(workdir) if is_main else pathlib.Path(workdir)
    if config.compilation_cache_dir:
        enable_compilation_cache(config.compilation_cache_dir)
    keep_freed_host_memory()  # XLA:CPU's per-step buffers are not faulted in again every step
    start_time = time.perf_counter()

    dataset = data.load_dataset(config.dataset.name, data_dir=data_dir or config.dataset.data_dir or None,
                                val_fraction=config.dataset.val_fraction, seed=config.seed,
                                download=config.dataset.download, **dataset_options(config))
    num_train = len(dataset.train)
    if config.batch_size > num_train:
        raise JaxcnnError(f"batch_size {config.batch_size} is larger than the training split "
                          f"({num_train} examples of {dataset.name}); lower batch_size")
    steps_per_epoch = num_train // config.batch_size
    mean, std = mean_std_for(config.dataset, dataset.train)
    config = record_mean_std(config, mean, std)  # config.json holds the values eval and predict use
    # The splits placed and the step functions made before the checkpointer starts its threads, so
    # that a refusal (host-fed input or parallel=pmap with steps_per_call > 1) is one clean line.
    train_split, val_split, test_split = strategy.place_splits(
        (dataset.train, dataset.val, dataset.test), config.dataset.input, config.dataset.device_budget_mb)
    feed = HostSplit if isinstance(train_split, HostSplit) else DeviceSplit
    augment_fn = make_augment(augment_config(config.augment))
    train_fn = make_train_fn(mean, std, feed.train_batch, augment_fn, strategy)
    eval_fn = make_eval_fn(mean, std, feed.eval_batch, strategy)
    train_many_fn, eval_all_fn = None, None
    if config.steps_per_call > 1:  # fused steps: a few calls per epoch (jaxcnn/fused.py)
        fused.check_fusable(config.steps_per_call, train_split)
        train_many_fn = make_train_many_fn(mean, std, augment_fn, strategy)
        eval_all_fn = make_eval_all_fn(mean, std, strategy)
    model = models.create_model(config.model.name, dataset.num_classes, dtype=precision.compute_dtype(config.dtype),
                                bn_axis_name=strategy.bn_axis_name, **model_options(config))
    tx = optim.create_optimizer(config.optimizer, config.schedule, steps_per_epoch, config.num_epochs,
                                config.grad_accum_steps)
    loss_fn = losses.make_classification_loss(config.loss.name, dataset.num_classes,
                                              config.loss.label_smoothing)
    state = strategy.replicate(
        create_train_state(model, tx, loss_fn, dataset.input_shape, config.seed, config.loss.l2))
    plateau = optim.make_plateau_scheduler(config.schedule)
    stopping = EarlyStopping(config.early_stopping.monitor, config.early_stopping.patience,
                             config.early_stopping.min_delta)
    saver = checkpoint.Checkpointer(workdir, config, {
        "dataset": dataset.name, "input_shape": dataset.input_shape, "num_classes": dataset.num_classes,
        "class_names": dataset.class_names, "steps_per_epoch": steps_per_epoch,
    }, watch_signals=True) if config.checkpoint.enabled and jax.process_count() == 1 else None  # see README
    loop_state = None
    if resuming and saver is not None:
        restored = saver.restore_latest(state, zero_train_totals())
        if restored is not None:
            state, resumed_totals, loop_state = restored
        if is_main:
            checkpoint.truncate_metrics(workdir, loop_state.metrics_bytes if loop_state else 0)

    if is_main:
        (workdir / "config.json").write_text(config_to_json(config) + "\n")
    writer = MetricsWriter(workdir, tensorboard=config.logging.tensorboard, enabled=is_main)
    # The host sees the totals, and saves, at the same steps whatever the call sizes.
    boundaries = (config.log_every_steps, config.checkpoint.every_steps if saver is not None else 0)
    has_val = len(val_split) > 0

    progress = Progress(steps_per_epoch * config.num_epochs, config.num_epochs, quiet or not is_main)
    best_variables = None
    best_val_loss, best_val_accuracy = math.inf, -math.inf
    step, compile_s, train_time, timed_images, epochs_run = 0, 0.0, 0.0, 0, 0
    compiled_steps = 0  # the steps of the first call, whose time is the compilation's
    start_epoch = 1
    if loop_state is not None:
        step, epochs_run, start_epoch = loop_state.step, loop_state.epochs_run, loop_state.epoch
        best_val_loss, best_val_accuracy = loop_state.best_val_loss, loop_state.best_val_accuracy
        stopping = EarlyStopping(**loop_state.stopping)
        if plateau is not None:
            plateau.load_state_dict(loop_state.plateau)
        if config.early_stopping.restore_best and saver.best_step is not None:
            best_variables = saver.restore_variables(saver.best_step, state, zero_train_totals())
        if config.early_stopping.enabled and has_val and stopping.should_stop:
            start_epoch = config.num_epochs + 1
        progress.bar.update(step)
        progress.epoch_line(f"resuming from the checkpoint of step {step} in {workdir / checkpoint.CHECKPOINT_DIR}")
    first_step = step

    def save_checkpoint(state, totals, next_epoch, position, epoch_sums, improved=None, value=None):
        """Saves where the loop stands; after a stop signal, waits for the save and stops."""
        saver.save(state, totals, checkpoint.LoopState(
            step, next_epoch, position, epochs_run, epoch_sums, best_val_loss, best_val_accuracy,
            dataclasses.asdict(stopping), plateau.state_dict() if plateau is not None else None,
            writer.size()), improved=improved, monitor=stopping.monitor, value=value)
        if saver.stop_requested:
            saver.wait()
            progress.close()
            writer.close()
            raise checkpoint.TrainingInterrupted(saver.stop_requested, step, workdir)

    for epoch in range(start_epoch, config.num_epochs + 1):
        totals, epoch_sums = strategy.replicate(zero_train_totals()), {"loss": 0.0, "accuracy": 0.0, "steps": 0}
        epoch_start, log_start, log_step = time.perf_counter(), time.perf_counter(), step
        first_position = 0
        if loop_state is not None and epoch == loop_state.epoch:  # resuming inside this epoch
            totals, epoch_sums, first_position = (strategy.replicate(resumed_totals), dict(loop_state.epoch_sums),
                                                  loop_state.position)
        if train_many_fn is None:
            train_inputs = iter(strategy.train_inputs(train_split, config.seed, epoch, config.batch_size,
                                                      first_position))
        else:
            order = strategy.epoch_order(config.seed, epoch, num_train, config.batch_size)
        for position, num_steps in fused.plan_calls(first_position, steps_per_epoch, step, config.steps_per_call,
                                                    boundaries):
            if train_many_fn is None:
                state, totals = train_fn(state, totals, *next(train_inputs))
            else:
                state, totals, _ = train_many_fn(state, totals, train_split, order, strategy.step_index(position),
                                                 num_steps=num_steps)
            i = position + num_steps - 1  # the epoch position of the call's last step
            step += num_steps
            progress.step(epoch, num_steps)
            if step == first_step + num_steps:  # the first call compiles: keep it out of the throughput
                jax.block_until_ready(totals)
                compile_s, compiled_steps = time.perf_counter() - epoch_start, num_steps
                epoch_start = log_start = time.perf_counter()
                log_step = step
            if step % config.log_every_steps == 0 or i == steps_per_epoch - 1:
                fetched = jax.device_get(totals)
                now = time.perf_counter()
                images_per_s = (step - log_step) * config.batch_size / max(now - log_start, 1e-9)
                mean_loss = float(fetched["loss"] / fetched["steps"])
                mean_acc = float(fetched["accuracy"] / fetched["steps"])
                if step % config.log_every_steps == 0:
                    writer.write({"event": "train", "epoch": epoch, "step": step, "loss": mean_loss,
                                  "accuracy": mean_acc,
                                  "learning_rate": float(optim.learning_rate_in_effect(state.opt_state)),
                                  "images_per_s": images_per_s,
                                  "wall_time_s": time.perf_counter() - start_time})
                progress.log(mean_loss, mean_acc, images_per_s)
                epoch_sums = {k: epoch_sums[k] + fetched[k].item() for k in epoch_sums}
                totals, log_start, log_step = strategy.replicate(zero_train_totals()), now, step
            if saver is not None and i < steps_per_epoch - 1 and saver.due_in_epoch(step):
                save_checkpoint(state, totals, epoch, i + 1, epoch_sums)
        epoch_time = time.perf_counter() - epoch_start
        train_time += epoch_time
        timed_images += (steps_per_epoch - (compiled_steps if epoch == 1 else 0)) * config.batch_size
        epochs_run = epoch

        record = {"event": "epoch", "epoch": epoch, "step": step,
                  "train_loss": epoch_sums["loss"] / epoch_sums["steps"],
                  "train_accuracy": epoch_sums["accuracy"] / epoch_sums["steps"],
                  "learning_rate": float(optim.learning_rate_in_effect(state.opt_state))}
        if has_val:
            val = evaluate(eval_fn, state, val_split, config.eval_batch_size, strategy, eval_all_fn)
            record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
            best_val_loss = min(best_val_loss, val["loss"])
            best_val_accuracy = max(best_val_accuracy, val["accuracy"])
            if stopping.update(record[config.early_stopping.monitor], epoch) and config.early_stopping.restore_best:
                best_variables = jax.tree.map(jnp.copy, (state.params, state.batch_stats))
            if plateau is not None:
                state = state.replace(opt_state=optim.set_lr_scale(state.opt_state, plateau.update(val["loss"])))
                state = strategy.replicate(state)
        record.update(epoch_time_s=epoch_time,
                      images_per_s=steps_per_epoch * config.batch_size / max(epoch_time, 1e-9),
                      wall_time_s=time.perf_counter() - start_time)
        writer.write(record)
        progress.epoch_line(_epoch_line(record, config.num_epochs))
        improved = has_val and stopping.best_epoch == epoch
        last = epoch == config.num_epochs or (config.early_stopping.enabled and has_val and stopping.should_stop)
        if saver is not None and saver.due_at_epoch_end(step, improved, last):
            save_checkpoint(state, totals, epoch + 1, 0, {"loss": 0.0, "accuracy": 0.0, "steps": 0},
                            improved if has_val else None, record.get(stopping.monitor))
        if config.early_stopping.enabled and has_val and stopping.should_stop:
            progress.epoch_line(f"early stopping: {config.early_stopping.monitor} has not improved for "
                                f"{stopping.patience} epochs (best {stopping.best:.4f} at epoch {stopping.best_epoch})")
            break
    progress.close()

    stopped_early = epochs_run < config.num_epochs
    if config.early_stopping.enabled and config.early_stopping.restore_best and best_variables is not None:
        state = state.replace(params=best_variables[0], batch_stats=best_variables[1])
    test = evaluate(eval_fn, state, test_split, config.eval_batch_size, strategy, eval_all_fn)
    if strategy.num_devices == 1:
        predictions = predict(make_predict_fn(mean, std, config.loss.name, feed.eval_batch), state, test_split,
                              config.eval_batch_size)
    else:  # the per-example pass runs on one device: it fetches every prediction anyway
        predictions = predict(make_predict_fn(mean, std, config.loss.name), strategy.local_copy(state),
                              put_on_device(dataset.test), config.eval_batch_size)
    test_metrics = classification_metrics(dataset.test.labels, predictions["predicted"], predictions["confidence"],
                                          predictions["in_top_k"], dataset.class_names)
    if is_main:
        mistakes = most_confident_mistakes(dataset.test.labels, predictions["predicted"],
                                           predictions["confidence"], NUM_MISTAKES_KEPT)
        write_predictions(workdir / PREDICTIONS_FILE, dataset.test.labels, predictions, dataset.class_names,
                          mistakes, dataset.test.images[mistakes])
    writer.write({"event": "test", "epoch": epochs_run, "step": step, "test_loss": test["loss"],
                  "test_accuracy": test["accuracy"],
                  **{f"test_{key}": test_metrics[key] for key in
                     ("top5_accuracy", "expected_calibration_error", "macro_f1") if key in test_metrics},
                  "wall_time_s": time.perf_counter() - start_time})
    writer.close()
    if saver is not None:
        saver.close()

    summary = {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_examples": test["count"],
        "best_val_accuracy": best_val_accuracy if has_val else None,
        "best_val_loss": best_val_loss if has_val else None,
        "best_epoch": stopping.best_epoch if has_val else None,
        "epochs_run": epochs_run,
        "stopped_early": stopped_early,
        "steps": step,
        "seed": config.seed,
        "parallel": strategy.name,
        "num_devices": strategy.num_devices,
        "model": config.model.name,
        "num_params": models.count_params(state.params),
        "dataset": dataset.name,
        "num_train": num_train,
        "num_val": len(val_split),
        "input": "host" if isinstance(train_split, HostSplit) else "device",
        "normalization": {"mean": mean, "std": std},
        "compile_s": compile_s,
        "train_images_per_s": timed_images / train_time if train_time > 0 else None,
        "wall_time_s": time.perf_counter() - start_time,
        "class_names": list(dataset.class_names),
        "test_metrics": test_metrics,
    }
    if is_main:
        write_json(workdir / "summary.json", summary)
    return summary


def _epoch_line(record: dict[str, Any], num_epochs: int) -> str:
    text = (f"epoch {record['epoch']}/{num_epochs}  step {record['step']}  "
            f"loss {record['train_loss']:.4f}  acc {record['train_accuracy']:.4f}")
    if "val_loss" in record:
        text += f"  val_loss {record['val_loss']:.4f}  val_acc {record['val_accuracy']:.4f}"
    return text + f"  lr {record['learning_rate']:.3g}  {record['images_per_s']:.0f} img/s"

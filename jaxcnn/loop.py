"""`train_and_evaluate`: the training loop, to be read top to bottom.

config -> data + model + optimizer -> state -> compiled steps -> epochs (train, validate, decay,
stop early) -> test -> `config.json`, `metrics.jsonl`, `summary.json` in the workdir.
The host touches device values only at logging intervals and once per epoch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import tqdm

from jaxcnn import data, fused, losses, models, optim, precision
from jaxcnn.compilation import enable_compilation_cache
from jaxcnn.config import config_to_json, dataset_options, model_options, validate_config
from jaxcnn.data.device import DeviceSplit, eval_order, epoch_order, gather_batch, put_on_device
from jaxcnn.errors import JaxcnnError
from jaxcnn.state import TrainState, create_train_state
from jaxcnn.steps import eval_step, train_step
from jaxcnn.writers import MetricsWriter, write_json


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
    if (path / "metrics.jsonl").exists():
        raise JaxcnnError(f"workdir '{path}' already holds a run (metrics.jsonl); "
                          "pass a new --workdir or remove the old run")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JaxcnnError(f"workdir '{path}' cannot be created: {e.strerror}; pass a writable --workdir") from e
    return path


def make_train_fn(mean: float, std: float) -> Callable:
    """The compiled call of one training step on the on-device data; state and totals donated."""

    def train_one(state: TrainState, totals: dict, split: DeviceSplit, order: jax.Array, i: jax.Array):
        state, metrics = train_step(state, gather_batch(split, order[i], mean, std))
        totals = {"loss": totals["loss"] + metrics["loss"],
                  "accuracy": totals["accuracy"] + metrics["accuracy"],
                  "steps": totals["steps"] + 1}
        return state, totals

    return jax.jit(train_one, donate_argnums=(0, 1))


def make_eval_fn(mean: float, std: float) -> Callable:
    def eval_one(state: TrainState, totals: dict, split: DeviceSplit, order: jax.Array,
                 mask: jax.Array, i: jax.Array):
        batch = gather_batch(split, order[i], mean, std)
        batch["mask"] = mask[i]
        return jax.tree.map(jnp.add, totals, eval_step(state, batch))

    return jax.jit(eval_one, donate_argnums=(1,))


def zero_train_totals() -> dict[str, jax.Array]:
    return {"loss": jnp.zeros(()), "accuracy": jnp.zeros(()), "steps": jnp.zeros((), jnp.int32)}


def evaluate(eval_fn: Callable, state: TrainState, split: DeviceSplit, batch_size: int) -> dict[str, float]:
    """Loss and accuracy over every example of `split` exactly once (the last batch padded, masked)."""
    n = len(split)
    order, mask = eval_order(n, min(batch_size, n))
    order, mask = jnp.asarray(order), jnp.asarray(mask)
    totals = {"loss_sum": jnp.zeros(()), "correct": jnp.zeros(()), "count": jnp.zeros(())}
    for i in range(order.shape[0]):
        totals = eval_fn(state, totals, split, order, mask, i)
    totals = jax.device_get(totals)
    return {"loss": float(totals["loss_sum"] / totals["count"]),
            "accuracy": float(totals["correct"] / totals["count"]),
            "count": int(totals["count"])}


class Progress:
    """A tqdm bar on a terminal; otherwise one plain line per epoch (CI, pipes, nohup)."""

    def __init__(self, total_steps: int, num_epochs: int, quiet: bool):
        self.interactive = sys.stdout.isatty() and not quiet
        self.quiet = quiet
        self.num_epochs = num_epochs
        self.bar = tqdm.tqdm(total=total_steps, unit="step", dynamic_ncols=True,
                             disable=not self.interactive)

    def step(self, epoch: int, count: int = 1) -> None:
        self.bar.update(count)
        if self.interactive:
            self.bar.set_description(f"epoch {epoch}/{self.num_epochs}", refresh=False)

    def log(self, loss: float, accuracy: float, images_per_s: float) -> None:
        self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{accuracy:.4f}", img_s=f"{images_per_s:.0f}",
                             refresh=False)

    def epoch_line(self, text: str) -> None:
        if self.interactive:
            self.bar.write(text)
        elif not self.quiet:
            print(text, flush=True)

    def close(self) -> None:
        self.bar.close()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                       data_dir: str | None = None, quiet: bool = False) -> dict[str, Any]:
    """Trains `config`'s model on its dataset, evaluates it on the test split, writes the workdir.

    Returns the summary (also written to `workdir/summary.json`).
    """
    validate_config(config)
    workdir = prepare_workdir(workdir)
    if config.compilation_cache_dir:
        enable_compilation_cache(config.compilation_cache_dir)
    start_time = time.perf_counter()

    dataset = data.load_dataset(config.dataset.name, data_dir=data_dir or config.dataset.data_dir or None,
                                val_fraction=config.dataset.val_fraction, seed=config.seed,
                                **dataset_options(config))
    num_train = len(dataset.train)
    if config.batch_size > num_train:
        raise JaxcnnError(f"batch_size {config.batch_size} is larger than the training split "
                          f"({num_train} examples of {dataset.name}); lower batch_size")
    steps_per_epoch = num_train // config.batch_size
    model = models.create_model(config.model.name, dataset.num_classes,
                                dtype=precision.compute_dtype(config.dtype), **model_options(config))
    tx = optim.create_optimizer(config.optimizer, config.schedule, steps_per_epoch, config.num_epochs,
                                config.grad_accum_steps)
    loss_fn = losses.make_classification_loss(config.loss.name, dataset.num_classes,
                                              config.loss.label_smoothing)
    state = create_train_state(model, tx, loss_fn, dataset.input_shape, config.seed, config.loss.l2)
    plateau = optim.make_plateau_scheduler(config.schedule)
    stopping = EarlyStopping(config.early_stopping.monitor, config.early_stopping.patience,
                             config.early_stopping.min_delta)

    (workdir / "config.json").write_text(config_to_json(config) + "\n")
    writer = MetricsWriter(workdir)
    train_split, val_split, test_split = (put_on_device(s) for s in (dataset.train, dataset.val, dataset.test))
    mean, std = config.dataset.mean, config.dataset.std
    train_fn, eval_fn = make_train_fn(mean, std), make_eval_fn(mean, std)
    steps_per_call = config.steps_per_call
    if steps_per_call > 1:  # many steps per compiled call; evaluation in one call per split
        fused_train_fn = fused.make_fused_train_fn(mean, std)
        run_eval = functools.partial(fused.evaluate_fused, fused.make_fused_eval_fn(mean, std))
    else:
        run_eval = functools.partial(evaluate, eval_fn)
    has_val = len(val_split) > 0

    progress = Progress(steps_per_epoch * config.num_epochs, config.num_epochs, quiet)
    best_variables = None
    best_val_loss, best_val_accuracy = math.inf, -math.inf
    step, compile_s, train_time, timed_images, epochs_run = 0, 0.0, 0.0, 0, 0
    for epoch in range(1, config.num_epochs + 1):
        order = epoch_order(config.seed, epoch, num_train, config.batch_size)
        totals, epoch_sums = zero_train_totals(), {"loss": 0.0, "accuracy": 0.0, "steps": 0}
        epoch_start, log_start, log_step = time.perf_counter(), time.perf_counter(), step
        for i, num_steps in fused.call_sizes(steps_per_epoch, steps_per_call):
            if steps_per_call > 1:
                state, totals, _ = fused_train_fn(state, totals, train_split, order, i, num_steps=num_steps)
            else:
                state, totals = train_fn(state, totals, train_split, order, i)
            first_call = step == 0
            step += num_steps
            progress.step(epoch, num_steps)
            if first_call:  # the first call compiles: keep it out of the throughput
                jax.block_until_ready(totals)
                compile_s = time.perf_counter() - epoch_start
                epoch_start = log_start = time.perf_counter()
                log_step = step
            crossed_log = step // config.log_every_steps > (step - num_steps) // config.log_every_steps
            if crossed_log or i + num_steps == steps_per_epoch:
                fetched = jax.device_get(totals)
                now = time.perf_counter()
                images_per_s = (step - log_step) * config.batch_size / max(now - log_start, 1e-9)
                mean_loss = float(fetched["loss"] / fetched["steps"])
                mean_acc = float(fetched["accuracy"] / fetched["steps"])
                if crossed_log:
                    writer.write({"event": "train", "epoch": epoch, "step": step, "loss": mean_loss,
                                  "accuracy": mean_acc,
                                  "learning_rate": float(optim.learning_rate_in_effect(state.opt_state)),
                                  "images_per_s": images_per_s,
                                  "wall_time_s": time.perf_counter() - start_time})
                progress.log(mean_loss, mean_acc, images_per_s)
                epoch_sums = {k: epoch_sums[k] + fetched[k].item() for k in epoch_sums}
                totals, log_start, log_step = zero_train_totals(), now, step
        epoch_time = time.perf_counter() - epoch_start
        train_time += epoch_time
        timed_images += (steps_per_epoch - (min(steps_per_call, steps_per_epoch) if epoch == 1 else 0)) * config.batch_size
        epochs_run = epoch

        record = {"event": "epoch", "epoch": epoch, "step": step,
                  "train_loss": epoch_sums["loss"] / epoch_sums["steps"],
                  "train_accuracy": epoch_sums["accuracy"] / epoch_sums["steps"],
                  "learning_rate": float(optim.learning_rate_in_effect(state.opt_state))}
        if has_val:
            val = run_eval(state, val_split, config.eval_batch_size)
            record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
            best_val_loss = min(best_val_loss, val["loss"])
            best_val_accuracy = max(best_val_accuracy, val["accuracy"])
            if stopping.update(record[config.early_stopping.monitor], epoch) and config.early_stopping.restore_best:
                best_variables = jax.tree.map(jnp.copy, (state.params, state.batch_stats))
            if plateau is not None:
                state = state.replace(opt_state=optim.set_lr_scale(state.opt_state, plateau.update(val["loss"])))
        record.update(epoch_time_s=epoch_time,
                      images_per_s=steps_per_epoch * config.batch_size / max(epoch_time, 1e-9),
                      wall_time_s=time.perf_counter() - start_time)
        writer.write(record)
        progress.epoch_line(_epoch_line(record, config.num_epochs))
        if config.early_stopping.enabled and has_val and stopping.should_stop:
            progress.epoch_line(f"early stopping: {config.early_stopping.monitor} has not improved for "
                                f"{stopping.patience} epochs (best {stopping.best:.4f} at epoch {stopping.best_epoch})")
            break
    progress.close()

    stopped_early = epochs_run < config.num_epochs
    if config.early_stopping.enabled and config.early_stopping.restore_best and best_variables is not None:
        state = state.replace(params=best_variables[0], batch_stats=best_variables[1])
    test = run_eval(state, test_split, config.eval_batch_size)
    writer.write({"event": "test", "epoch": epochs_run, "step": step, "test_loss": test["loss"],
                  "test_accuracy": test["accuracy"], "wall_time_s": time.perf_counter() - start_time})
    writer.close()

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
        "model": config.model.name,
        "num_params": models.count_params(state.params),
        "dataset": dataset.name,
        "num_train": num_train,
        "num_val": len(val_split),
        "compile_s": compile_s,
        "train_images_per_s": timed_images / train_time if train_time > 0 else None,
        "wall_time_s": time.perf_counter() - start_time,
    }
    write_json(workdir / "summary.json", summary)
    return summary


def _epoch_line(record: dict[str, Any], num_epochs: int) -> str:
    text = (f"epoch {record['epoch']}/{num_epochs}  step {record['step']}  "
            f"loss {record['train_loss']:.4f}  acc {record['train_accuracy']:.4f}")
    if "val_loss" in record:
        text += f"  val_loss {record['val_loss']:.4f}  val_acc {record['val_accuracy']:.4f}"
    return text + f"  lr {record['learning_rate']:.3g}  {record['images_per_s']:.0f} img/s"

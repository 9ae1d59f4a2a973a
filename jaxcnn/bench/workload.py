"""What the benchmark's modes share: the workload (one model × batch size × dtype on one dataset)
and jaxcnn's program for it, built by `jaxcnn train`'s own setup.

The `step` and `fused` modes and `jaxcnn bench --seeds` time the program `training.run.setup`
builds from a config (`bench_config`): its feeds, compiled calls, initial state and autotuned plan
are those a run of that config trains with, so there is one path from a config to what is timed.
The baseline (`jaxcnn.bench.baseline`) reads the same examples in the same order, on its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxcnn import data, models
from jaxcnn.bench.settings import BenchSettings
from jaxcnn.config import base_config, validate_config
from jaxcnn.core import precision
from jaxcnn.core.executor import Executor
from jaxcnn.data.device import epoch_order
from jaxcnn.data.feed import chunks
from jaxcnn.errors import JaxcnnError
from jaxcnn.training.run import Program, setup

LEARNING_RATE, MOMENTUM = 0.01, 0.9  # SGD with momentum for every mode: the Flax example's optimizer


@dataclasses.dataclass
class Workload:
    """One model × batch size × dtype on one dataset: everything the modes share."""

    name: str
    batch_size: int
    dtype: str
    train: data.Split
    test: data.Split
    num_classes: int
    order: np.ndarray  # (steps, batch) training indices, the same for every mode
    mean: float
    std: float

    def model(self, conv_impl: str) -> Any:
        """jaxcnn's module of the model with convolutions `conv_impl`: the baseline's for the models
        it has no plain Flax module of (`baseline.PLAIN`) and for the dtypes other than float32."""
        options = {"conv_impl": conv_impl} if "conv_impl" in models.model_defaults(self.name) else {}
        return models.create_model(self.name, self.num_classes, dtype=precision.compute_dtype(self.dtype), **options)

    def dataset(self) -> data.Dataset:
        """The workload's splits as the `data.Dataset` a run trains on, so that `jaxcnn train`'s
        setup reads exactly the examples the baseline does."""
        names = [str(c) for c in range(self.num_classes)]
        return data.Dataset.from_arrays(self.train.images, self.train.labels, self.test.images, self.test.labels,
                                        names)


def bench_config(work: Workload, settings: BenchSettings, steps_per_call: int, cache_dir: str,
                 num_members: int | None = None, parallel: str = "none") -> ml_collections.ConfigDict:
    """The config of the run `jaxcnn train` would make of the workload, so that the bench times what
    training runs: its model (`model.conv_impl` from the settings), SGD with momentum at a constant
    rate (the baseline's optimizer), one epoch of its batches, `steps_per_call` steps per call, no
    validation split or augmentation, the data on the device; `seeds` N for `num_members`."""
    config = base_config(model=work.name, dataset=settings.dataset)
    described = ({"dataset.image_shape": tuple(work.train.images.shape[1:]), "dataset.num_classes": work.num_classes,
                  "dataset.num_train": len(work.train.labels), "dataset.num_test": len(work.test.labels)}
                 if settings.dataset == "synthetic" else {"dataset.data_dir": settings.data_dir or ""})
    config.update_from_flattened_dict({
        "seed": settings.seed, "seeds": num_members, "batch_size": work.batch_size, "num_epochs": 1,
        "steps_per_call": steps_per_call, "dtype": work.dtype, "compilation_cache_dir": cache_dir,
        "eval_batch_size": min(settings.eval_batch_size, len(work.test.labels)), "parallel": parallel,
        "optimizer.name": "sgd", "optimizer.learning_rate": LEARNING_RATE, "optimizer.momentum": MOMENTUM,
        "schedule.name": "constant", "dataset.val_fraction": 0.0, "dataset.mean": work.mean,
        "dataset.std": work.std, "dataset.input": "device", **described})
    if "conv_impl" in config.model:
        config.model.conv_impl = settings.conv_impl
    validate_config(config)
    return config


def bench_program(work: Workload, settings: BenchSettings, steps_per_call: int, cache_dir: str,
                  num_members: int | None = None, parallel: str = "none") -> Program:
    """What `jaxcnn train` would train the workload with (`bench_config`), built by its own setup
    (`training.run.setup`): feeds, compiled calls, initial state and the autotuned plan, so the bench
    cannot time a program that training does not run."""
    config = bench_config(work, settings, steps_per_call, cache_dir, num_members, parallel)
    return setup(config, Executor(config.parallel, members=num_members or 0), None, work.dataset())


def make_workload(name: str, batch_size: int, dtype: str, settings: BenchSettings) -> Workload:
    """Seeded synthetic data of the model's default input shape (or the chosen real dataset): an
    epoch of `num_train` examples in whole batches, as `jaxcnn train` reads them (59,904 at batch
    128), at least one fused call's worth."""
    num_train = batch_size * max(settings.num_train // batch_size, settings.steps_per_call, settings.fingerprint_steps)
    if settings.dataset == "synthetic":
        dataset = data.load_dataset("synthetic", val_fraction=0.0, seed=settings.seed,
                                    image_shape=models.default_input_shape(name), num_classes=10,
                                    num_train=num_train, num_test=settings.num_test)
    else:
        dataset = data.load_dataset(settings.dataset, data_dir=settings.data_dir, val_fraction=0.0,
                                    seed=settings.seed)
    if settings.dataset != "synthetic":  # at most the real training split, in whole batches
        num_train = max(min(num_train, len(dataset.train.labels) // batch_size * batch_size),
                        batch_size * max(settings.steps_per_call, settings.fingerprint_steps))
    if len(dataset.train.labels) < num_train:
        raise JaxcnnError(f"dataset {settings.dataset!r} has {len(dataset.train.labels)} training examples; "
                          f"batch size {batch_size} × steps_per_call needs {num_train}; lower --steps-per-call")
    train = data.Split(dataset.train.images[:num_train], dataset.train.labels[:num_train])
    test = data.Split(dataset.test.images[:settings.num_test], dataset.test.labels[:settings.num_test])
    order = np.asarray(epoch_order(settings.seed, 1, num_train, batch_size))
    return Workload(name, batch_size, dtype, train, test, dataset.num_classes, order, 0.0, 1.0)


@dataclasses.dataclass
class TrainCycle:
    """A compiled training call made over an epoch's full calls in turn, as the benchmark times it:
    each call of the cycle makes the next one and returns the images it trained (summed over the
    members of a stacked state)."""

    compiled: Callable
    state: Any
    totals: Any
    inputs: dict[str, Any]
    starts: list[Any]  # the placed start index of each full call of the epoch
    images_per_call: int
    cursor: int = 0

    def __call__(self) -> int:
        start = self.starts[self.cursor % len(self.starts)]
        self.state, self.totals = self.compiled(self.state, self.totals, self.inputs, start)
        self.cursor += 1
        return self.images_per_call

    def sync(self) -> None:
        jax.block_until_ready(self.state)


def full_calls(program: Program, steps_per_call: int) -> list[tuple[dict[str, Any], Any]]:
    """(inputs, placed start) of each call of `steps_per_call` steps that fits in the program's
    first epoch, as its training loop plans them."""
    plan = [(position, n) for position, n in chunks(program.steps_per_epoch, steps_per_call) if n == steps_per_call]
    return list(program.train_calls(1, plan))


def train_cycle(program: Program, compiled: Callable, state: Any, steps_per_call: int) -> TrainCycle:
    """The cycle over the program's full calls of `steps_per_call` steps, from `state`, with fresh totals."""
    calls = full_calls(program, steps_per_call)
    return TrainCycle(compiled, state, program.zero_totals(), calls[0][0], [start for _, start in calls],
                      program.config.batch_size * steps_per_call * program.num_members)

"""Runs in a subprocess of tests/test_parallel.py, with its own simulated CPU device count.

The device count (JAX_NUM_CPU_DEVICES) must be set before JAX starts, and the other tests assume
one device, so everything multi-device runs here, in a fresh interpreter:

    python tests/parallel_worker.py train OUT CELL...               # each cell trained into OUT/CELL
    python tests/parallel_worker.py distributed ADDR N I OUT CELL... # the same, as process I of N
    python tests/parallel_worker.py eval                            # prints JSON: eval of 10,001 examples

A cell is MODEL-PARALLEL-K-INPUT (e.g. `mlp-pmap-5-host`): 20 training steps of the model with that
`parallel`, `steps_per_call` and `dataset.input`. The tests read the trained parameters back from
each workdir's last checkpoint. A cell `...-stop30` sends this process SIGTERM after step 30, and
one ending in `-long` trains 5 epochs (100 steps) with a checkpoint every 10 steps; `-members`
trains seeds 0-3 as one run of members (member 0 is the cell's single run), and `-val` holds out
a validation split.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sys

import jax
import numpy as np

from jaxcnn import models
from jaxcnn.core import losses, optim
from jaxcnn.files import checkpoint, writers
from jaxcnn.core.build import prepare_fn
from jaxcnn.config import load_config
from jaxcnn.data import Split
from jaxcnn.data.feed import make_feeds
from jaxcnn.runtime.distributed import initialize_distributed
from jaxcnn.core.evaluation import evaluate
from jaxcnn.core.executor import Executor
from jaxcnn.training.loop import train_and_evaluate
from jaxcnn.core.state import create_train_state

# 640 training examples at global batch 32 and 1 epoch: 20 steps. 100 test examples: padded evals.
COMMON = ["dataset.name=synthetic", "dataset.image_shape=(8, 8, 1)", "dataset.num_train=640",
          "dataset.num_test=100", "dataset.val_fraction=0.0", "batch_size=32", "eval_batch_size=64",
          "num_epochs=1", "log_every_steps=5", "schedule.name=constant", "optimizer.name=sgd",
          "optimizer.learning_rate=0.05", "optimizer.momentum=0.9"]
MODELS = {
    "mlp": ["model.name=mlp", "model.hidden=(32,)"],
    "bn_cnn": ["model.name=cnn", "model.blocks=((8,), (16,))", "model.hidden=(32,)", "model.batch_norm=true"],
    "tiny": ["model.name=tiny_cnn"],
}


def cell_config(cell: str):
    model, parallel, k, feed, *extra = cell.split("-")
    overrides = COMMON + MODELS[model] + [f"parallel={parallel}", f"steps_per_call={k}", f"dataset.input={feed}"]
    if "long" in extra:
        overrides += ["num_epochs=5", "checkpoint.every_steps=10"]
    if "members" in extra:  # a run of 4 members (seeds 0-3)
        overrides += ["seeds=(0, 1, 2, 3)"]
    if "val" in extra:  # a validation split (each member carves its own)
        overrides += ["dataset.val_fraction=0.1"]
    return load_config("digits_cnn", overrides)


def stop_after(step: int) -> None:
    """Sends this process SIGTERM once training passes `step` (the progress bar counts steps)."""
    original, seen = writers.Progress.step, [0]

    def step_and_signal(self, epoch, num_steps=1):
        original(self, epoch, num_steps)
        seen[0] += num_steps
        if seen[0] >= step and not hasattr(self, "signalled"):
            self.signalled = True
            os.kill(os.getpid(), signal.SIGTERM)

    writers.Progress.step = step_and_signal


def train_cells(out: pathlib.Path, cells: list[str]) -> None:
    for cell in cells:
        if cell.endswith("-stop30") and jax.process_index() == jax.process_count() - 1:
            stop_after(30)  # one process only: the others learn of it from that one
        try:
            train_and_evaluate(cell_config(cell), out / cell, quiet=True)
        except checkpoint.TrainingInterrupted as stop:
            print(f"stopped {stop.step}", flush=True)


def main_eval() -> None:
    """Evaluates one model on 10,001 examples (eval batch 1000, so the last is padded) per strategy."""
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (10_001, 8, 8, 1), dtype=np.uint8),
                  rng.integers(0, 10, 10_001).astype(np.int32))
    model = models.create_model("mlp", 10, hidden=(32,))
    loss_fn = losses.make_classification_loss("cross_entropy", 10)
    tx = optim.create_optimizer(optim.default_optimizer_config(), optim.default_schedule_config(), 1, 1)
    state = create_train_state(model, tx, loss_fn, (8, 8, 1), seed=0)
    results = {}
    for name in ("none", "pmap", "sharded"):
        executor = Executor(name)
        calls = executor.compile(prepare_fn(0.0, 1.0), prepare_fn(0.0, 1.0), "cross_entropy", 5)
        for input_mode in ("device", "host"):
            feed = make_feeds((split,), input_mode, 1.0, executor)[0]
            results[f"{name}-{executor.num_devices}-{input_mode}"] = evaluate(
                calls, executor.put(state), feed, 1000, 3)
    print(json.dumps(results))


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "train":
        train_cells(pathlib.Path(args[0]), args[1:])
    elif mode == "eval":
        main_eval()
    else:
        initialize_distributed(args[0], int(args[1]), int(args[2]), timeout_s=60)
        train_cells(pathlib.Path(args[3]), args[4:])

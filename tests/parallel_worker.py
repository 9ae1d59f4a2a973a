"""Runs in a subprocess of tests/test_parallel.py, with its own simulated CPU device count.

The device count (JAX_NUM_CPU_DEVICES) must be set before JAX starts, and the other tests assume
one device, so everything multi-device runs here, in a fresh interpreter:

    python tests/parallel_worker.py train OUT STRATEGY...        # 20 steps per model; OUT/<model>-<strategy>.npz
    python tests/parallel_worker.py eval                         # prints JSON: eval of 10,001 examples per strategy
    python tests/parallel_worker.py distributed OUT ADDR N I     # one process of an N-process run
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import numpy as np

from jaxcnn import loop, losses, models, optim, parallel
from jaxcnn.config import load_config
from jaxcnn.data import Split
from jaxcnn.state import create_train_state

# 640 training examples at global batch 32 and 1 epoch: 20 steps. 100 test examples: padded evals.
COMMON = ["dataset.name=synthetic", "dataset.image_shape=(8, 8, 1)", "dataset.num_train=640",
          "dataset.num_test=100", "dataset.val_fraction=0.0", "batch_size=32", "eval_batch_size=64",
          "num_epochs=1", "log_every_steps=5", "schedule.name=constant", "optimizer.name=sgd",
          "optimizer.learning_rate=0.05", "optimizer.momentum=0.9"]
MODELS = {
    "mlp": ["model.name=mlp", "model.hidden=(32,)"],
    "bn_cnn": ["model.name=cnn", "model.blocks=((8,), (16,))", "model.hidden=(32,)", "model.batch_norm=true"],
}


def train(workdir: pathlib.Path, model: str, strategy: str) -> dict[str, np.ndarray]:
    """Trains 20 steps; returns the final parameters and batch statistics as flat numpy arrays."""
    final = {}
    evaluate = loop.evaluate

    def record_state(eval_fn, state, *args, **kwargs):  # the test eval sees the final state
        final["state"] = state
        return evaluate(eval_fn, state, *args, **kwargs)

    loop.evaluate = record_state
    try:
        config = load_config("digits_cnn", COMMON + MODELS[model] + [f"parallel={strategy}"])
        loop.train_and_evaluate(config, workdir, quiet=True)
    finally:
        loop.evaluate = evaluate
    variables = jax.device_get({"params": final["state"].params, "batch_stats": final["state"].batch_stats})
    return {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(variables)}


def main_train(out: pathlib.Path, strategies: list[str]) -> None:
    for model in MODELS:
        for strategy in strategies:
            name = f"{model}-{strategy}"
            np.savez(out / f"{name}.npz", **train(out / f"run-{name}", model, strategy))


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
        strategy = parallel.create_strategy(name)
        results[f"{name}-{strategy.num_devices}"] = loop.evaluate(
            loop.make_eval_fn(0.0, 1.0, strategy=strategy), strategy.replicate(state), strategy.place_split(split),
            1000, strategy)
    print(json.dumps(results))


def main_distributed(out: pathlib.Path, address: str, num_processes: int, process_id: int) -> None:
    parallel.initialize_distributed(address, num_processes, process_id, timeout_s=30)
    variables = train(out / f"run-{process_id}", "bn_cnn", "auto")
    np.savez(out / f"process-{process_id}.npz", **variables)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "train":
        main_train(pathlib.Path(args[0]), args[1:])
    elif mode == "eval":
        main_eval()
    else:
        main_distributed(pathlib.Path(args[0]), args[1], int(args[2]), int(args[3]))

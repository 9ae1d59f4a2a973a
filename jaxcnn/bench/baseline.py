"""The benchmark's yardstick: the way typical Flax code trains (the Flax MNIST example's shape).

A `flax.training` TrainState, one `jax.jit` step per batch over NumPy batches sliced on the host,
SGD with momentum, `jax.jit(apply)` for evaluation, XLA's default options. The models a user
writes: `PLAIN` holds `mlp`, `cnn` and `tiny_cnn` as plain `nn.Dense`/`nn.Conv`/`nn.avg_pool`/
`nn.max_pool` modules, as the outside yardstick (`../shared/bench-peers`, its P4) writes them,
with the same parameter names and initial values as jaxcnn's presets. Other models use jaxcnn's
own module with XLA's convolution. Kept apart from jaxcnn's own calls on purpose: it is what they
are measured against (`jaxcnn.bench.throughput`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import flax.linen as nn
from flax.training import train_state as flax_train_state


class PlainMLP(nn.Module):
    """The seed MLP 784-512-10 as a user writes it."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.relu(nn.Dense(512)(x.reshape((x.shape[0], -1))))
        return nn.Dense(self.num_classes)(x)


class PlainCNN(nn.Module):
    """The Flax MNIST example's CNN as it is written there."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.avg_pool(nn.relu(nn.Conv(32, (3, 3))(x)), (2, 2), strides=(2, 2))
        x = nn.avg_pool(nn.relu(nn.Conv(64, (3, 3))(x)), (2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(256)(x.reshape((x.shape[0], -1))))
        return nn.Dense(self.num_classes)(x)


class PlainTinyCNN(nn.Module):
    """Notes 004's tiny CNN: conv 3x3x8 VALID, max-pool 2, Dense."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.max_pool(nn.Conv(8, (3, 3), padding="VALID")(x), (2, 2), strides=(2, 2))
        return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


PLAIN = {"mlp": PlainMLP, "cnn": PlainCNN, "tiny_cnn": PlainTinyCNN}


def train_step(state: Any, batch_stats: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any, jax.Array]:
    """One SGD step on a host batch; BatchNorm statistics updated when the model has them."""
    def loss_fn(params):
        if batch_stats:
            logits, updates = state.apply_fn({"params": params, "batch_stats": batch_stats}, x,
                                             train=True, mutable=["batch_stats"])
            new_stats = updates["batch_stats"]
        else:
            logits, new_stats = state.apply_fn({"params": params}, x, train=True), batch_stats
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_stats

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads), new_stats, loss


def predict(state: Any, batch_stats: Any, x: jax.Array) -> jax.Array:
    variables = {"params": state.params, **({"batch_stats": batch_stats} if batch_stats else {})}
    return jnp.argmax(state.apply_fn(variables, x, train=False), -1)


def run(work: Any, settings: Any, measure: Any, compile_times: Any, flops_of: Any,
        learning_rate: float, momentum: float) -> dict[str, Any]:
    """Times the baseline on `work` (a `bench.Workload`) and returns `measure`'s result row."""
    model = PLAIN[work.name](work.num_classes) if work.name in PLAIN and work.dtype == "float32" else \
        work.model(conv_impl="xla")
    init_key = jax.random.split(jax.random.PRNGKey(settings.seed))[0]  # create_train_state's init key
    variables = jax.jit(model.init)(init_key, jnp.zeros((1, *work.train.images.shape[1:])))
    tx = optax.sgd(learning_rate, momentum)
    images = (work.train.images.astype(np.float32) / 255.0 - work.mean) / work.std
    labels = work.train.labels
    test_images = (work.test.images.astype(np.float32) / 255.0 - work.mean) / work.std
    state = flax_train_state.TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx)
    stats = variables.get("batch_stats", {})
    step_fn, predict_fn = jax.jit(train_step), jax.jit(predict)
    first = (state, stats, images[work.order[0]], labels[work.order[0]])
    compiled, cold, warm = compile_times(step_fn, first)
    flops = flops_of(step_fn, first)

    loss = None
    for i in range(settings.fingerprint_steps):
        idx = work.order[i % len(work.order)]
        state, stats, loss = compiled(state, stats, images[idx], labels[idx])
    fingerprint = float(loss)
    cursor = [0]

    def train_some() -> int:
        nonlocal state, stats
        idx = work.order[cursor[0] % len(work.order)]
        cursor[0] += 1
        state, stats, _ = compiled(state, stats, images[idx], labels[idx])
        return work.batch_size

    batch = min(settings.eval_batch_size, len(test_images))

    def eval_pass() -> int:
        jax.block_until_ready([predict_fn(state, stats, test_images[i:i + batch])
                               for i in range(0, len(test_images), batch)])
        return len(test_images)

    return measure(train_some, eval_pass, lambda: state, settings, cold, warm, flops, work, fingerprint)

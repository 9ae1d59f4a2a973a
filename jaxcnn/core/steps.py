"""Pure training and evaluation steps: arrays in, arrays out; no I/O, no Python randomness.

Strategies (plain jit, pmap, sharded jit, fused scans) wrap these at the call site.
A batch is a dict: `image` float32 (B, H, W, C), `label` int32 (B,), and for evaluation `mask`
float32 (B,) marking the real examples of a padded batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxcnn.core import ema, loss_scale, losses, optim
from jaxcnn.core.augment import mixed_targets, tta_logits
from jaxcnn.core.finetune import keep_frozen
from jaxcnn.core.state import TrainState, hyper_of

Metrics = dict[str, jax.Array]


def train_step(state: TrainState, batch: dict[str, jax.Array],
               axis_name: str | None = None) -> tuple[TrainState, Metrics]:
    """One optimizer step on one batch; returns the new state and the batch's mean metrics.

    Under `pmap`, `axis_name` names the device axis: `batch` is this device's equal slice of the
    global batch; gradients and metrics are averaged over the devices (`lax.pmean`), so every
    device applies the global-batch update, and each device draws its own dropout mask.
    """
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:
        dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(axis_name))
    scale = loss_scale.scale_of(state)  # float16: the dynamic loss scale; None otherwise

    def objective(params):
        outputs, updates = state.apply_fn(
            state.variables(params), batch["image"], train=True,
            rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
        loss = loss_of(state)(outputs, mixed_targets(batch, outputs.shape[-1])).mean()  # mixup: soft targets
        hyper = hyper_of(state)
        l2 = hyper.get("l2", state.l2)
        penalty = l2 * losses.l2_penalty(params) if "l2" in hyper or state.l2 else 0.0
        return loss_scale.scaled(loss + penalty, scale), (loss, outputs, updates.get("batch_stats", {}))

    grads, (loss, logits, batch_stats) = jax.grad(objective, has_aux=True)(state.params)
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
    grads = loss_scale.unscaled(grads, scale)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=keep_frozen(state.frozen, state.batch_stats, batch_stats),
        opt_state=opt_state,
    )
    new_state = ema.updated(state, new_state)  # the averages, when EMA is on (config.ema.decay)
    new_state, skipped = loss_scale.kept_or_skipped(state, new_state, grads)  # float16: an overflow is skipped
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
        "learning_rate": optim.learning_rate_in_effect(new_state.opt_state),
        **({} if skipped is None else {"skipped": skipped}),
    }
    if axis_name is not None:
        metrics = jax.lax.pmean(metrics, axis_name)
    return new_state, metrics


def loss_of(state: TrainState):
    """The state's per-example loss `(logits, labels)`; with a swept label smoothing, the member's."""
    smoothing = hyper_of(state).get("label_smoothing")
    if smoothing is None:
        return state.loss_fn
    return lambda logits, labels: state.loss_fn(logits, labels, smoothing)


def zero_train_totals(scaled: bool = False) -> Metrics:
    """The loop's on-device training totals before any step: summed loss and accuracy, step count;
    with `scaled` (a float16 run's loss scaling) also the count of skipped steps."""
    totals = {"loss": jnp.zeros(()), "accuracy": jnp.zeros(()), "steps": jnp.zeros((), jnp.int32)}
    return {**totals, "skipped": jnp.zeros((), jnp.int32)} if scaled else totals


def add_to_totals(totals: Metrics, metrics: Metrics) -> Metrics:
    """The training totals with one step's metrics (`train_step`'s) added. With a `skipped` count
    the loss and accuracy of a skipped step (overflowed under float16's loss scaling, possibly not
    finite) are left out of the sums: the loop's means are over the steps applied."""
    if "skipped" not in totals:
        return {"loss": totals["loss"] + metrics["loss"], "accuracy": totals["accuracy"] + metrics["accuracy"],
                "steps": totals["steps"] + 1}
    skipped = metrics["skipped"] > 0
    return {"loss": totals["loss"] + jnp.where(skipped, 0.0, metrics["loss"]),
            "accuracy": totals["accuracy"] + jnp.where(skipped, 0.0, metrics["accuracy"]),
            "steps": totals["steps"] + 1, "skipped": totals["skipped"] + skipped.astype(jnp.int32)}


def zero_eval_sums() -> Metrics:
    """`eval_step`'s sums before any batch."""
    return {"loss_sum": jnp.zeros(()), "correct": jnp.zeros(()), "count": jnp.zeros(())}


def logits_of(state: TrainState, batch: dict[str, jax.Array]) -> jax.Array:
    """The model's evaluation-mode logits of a batch (averaged over `eval.tta`'s views)."""
    return tta_logits(lambda images: state.apply_fn(state.variables(), images, train=False), batch)


def eval_step(state: TrainState, batch: dict[str, jax.Array], logits: jax.Array | None = None) -> Metrics:
    """Sums over the real (mask = 1) examples of a batch: loss, correct predictions, count
    (of `logits` when the caller has them already)."""
    logits = logits_of(state, batch) if logits is None else logits
    mask = batch["mask"]
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(loss_of(state)(logits, batch["label"]) * mask),
        "correct": jnp.sum(correct * mask),
        "count": jnp.sum(mask),
    }


def predict_step(state: TrainState, batch: dict[str, jax.Array], loss_name: str, top_k: int = 5,
                 logits: jax.Array | None = None) -> Metrics:
    """Per-example outputs for the final metrics: predicted class, its probability (the confidence,
    by the output activation of `loss_name`), and whether the true class is among the `top_k` scores."""
    logits = logits_of(state, batch) if logits is None else logits
    probabilities = losses.predict_probabilities(loss_name, logits)
    true_score = jnp.take_along_axis(logits, batch["label"][:, None], axis=-1)
    return {
        "predicted": jnp.argmax(logits, -1).astype(jnp.int32),
        "confidence": jnp.max(probabilities, -1),
        "in_top_k": jnp.sum(logits > true_score, axis=-1) < top_k,
    }


def eval_predict_step(state: TrainState, batch: dict[str, jax.Array], loss_name: str,
                      top_k: int = 5) -> tuple[Metrics, Metrics]:
    """`eval_step`'s sums and `predict_step`'s per-example outputs of one forward pass: the test."""
    logits = logits_of(state, batch)
    return eval_step(state, batch, logits), predict_step(state, batch, loss_name, top_k, logits)

"""Loss functions: each returns per-example losses of shape (batch,), except `l2_penalty`.

The model emits logits; the output activation (softmax or sigmoid) belongs to the loss, so
`predict_probabilities` applies the one matching the training loss. Each classification loss is
one entry of `jaxcnn.spec.LOSSES` (registered here): its per-example loss, its output activation
and whether it supports label smoothing.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxcnn.spec import LOSSES, LossEntry, LossSpec

ClassificationLoss = Callable[[jax.Array, jax.Array], jax.Array]
# The output activations a loss implies (`LossEntry.output`): logits -> class probabilities.
OUTPUTS: dict[str, Callable[[jax.Array], jax.Array]] = {"softmax": jax.nn.softmax, "sigmoid": jax.nn.sigmoid}


def _per_example_mean(values: jax.Array) -> jax.Array:
    """Mean over every axis but the first (batch); a (batch,) input is returned unchanged."""
    return values.reshape(values.shape[0], -1).mean(axis=-1)


def as_targets(labels: jax.Array, num_classes: int) -> jax.Array:
    """Class targets (B, K): integer labels one-hot; soft targets (mixup, cutmix: already (B, K)
    floats, `augment.mixed_targets`) as they are, so every loss takes either."""
    if jnp.issubdtype(labels.dtype, jnp.integer):
        return jax.nn.one_hot(labels, num_classes)
    return labels


def softmax_cross_entropy(
    logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
    """Softmax cross-entropy against integer labels or soft targets; `label_smoothing` is a Python float.

    With smoothing a, the target is (1 - a) * target + a / num_classes.
    """
    if label_smoothing > 0 or not jnp.issubdtype(labels.dtype, jnp.integer):
        targets = optax.smooth_labels(as_targets(labels, logits.shape[-1]), label_smoothing)
        return optax.softmax_cross_entropy(logits, targets)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def sigmoid_binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Stable sigmoid BCE; logits (B,), (B, 1) or multi-label (B, K), mean over the labels."""
    logits = logits.reshape(logits.shape[0], -1)
    targets = jnp.reshape(targets, logits.shape).astype(logits.dtype)
    return optax.sigmoid_binary_cross_entropy(logits, targets).mean(axis=-1)


def mean_squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    return _per_example_mean(jnp.square(predictions - targets))


def l1_loss(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    return _per_example_mean(jnp.abs(predictions - targets))


def _leaf_name(path: tuple) -> str | None:
    last = path[-1] if path else None
    return getattr(last, "key", getattr(last, "name", None))


def l2_penalty(params) -> jax.Array:
    """Sum of squares of the leaves named `kernel` (biases and BatchNorm scale/bias excluded)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    squares = [jnp.sum(jnp.square(leaf)) for path, leaf in leaves if _leaf_name(path) == "kernel"]
    return sum(squares, jnp.zeros((), jnp.float32))


def _on_probabilities(distance: Callable[[jax.Array, jax.Array], jax.Array]):
    """`mse` and `l1` compare softmax probabilities with one-hot targets (Keras' softmax output layer)."""
    return lambda num_classes, smoothing: (
        lambda logits, labels: distance(jax.nn.softmax(logits), as_targets(labels, num_classes)))


LOSSES.register("cross_entropy", LossEntry(
    lambda num_classes, smoothing: lambda logits, labels: softmax_cross_entropy(logits, labels, smoothing),
    output="softmax", label_smoothing=True))
# Each class an independent sigmoid.
LOSSES.register("binary_cross_entropy", LossEntry(
    lambda num_classes, smoothing: (
        lambda logits, labels: sigmoid_binary_cross_entropy(logits, as_targets(labels, num_classes))),
    output="sigmoid"))
LOSSES.register("mse", LossEntry(_on_probabilities(mean_squared_error)))
LOSSES.register("l1", LossEntry(_on_probabilities(l1_loss)))


def make_classification_loss(
    name: str, num_classes: int, label_smoothing: float = 0.0, sweep_label_smoothing: bool = False
) -> ClassificationLoss:
    """The per-example training loss `(logits, int_labels) -> (batch,)` for integer class labels
    (`name`'s entry of `jaxcnn.spec.LOSSES`; `name` and `label_smoothing` checked by `LossSpec`).
    `sweep_label_smoothing`: the loss takes the smoothing as a third argument, an array (one value
    per member of a sweep, `jaxcnn.core.members`); cross-entropy only."""
    spec = LossSpec(name=name, label_smoothing=label_smoothing)
    if sweep_label_smoothing:
        return lambda logits, labels, smoothing: optax.softmax_cross_entropy(
            logits, optax.smooth_labels(as_targets(labels, logits.shape[-1]), smoothing))
    return LOSSES[spec.name].make(num_classes, label_smoothing)


def predict_probabilities(loss_name: str, logits: jax.Array) -> jax.Array:
    """Class probabilities: the output activation of the training loss (sigmoid for
    `binary_cross_entropy`, softmax for the others)."""
    return OUTPUTS[LOSSES.lookup(loss_name).output](logits)

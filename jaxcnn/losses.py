"""Loss functions: each returns per-example losses of shape (batch,), except `l2_penalty`.

The model emits logits; the output activation (softmax or sigmoid) belongs to the loss, so
`predict_probabilities` applies the one matching the training loss.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxcnn.errors import JaxcnnError

LOSS_NAMES = ("binary_cross_entropy", "cross_entropy", "l1", "mse")

ClassificationLoss = Callable[[jax.Array, jax.Array], jax.Array]


def _per_example_mean(values: jax.Array) -> jax.Array:
    """Mean over every axis but the first (batch); a (batch,) input is returned unchanged."""
    return values.reshape(values.shape[0], -1).mean(axis=-1)


def softmax_cross_entropy(
    logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
    """Softmax cross-entropy against integer labels; `label_smoothing` is a Python float.

    With smoothing a, the target is (1 - a) * one_hot + a / num_classes.
    """
    if label_smoothing > 0:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
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


def _check_loss_name(name: str) -> None:
    if name not in LOSS_NAMES:
        raise JaxcnnError(
            f"unknown loss {name!r} (loss.name); expected one of: {', '.join(LOSS_NAMES)}"
        )


def make_classification_loss(
    name: str, num_classes: int, label_smoothing: float = 0.0, sweep_label_smoothing: bool = False
) -> ClassificationLoss:
    """The per-example training loss `(logits, int_labels) -> (batch,)` for integer class labels.

    `mse` and `l1` compare softmax probabilities with one-hot targets (Keras' softmax output
    layer); `binary_cross_entropy` treats each class as an independent sigmoid.
    `sweep_label_smoothing`: the loss takes the smoothing as a third argument, an array (one value
    per member of a sweep, `jaxcnn.members`); cross-entropy only.
    """
    _check_loss_name(name)
    if sweep_label_smoothing:
        return lambda logits, labels, smoothing: optax.softmax_cross_entropy(
            logits, optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing))
    if not 0.0 <= label_smoothing < 1.0:
        raise JaxcnnError(
            f"loss.label_smoothing must be in [0, 1), got {label_smoothing}; "
            "use 0 to turn smoothing off"
        )
    if label_smoothing > 0 and name != "cross_entropy":
        raise JaxcnnError(
            f"loss.label_smoothing is only supported with loss.name 'cross_entropy', "
            f"got {label_smoothing} with {name!r}; set loss.label_smoothing to 0"
        )

    def one_hot(labels: jax.Array) -> jax.Array:
        return jax.nn.one_hot(labels, num_classes)

    if name == "cross_entropy":
        return lambda logits, labels: softmax_cross_entropy(logits, labels, label_smoothing)
    if name == "binary_cross_entropy":
        return lambda logits, labels: sigmoid_binary_cross_entropy(logits, one_hot(labels))
    distance = mean_squared_error if name == "mse" else l1_loss
    return lambda logits, labels: distance(jax.nn.softmax(logits), one_hot(labels))


def predict_probabilities(loss_name: str, logits: jax.Array) -> jax.Array:
    """Class probabilities: sigmoid for `binary_cross_entropy`, softmax for the other losses."""
    _check_loss_name(loss_name)
    if loss_name == "binary_cross_entropy":
        return jax.nn.sigmoid(logits)
    return jax.nn.softmax(logits)

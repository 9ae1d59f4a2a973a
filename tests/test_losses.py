import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.errors import JaxcnnError
from jaxcnn.core.losses import (
    l1_loss,
    l2_penalty,
    make_classification_loss,
    mean_squared_error,
    predict_probabilities,
    sigmoid_binary_cross_entropy,
    softmax_cross_entropy,
)

LN3 = math.log(3.0)
# softmax([0, ln 3]) = [1/4, 3/4]; sigmoid(0) = 1/2, sigmoid(ln 3) = 3/4.
LOGITS = jnp.array([[0.0, LN3]])


def test_cross_entropy_matches_hand_values_per_example():
    logits = jnp.array([[0.0, LN3], [0.0, LN3]])
    loss = softmax_cross_entropy(logits, jnp.array([1, 0]))
    # -ln(3/4) = ln(4/3) for label 1; -ln(1/4) = ln 4 for label 0.
    np.testing.assert_allclose(loss, [math.log(4 / 3), math.log(4)], rtol=1e-6)


def test_label_smoothing_mixes_uniform_target_by_hand():
    loss = softmax_cross_entropy(LOGITS, jnp.array([1]), label_smoothing=0.2)
    # Target = 0.8 * [0, 1] + 0.2 / 2 = [0.1, 0.9]; CE = 0.1 ln 4 + 0.9 ln(4/3).
    np.testing.assert_allclose(loss, [0.1 * math.log(4) + 0.9 * math.log(4 / 3)], rtol=1e-6)


def test_binary_cross_entropy_accepts_flat_and_column_logits():
    targets = jnp.array([1.0, 0.0])
    # logit 0, target 1: -ln(1/2) = ln 2; logit ln 3, target 0: -ln(1 - 3/4) = ln 4.
    expected = [math.log(2), math.log(4)]
    flat = sigmoid_binary_cross_entropy(jnp.array([0.0, LN3]), targets)
    column = sigmoid_binary_cross_entropy(jnp.array([[0.0], [LN3]]), targets)
    assert flat.shape == column.shape == (2,)
    np.testing.assert_allclose(flat, expected, rtol=1e-6)
    np.testing.assert_allclose(column, expected, rtol=1e-6)


def test_multilabel_binary_cross_entropy_means_over_labels():
    loss = sigmoid_binary_cross_entropy(LOGITS, jnp.array([[1.0, 1.0]]))
    # Label 0: ln 2; label 1: -ln(3/4) = ln(4/3); mean of the two.
    np.testing.assert_allclose(loss, [(math.log(2) + math.log(4 / 3)) / 2], rtol=1e-6)


def test_large_logits_give_finite_exact_losses():
    ce = softmax_cross_entropy(jnp.array([[1000.0, -1000.0]]), jnp.array([1]))
    bce = sigmoid_binary_cross_entropy(jnp.array([1000.0, -1000.0]), jnp.array([0.0, 0.0]))
    # CE = logsumexp - logit_1 = 1000 - (-1000); BCE = softplus(1000) = 1000, softplus(-1000) = 0.
    np.testing.assert_allclose(ce, [2000.0])
    np.testing.assert_allclose(bce, [1000.0, 0.0], atol=1e-6)
    assert np.all(
        np.isfinite(
            jax.grad(lambda x: softmax_cross_entropy(x, jnp.array([1])).sum())(
                jnp.array([[1000.0, -1000.0]])
            )
        )
    )


def test_mse_and_l1_mean_over_last_axis_by_hand():
    predictions = jnp.array([[1.0, 2.0], [0.0, 0.0]])
    targets = jnp.array([[0.0, 0.0], [0.0, 3.0]])
    # MSE: (1 + 4) / 2, (0 + 9) / 2; L1: (1 + 2) / 2, (0 + 3) / 2.
    np.testing.assert_allclose(mean_squared_error(predictions, targets), [2.5, 4.5])
    np.testing.assert_allclose(l1_loss(predictions, targets), [1.5, 1.5])


def test_l2_penalty_counts_kernels_only():
    params = {
        "Conv_0": {"kernel": jnp.full((1, 1, 1, 2), 2.0), "bias": jnp.array([3.0, 3.0])},
        "BatchNorm_0": {"scale": jnp.array([4.0]), "bias": jnp.array([5.0])},
        "Dense_0": {"kernel": jnp.array([[1.0], [-1.0]]), "bias": jnp.array([7.0])},
    }
    # 2² + 2² + 1² + (-1)² = 10; biases and the BatchNorm scale are left out.
    np.testing.assert_allclose(l2_penalty(params), 10.0)


def test_l2_penalty_on_flax_params_sums_dense_kernels():
    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.BatchNorm(use_running_average=True)(nn.Dense(3)(x))
            return nn.Dense(2)(x)

    params = Model().init(jax.random.key(0), jnp.ones((1, 4)))["params"]
    expected = sum(float(jnp.sum(params[f"Dense_{i}"]["kernel"] ** 2)) for i in (0, 1))
    np.testing.assert_allclose(l2_penalty(params), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("cross_entropy", math.log(4 / 3)),
        # One-hot [0, 1] as two sigmoid targets: ln 2 (logit 0, target 0) and ln(4/3); mean.
        ("binary_cross_entropy", (math.log(2) + math.log(4 / 3)) / 2),
        # Softmax [1/4, 3/4] against [0, 1]: ((1/4)² + (1/4)²) / 2 = 1/16 and (1/4 + 1/4) / 2.
        ("mse", 1 / 16),
        ("l1", 1 / 4),
    ],
)
def test_classification_loss_by_name_matches_hand_value(name, expected):
    loss_fn = make_classification_loss(name, num_classes=2)
    loss = loss_fn(LOGITS, jnp.array([1]))
    assert loss.shape == (1,)
    np.testing.assert_allclose(loss, [expected], rtol=1e-6)


def test_classification_cross_entropy_applies_label_smoothing():
    loss_fn = make_classification_loss("cross_entropy", num_classes=2, label_smoothing=0.2)
    expected = 0.1 * math.log(4) + 0.9 * math.log(4 / 3)
    np.testing.assert_allclose(loss_fn(LOGITS, jnp.array([1])), [expected], rtol=1e-6)


def test_unknown_loss_name_names_key_and_choices():
    with pytest.raises(JaxcnnError) as err:
        make_classification_loss("crossentropy", num_classes=2)
    assert str(err.value) == (
        "unknown loss 'crossentropy' (loss.name); "
        "expected one of: binary_cross_entropy, cross_entropy, l1, mse; did you mean 'cross_entropy'?"
    )


@pytest.mark.parametrize(
    "name, smoothing", [("cross_entropy", 1.0), ("cross_entropy", -0.1), ("mse", 0.1)]
)
def test_bad_label_smoothing_names_its_key(name, smoothing):
    with pytest.raises(JaxcnnError, match=r"loss\.label_smoothing"):
        make_classification_loss(name, num_classes=2, label_smoothing=smoothing)


def test_predict_probabilities_uses_sigmoid_only_for_binary_cross_entropy():
    np.testing.assert_allclose(predict_probabilities("cross_entropy", LOGITS), [[0.25, 0.75]])
    np.testing.assert_allclose(predict_probabilities("mse", LOGITS), [[0.25, 0.75]])
    np.testing.assert_allclose(
        predict_probabilities("binary_cross_entropy", LOGITS), [[0.5, 0.75]], rtol=1e-6
    )
    with pytest.raises(JaxcnnError, match=r"loss\.name"):
        predict_probabilities("hinge", LOGITS)

"""Classification metrics against scikit-learn and hand-computed values."""

import numpy as np
import pytest
from sklearn import metrics as skm

from jaxcnn.core.metrics import (calibration_bins, classification_metrics, confusion_matrix,
                            expected_calibration_error, most_confident_mistakes, precision_recall_f1)

NUM_CLASSES = 7


@pytest.fixture
def fixed_predictions():
    """Random labels and predictions where class 5 is never predicted and class 6 never occurs."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 500)
    predicted = np.where(rng.random(500) < 0.7, labels, rng.integers(0, 7, 500))
    predicted[predicted == 5] = 4
    return labels, predicted


def test_confusion_matrix_matches_scikit_learn(fixed_predictions):
    labels, predicted = fixed_predictions
    expected = skm.confusion_matrix(labels, predicted, labels=range(NUM_CLASSES))
    np.testing.assert_array_equal(confusion_matrix(labels, predicted, NUM_CLASSES), expected)


def test_per_class_precision_recall_f1_match_scikit_learn(fixed_predictions):
    labels, predicted = fixed_predictions
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predicted, labels=range(NUM_CLASSES), zero_division=0)
    scores = precision_recall_f1(confusion_matrix(labels, predicted, NUM_CLASSES))
    np.testing.assert_allclose(scores["precision"], precision, rtol=1e-12)
    np.testing.assert_allclose(scores["recall"], recall, rtol=1e-12)
    np.testing.assert_allclose(scores["f1"], f1, rtol=1e-12)
    np.testing.assert_array_equal(scores["support"], support)
    assert scores["precision"][5] == 0 and scores["recall"][6] == 0  # the zero-division classes


def test_classification_metrics_macro_scores_and_accuracy_match_scikit_learn(fixed_predictions):
    labels, predicted = fixed_predictions
    result = classification_metrics(labels, predicted, np.full(500, 0.5), np.ones(500, bool),
                                    [f"c{k}" for k in range(NUM_CLASSES)])
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))
    assert result["macro_f1"] == pytest.approx(
        skm.f1_score(labels, predicted, labels=range(NUM_CLASSES), average="macro", zero_division=0))
    assert [c["class"] for c in result["per_class"]] == [f"c{k}" for k in range(NUM_CLASSES)]
    assert np.asarray(result["confusion_matrix"]).sum() == 500


def test_expected_calibration_error_matches_a_hand_computed_value():
    # Bin (13/15, 14/15]: 0.88, 0.92, 0.9, 0.9 -> mean confidence 0.9, accuracy 3/4.
    # Bin (7/15, 8/15]: 0.5, 0.5 -> confidence 0.5, accuracy 1/2.  Bin (2/15, 3/15]: 0.2, wrong.
    confidence = np.array([0.88, 0.92, 0.9, 0.9, 0.5, 0.5, 0.2])
    correct = np.array([1, 1, 1, 0, 1, 0, 0], bool)
    expected = 4 / 7 * abs(0.75 - 0.9) + 2 / 7 * 0.0 + 1 / 7 * abs(0.0 - 0.2)
    assert expected_calibration_error(confidence, correct) == pytest.approx(expected, abs=1e-12)
    bins = calibration_bins(confidence, correct)
    assert bins["count"].tolist() == [0, 0, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 4, 0]


def test_perfectly_calibrated_predictions_have_zero_ece():
    confidence = np.array([0.5, 0.5, 1.0, 1.0])
    assert expected_calibration_error(confidence, np.array([1, 0, 1, 1], bool)) == 0.0


def test_top5_accuracy_is_reported_only_with_more_than_five_classes():
    labels, predicted = np.array([0, 1, 2]), np.array([0, 2, 2])
    in_top = np.array([True, True, False])
    many = classification_metrics(labels, predicted, np.ones(3), in_top, [str(k) for k in range(10)])
    few = classification_metrics(labels, predicted, np.ones(3), in_top, ["a", "b", "c"])
    assert many["top5_accuracy"] == pytest.approx(2 / 3)
    assert "top5_accuracy" not in few


def test_most_confident_mistakes_are_wrong_and_sorted_by_confidence():
    labels = np.array([0, 1, 2, 3, 4])
    predicted = np.array([1, 1, 0, 0, 0])
    confidence = np.array([0.6, 0.99, 0.9, 0.7, 0.9])
    np.testing.assert_array_equal(most_confident_mistakes(labels, predicted, confidence, 3), [2, 4, 3])

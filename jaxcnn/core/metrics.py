"""Classification metrics of a finished evaluation: accuracy, top-5, per-class precision/recall/F1,
the confusion matrix and the expected calibration error.

Pure NumPy functions of per-example arrays (true label, predicted label, confidence), which the
loop gathers on the device during the final test pass and fetches once (`loop.predict`). The
conventions follow scikit-learn's: confusion rows are true classes and columns predicted classes,
and a precision/recall/F1 whose denominator is zero is 0.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

ECE_BINS = 15
TOP_K = 5


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; entry [t, p] counts examples of class t predicted as p."""
    labels, predicted = np.asarray(labels, np.int64), np.asarray(predicted, np.int64)
    return np.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's `zero_division=0`)."""
    numerator, denominator = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def precision_recall_f1(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support (true examples per class) from a confusion matrix."""
    true_positive = np.diag(confusion).astype(np.float64)
    predicted_count = confusion.sum(axis=0)
    support = confusion.sum(axis=1)
    precision = _safe_divide(true_positive, predicted_count)
    recall = _safe_divide(true_positive, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def calibration_bins(confidence: np.ndarray, correct: np.ndarray,
                     num_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin: example count, mean confidence and accuracy (0 for empty bins).

    Bin b holds confidences in (edge[b], edge[b+1]] with edges `linspace(0, 1, num_bins + 1)`;
    a confidence of exactly 0 goes to bin 0.
    """
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    inner_edges = np.linspace(0.0, 1.0, num_bins + 1)[1:-1]
    index = np.digitize(confidence, inner_edges, right=True)
    count = np.bincount(index, minlength=num_bins)
    return {"count": count,
            "confidence": _safe_divide(np.bincount(index, confidence, num_bins), count),
            "accuracy": _safe_divide(np.bincount(index, correct, num_bins), count)}


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, num_bins: int = ECE_BINS) -> float:
    """ECE = sum over bins of (bin size / N) * |accuracy in bin - mean confidence in bin|."""
    bins = calibration_bins(confidence, correct, num_bins)
    total = bins["count"].sum()
    if total == 0:
        return 0.0
    return float(np.sum(bins["count"] / total * np.abs(bins["accuracy"] - bins["confidence"])))


def classification_metrics(labels: np.ndarray, predicted: np.ndarray, confidence: np.ndarray,
                           in_top_k: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Everything `summary.json` reports about a test evaluation, as JSON-able Python values.

    `in_top_k` marks the examples whose true class is among the `TOP_K` highest scores;
    `top5_accuracy` is reported only when there are more than `TOP_K` classes (else it is always 1).
    """
    num_classes = len(class_names)
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    correct = labels == predicted
    confusion = confusion_matrix(labels, predicted, num_classes)
    scores = precision_recall_f1(confusion)
    result: dict[str, Any] = {
        "accuracy": float(correct.mean()) if correct.size else 0.0,
        "expected_calibration_error": expected_calibration_error(confidence, correct),
        "ece_bins": ECE_BINS,
        "macro_precision": float(scores["precision"].mean()),
        "macro_recall": float(scores["recall"].mean()),
        "macro_f1": float(scores["f1"].mean()),
        "per_class": [{"class": str(name), "precision": float(scores["precision"][k]),
                       "recall": float(scores["recall"][k]), "f1": float(scores["f1"][k]),
                       "support": int(scores["support"][k])} for k, name in enumerate(class_names)],
        "confusion_matrix": confusion.tolist(),
    }
    if num_classes > TOP_K:
        result["top5_accuracy"] = float(np.mean(in_top_k)) if correct.size else 0.0
    return result


def most_confident_mistakes(labels: np.ndarray, predicted: np.ndarray, confidence: np.ndarray,
                            count: int) -> np.ndarray:
    """Indices of up to `count` wrongly predicted examples, highest confidence first (ties by index)."""
    wrong = np.flatnonzero(np.asarray(labels) != np.asarray(predicted))
    order = np.lexsort((wrong, -np.asarray(confidence, np.float64)[wrong]))
    return wrong[order[:count]]

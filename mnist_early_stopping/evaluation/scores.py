"""Scores from true and predicted classes: the confusion matrix and per-class precision, recall and F1.

numpy, not scikit-learn: importing sklearn.metrics costs the evaluate and
plots stages 1.4 s each, more than all their scoring.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mnist_early_stopping.pipeline.layout import NUM_CLASSES


def confusion(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Confusion matrix: rows are the true class, columns the predicted class."""
    pairs = labels.astype(np.int64) * NUM_CLASSES + predicted.astype(np.int64)
    return np.bincount(pairs, minlength=NUM_CLASSES * NUM_CLASSES).reshape(NUM_CLASSES, NUM_CLASSES)


def class_metrics(labels: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """Macro F1 and per-class precision, recall and F1, keyed by the class as a string.

    The numbers of scikit-learn's precision_recall_fscore_support with
    zero_division=0 (a test compares them), from the confusion matrix.
    """
    matrix = confusion(labels, predicted).astype(np.float64)
    hits, predicted_count, true_count = np.diag(matrix), matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(hits, predicted_count, out=np.zeros_like(hits), where=predicted_count > 0)
    recall = np.divide(hits, true_count, out=np.zeros_like(hits), where=true_count > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)
    return {
        "macro_f1": round(float(f1.mean()), 6),
        "per_class": {
            str(c): {"precision": round(float(p), 6), "recall": round(float(r), 6), "f1": round(float(f), 6)}
            for c, p, r, f in zip(range(NUM_CLASSES), precision, recall, f1)
        },
    }

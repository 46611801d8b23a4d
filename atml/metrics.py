"""Classification metrics computed on validation (or held-out test) predictions."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["binary_metrics", "METRIC_NAMES"]

METRIC_NAMES = ("f1", "accuracy", "precision", "recall", "auroc")


def binary_metrics(y_true: np.ndarray, p_pos: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """F1, accuracy, precision, recall (positive class 1) and AUROC from P(class 1).

    AUROC is NaN when only one class is present. Also returns the confusion matrix as
    ``tn, fp, fn, tp`` counts.
    """
    from sklearn.metrics import confusion_matrix, roc_auc_score

    y_true = np.asarray(y_true).astype(np.int64)
    p_pos = np.asarray(p_pos, dtype=np.float64)
    y_pred = (p_pos >= threshold).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = tn + fp + fn + tp
    auroc = float(roc_auc_score(y_true, p_pos)) if 0 < y_true.sum() < len(y_true) else math.nan
    return {
        "f1": f1,
        "accuracy": (tp + tn) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "auroc": auroc,
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "tp": tp,
    }

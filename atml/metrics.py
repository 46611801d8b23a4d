"""Classification metrics computed on validation (or held-out test) predictions."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

__all__ = [
    "METRIC_NAMES",
    "binary_metrics",
    "multiclass_metrics",
    "multilabel_metrics",
    "per_subject_metrics",
    "subject_sort_key",
    "task_metrics",
]

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


def multiclass_metrics(y_true: np.ndarray, proba: np.ndarray, classes: tuple[str, ...] = ()) -> dict[str, float]:
    """Macro F1/precision/recall, accuracy, macro one-vs-rest AUROC, per-class F1.

    ``physionet2017`` is the PhysioNet/CinC 2017 score (mean F1 of N, A and O) when the
    classes carry those names.
    """
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    y_true = np.asarray(y_true).astype(np.int64)
    labels = list(range(proba.shape[1]))
    pred = proba.argmax(axis=1)
    per = f1_score(y_true, pred, labels=labels, average=None, zero_division=0)
    out = {
        "f1": float(per.mean()),
        "accuracy": float((pred == y_true).mean()) if len(y_true) else 0.0,
        "precision": float(precision_score(y_true, pred, labels=labels, average="macro", zero_division=0)),
        "recall": float(recall_score(y_true, pred, labels=labels, average="macro", zero_division=0)),
    }
    present = [c for c in labels if 0 < (y_true == c).sum() < len(y_true)]
    aucs = [roc_auc_score(y_true == c, proba[:, c]) for c in present]
    out["auroc"] = float(np.mean(aucs)) if aucs else math.nan
    names = list(classes) or [str(c) for c in labels]
    for name, f in zip(names, per, strict=False):
        out[f"f1_{name}"] = float(f)
    if {"N", "A", "O"} <= set(names):
        out["physionet2017"] = float(np.mean([out["f1_N"], out["f1_A"], out["f1_O"]]))
    return out


def multilabel_metrics(y_true: np.ndarray, proba: np.ndarray, classes: tuple[str, ...] = (),
                       threshold: float = 0.5) -> dict[str, float]:
    """Macro AUROC (classes with both values present), macro F1/precision/recall, per-class F1,
    and accuracy as the fraction of exactly right label sets."""
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    y_true = np.asarray(y_true) > 0.5
    pred = np.asarray(proba) >= threshold
    per = f1_score(y_true, pred, average=None, zero_division=0)
    aucs = [roc_auc_score(y_true[:, c], proba[:, c]) for c in range(y_true.shape[1])
            if 0 < y_true[:, c].sum() < len(y_true)]
    out = {
        "f1": float(np.mean(per)),
        "precision": float(precision_score(y_true, pred, average="macro", zero_division=0)),
        "recall": float(recall_score(y_true, pred, average="macro", zero_division=0)),
        "accuracy": float((pred == y_true).all(axis=1).mean()) if len(y_true) else 0.0,
        "auroc": float(np.mean(aucs)) if aucs else math.nan,
    }
    names = list(classes) or [str(c) for c in range(y_true.shape[1])]
    for name, f in zip(names, per, strict=False):
        out[f"f1_{name}"] = float(f)
    return out


def task_metrics(task: str, y_true: np.ndarray, proba: np.ndarray, classes: tuple[str, ...] = ()) -> dict[str, float]:
    """Metrics of a binary, multiclass or multilabel task from class probabilities."""
    if task == "multilabel":
        return multilabel_metrics(y_true, proba, classes)
    if task == "multiclass":
        return multiclass_metrics(y_true, proba, classes)
    return binary_metrics(y_true, proba[:, 1])


def subject_sort_key(subject: str) -> tuple[str, int, str]:
    """Natural order of subject names: "S2" before "S10" (prefix, number, rest)."""
    m = re.match(r"^(\D*)(\d+)(.*)$", subject)
    return (m.group(1), int(m.group(2)), m.group(3)) if m else (subject, -1, "")


def per_subject_metrics(subject: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray) -> list[dict[str, Any]]:
    """One row per subject (natural order) of binary predictions: segments, positives,
    predicted positives, accuracy and F1 of class 1.

    F1 is None for a subject without positive segments: it would mean nothing there.
    """
    rows = []
    for s in sorted(set(subject.tolist()), key=subject_sort_key):
        k = subject == s
        yt, yp = y_true[k], y_pred[k]
        tp = int(((yt == 1) & (yp == 1)).sum())
        fp = int(((yt == 0) & (yp == 1)).sum())
        fn = int(((yt == 1) & (yp == 0)).sum())
        f1 = 2 * tp / (2 * tp + fp + fn) if yt.sum() else None
        rows.append({"subject": s, "segments": int(k.sum()), "positives": int(yt.sum()),
                     "predicted_positive": int(yp.sum()), "accuracy": float((yt == yp).mean()), "f1": f1})
    return rows

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
    "SUBJECT_METRIC_NAMES", "LCB_METRIC_NAMES", "SUBJECT_MIN_POSITIVES", "subject_counts", "subject_table",
    "subject_summary", "bootstrap_bound", "subject_figures", "base_metric",
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


# -- per-subject figures and their spread ------------------------------------------------
# Spread over subjects (binary tasks): usable as objective, constraint and gate metric.
SUBJECT_METRIC_NAMES = ("subject_f1_min", "subject_f1_p10", "subject_f1_mean", "subject_accuracy_min")
LCB_METRIC_NAMES = ("f1_lcb", "accuracy_lcb")
# A subject's F1 is scored only when it has this many positive segments: with two or
# three, one segment swings it from 0 to 1.
SUBJECT_MIN_POSITIVES = 10
_COUNT_METRICS = {"f1", "accuracy", "precision", "recall"}


def _from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray, name: str) -> np.ndarray:
    """A count metric for arrays of confusion counts (0 where undefined, as binary_metrics)."""
    tp, fp, fn, tn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn, tn))
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "accuracy":
            out = (tp + tn) / (tp + fp + fn + tn)
        elif name == "precision":
            out = tp / (tp + fp)
        elif name == "recall":
            out = tp / (tp + fn)
        else:
            out = 2 * tp / (2 * tp + fp + fn)
    return np.nan_to_num(out, nan=0.0)


def subject_counts(subject: np.ndarray, y_true: np.ndarray, p_pos: np.ndarray,
                   threshold: float = 0.5) -> dict[str, dict[str, int]]:
    """Confusion counts (``tp, fp, fn, tn``) of each subject, binary task (class 1 positive)."""
    subject = np.asarray(subject).astype(str)
    y = np.asarray(y_true).astype(np.int64)
    pred = (np.asarray(p_pos, dtype=np.float64) >= threshold).astype(np.int64)
    out = {}
    for s in sorted(set(subject.tolist())):
        m = subject == s
        yt, yp = y[m], pred[m]
        out[s] = {"tp": int(((yt == 1) & (yp == 1)).sum()), "fp": int(((yt == 0) & (yp == 1)).sum()),
                  "fn": int(((yt == 1) & (yp == 0)).sum()), "tn": int(((yt == 0) & (yp == 0)).sum())}
    return out


def subject_table(counts: dict[str, dict[str, int]]) -> dict[str, dict[str, float]]:
    """Per subject: segments, positives, F1 (None below SUBJECT_MIN_POSITIVES positives), accuracy."""
    out = {}
    for s, c in counts.items():
        pos = c["tp"] + c["fn"]
        f1 = float(_from_counts(c["tp"], c["fp"], c["fn"], c["tn"], "f1")) if pos >= SUBJECT_MIN_POSITIVES else None
        out[s] = {"segments": sum(c.values()), "positives": pos, "f1": f1,
                  "accuracy": float(_from_counts(c["tp"], c["fp"], c["fn"], c["tn"], "accuracy")), **c}
    return out


def subject_summary(per_subject: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The spread over subjects: lowest, 10th percentile and mean F1; lowest accuracy.

    F1 over subjects with at least SUBJECT_MIN_POSITIVES positives (NaN when none has);
    accuracy over every subject (a sinus-rhythm subject called AF shows there).
    """
    f1 = np.array([v["f1"] for v in per_subject.values() if v.get("f1") is not None], dtype=np.float64)
    acc = np.array([v["accuracy"] for v in per_subject.values()], dtype=np.float64)
    nan = math.nan
    return {
        "subject_f1_min": float(f1.min()) if len(f1) else nan,
        "subject_f1_p10": float(np.percentile(f1, 10)) if len(f1) else nan,
        "subject_f1_mean": float(f1.mean()) if len(f1) else nan,
        "subject_accuracy_min": float(acc.min()) if len(acc) else nan,
    }


def bootstrap_bound(counts: dict[str, dict[str, int]], metric: str = "f1", confidence: float = 0.9,
                    n_boot: int = 1000, seed: int = 0) -> float:
    """One-sided lower confidence bound of the pooled ``metric``, by a bootstrap over subjects.

    Subjects are drawn with replacement and the metric is recomputed on their pooled
    segments; the ``1 - confidence`` quantile is returned. A configuration that fails one
    person completely gets a lower bound than a steady one with the same pooled figure.
    """
    if metric not in _COUNT_METRICS:
        raise ValueError(f"bootstrap bound: metric must be one of {sorted(_COUNT_METRICS)} (got {metric!r})")
    if not counts:
        return math.nan
    c = np.array([[v["tp"], v["fp"], v["fn"], v["tn"]] for v in counts.values()], dtype=np.int64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(c), size=(n_boot, len(c)))
    sums = c[draws].sum(axis=1)  # (n_boot, 4)
    values = _from_counts(sums[:, 0], sums[:, 1], sums[:, 2], sums[:, 3], metric)
    return float(np.quantile(values, 1.0 - confidence))


def subject_figures(subject: np.ndarray, y_true: np.ndarray, p_pos: np.ndarray, confidence: float = 0.9,
                    seed: int = 0) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(spread metrics incl. ``f1_lcb``/``accuracy_lcb``, per-subject table) of binary predictions."""
    counts = subject_counts(subject, y_true, p_pos)
    per = subject_table(counts)
    out = subject_summary(per)
    for name in LCB_METRIC_NAMES:
        out[name] = bootstrap_bound(counts, name.removesuffix("_lcb"), confidence, seed=seed)
    return out, per


# Each spread metric's per-epoch stand-in: what early stopping and per-epoch pruning steer by.
BASE_METRIC = {"subject_f1_min": "f1", "subject_f1_p10": "f1", "subject_f1_mean": "f1",
               "subject_accuracy_min": "accuracy", "f1_lcb": "f1", "accuracy_lcb": "accuracy"}


def base_metric(name: str) -> str:
    """The per-epoch metric that stands in for ``name`` while a model trains (itself if none)."""
    return BASE_METRIC.get(name, name)

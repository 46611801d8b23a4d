"""Metrics (atml.metrics) against scikit-learn, on the real labels and subjects of the shared
data (IESD rhythm labels, CinC 2021 Dx codes) with seeded, imperfect classifier outputs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from atml.metrics import (
    METRIC_NAMES,
    binary_metrics,
    multiclass_metrics,
    multilabel_metrics,
    per_subject_metrics,
    subject_sort_key,
    task_metrics,
)


@pytest.fixture(scope="module")
def iesd(train_npz: Path) -> tuple[np.ndarray, np.ndarray]:
    """Labels and subjects ("S<n>") of 3000 real train.npz segments (seeded pick, file order)."""
    with np.load(train_npz) as z:
        labels, subjects = z["label"].astype(str), z["subject"]
    pick = np.sort(np.random.default_rng(0).choice(len(labels), 3000, replace=False))
    return labels[pick], np.char.add("S", subjects[pick].astype(str))


def _scores(y: np.ndarray, seed: int, separation: float = 1.5) -> np.ndarray:
    """P(class 1) of a decent, imperfect classifier: a noisy logit around the true class."""
    rng = np.random.default_rng(seed)
    logit = separation * (2 * y - 1) + rng.normal(0, 1.5, len(y))
    return 1 / (1 + np.exp(-logit))


def _proba(y: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """Softmax rows with the true class favoured, seeded."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.0, (len(y), n_classes))
    logits[np.arange(len(y)), y] += 1.2
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------ binary


def test_binary_metrics_match_sklearn_on_real_afib_labels(iesd) -> None:
    labels, _ = iesd
    y = (labels == "AFIB").astype(np.int64)
    p = _scores(y, seed=1)
    m = binary_metrics(y, p)
    pred = (p >= 0.5).astype(int)
    assert set(METRIC_NAMES) <= set(m)
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["precision"] == pytest.approx(precision_score(y, pred))
    assert m["recall"] == pytest.approx(recall_score(y, pred))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert [m[k] for k in ("tn", "fp", "fn", "tp")] == confusion_matrix(y, pred).ravel().tolist()
    assert 0.7 < m["f1"] < 0.95  # imperfect on purpose: every cell of the matrix is filled


def test_binary_threshold_moves_the_counts_but_not_the_auroc(iesd) -> None:
    y = (iesd[0] == "AFIB").astype(np.int64)
    p = _scores(y, seed=2)
    low, high = binary_metrics(y, p, threshold=0.2), binary_metrics(y, p, threshold=0.8)
    assert low["recall"] > high["recall"] and low["precision"] < high["precision"]
    assert low["tp"] + low["fn"] == high["tp"] + high["fn"] == int(y.sum())
    assert low["auroc"] == high["auroc"]
    assert high["f1"] == pytest.approx(f1_score(y, p >= 0.8))


def test_binary_with_one_class_only(iesd) -> None:
    labels, _ = iesd
    y = np.zeros(int((labels == "N").sum()), dtype=np.int64)  # only the sinus segments
    p = _scores(y, seed=3)
    m = binary_metrics(y, p)
    assert math.isnan(m["auroc"])  # undefined without positives
    assert m["recall"] == 0.0 and m["f1"] == 0.0 and m["tp"] == m["fn"] == 0
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5))
    nothing_predicted = binary_metrics(y, np.zeros(len(y)))
    assert nothing_predicted["precision"] == 0.0 and nothing_predicted["accuracy"] == 1.0
    all_af = binary_metrics(np.ones(50, dtype=np.int64), np.full(50, 0.9))
    assert math.isnan(all_af["auroc"]) and all_af["f1"] == 1.0 and all_af["recall"] == 1.0


# ------------------------------------------------------------------ multiclass


def test_multiclass_metrics_match_sklearn_macro_averages(iesd) -> None:
    labels, _ = iesd
    lut = {"N": 0, "AFIB": 1}
    y = np.array([lut.get(v, 2) for v in labels])  # N, AFIB, other rhythms
    proba = _proba(y, 3, seed=4)
    m = multiclass_metrics(y, proba, ("N", "AFIB", "other"))
    pred = proba.argmax(axis=1)
    assert m["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["precision"] == pytest.approx(precision_score(y, pred, average="macro"))
    assert m["recall"] == pytest.approx(recall_score(y, pred, average="macro"))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["auroc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    per = f1_score(y, pred, average=None)
    assert [m["f1_N"], m["f1_AFIB"], m["f1_other"]] == pytest.approx(per.tolist())
    assert "physionet2017" not in m


def test_multiclass_physionet2017_score_and_an_absent_class(iesd) -> None:
    labels, _ = iesd
    lut = {"N": 0, "AFIB": 1, "UNK": 3}
    y = np.array([lut.get(v, 2) for v in labels])  # N, A, O and ~ (noise) as in CinC 2017
    proba = _proba(y, 4, seed=5)
    m = multiclass_metrics(y, proba, ("N", "A", "O", "~"))
    assert m["physionet2017"] == pytest.approx(np.mean([m["f1_N"], m["f1_A"], m["f1_O"]]))
    # A class the data lacks: its F1 is 0 and it is left out of the AUROC mean.
    y3 = np.where(y == 3, 0, y)
    m3 = multiclass_metrics(y3, proba, ("N", "A", "O", "~"))
    assert m3["f1_~"] == 0.0
    present = [roc_auc_score(y3 == c, proba[:, c]) for c in (0, 1, 2)]
    assert m3["auroc"] == pytest.approx(np.mean(present))
    assert m3["f1"] == pytest.approx(f1_score(y3, proba.argmax(axis=1), labels=[0, 1, 2, 3],
                                              average="macro", zero_division=0))


# ------------------------------------------------------------------ multi-label


@pytest.fixture(scope="module")
def dx_rows(shared_data: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """0/1 rows over the five most frequent Dx codes of the CinC 2021 sample headers."""
    records = []
    for header in sorted((shared_data / "cinc2021_sample").glob("*.hea")):
        dx = next(line for line in header.read_text().splitlines() if line.startswith("# Dx:"))
        records.append({c.strip() for c in dx.split(":", 1)[1].split(",")})
    classes = ("427084000", "284470004", "426783006", "164934002", "698252002")
    return np.array([[float(c in r) for c in classes] for r in records]), classes


def test_multilabel_macro_auc_and_scores_match_sklearn(dx_rows) -> None:
    y, classes = dx_rows
    rng = np.random.default_rng(6)
    proba = np.clip(0.6 * y + rng.uniform(0, 0.55, y.shape), 0, 1)
    m = multilabel_metrics(y, proba, classes)
    pred = proba >= 0.5
    assert m["auroc"] == pytest.approx(roc_auc_score(y, proba, average="macro"))
    assert m["f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert m["precision"] == pytest.approx(precision_score(y, pred, average="macro", zero_division=0))
    assert m["recall"] == pytest.approx(recall_score(y, pred, average="macro", zero_division=0))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))  # exact label sets
    for c, f in zip(classes, f1_score(y, pred, average=None, zero_division=0), strict=True):
        assert m[f"f1_{c}"] == pytest.approx(f)


def test_multilabel_auc_skips_a_class_with_one_value(dx_rows) -> None:
    y, classes = dx_rows
    y = np.concatenate([y, np.zeros((len(y), 1))], axis=1)  # a class no record carries
    rng = np.random.default_rng(7)
    proba = np.clip(0.5 * y + rng.uniform(0, 0.6, y.shape), 0, 1)
    m = multilabel_metrics(y, proba, (*classes, "absent"))
    assert m["auroc"] == pytest.approx(roc_auc_score(y[:, :5], proba[:, :5], average="macro"))
    assert m["f1_absent"] == 0.0
    none = multilabel_metrics(np.zeros((10, 2)), np.full((10, 2), 0.1))
    assert math.isnan(none["auroc"]) and none["accuracy"] == 1.0


def test_task_metrics_picks_the_task(iesd, dx_rows) -> None:
    y = (iesd[0] == "AFIB").astype(np.int64)
    p = _scores(y, seed=8)
    proba = np.stack([1 - p, p], axis=1)
    assert task_metrics("binary", y, proba) == binary_metrics(y, p)
    y3 = np.minimum(y + (iesd[0] == "SBR") * 2, 2)
    p3 = _proba(y3, 3, seed=9)
    assert task_metrics("multiclass", y3, p3, ("a", "b", "c")) == multiclass_metrics(y3, p3, ("a", "b", "c"))
    ym, classes = dx_rows
    pm = np.clip(0.5 * ym + 0.3, 0, 1)
    assert task_metrics("multilabel", ym, pm, classes) == multilabel_metrics(ym, pm, classes)


# ------------------------------------------------------------------ per subject


def test_per_subject_metrics_on_real_subjects(iesd) -> None:
    labels, subjects = iesd
    y = (labels == "AFIB").astype(np.int64)
    pred = (_scores(y, seed=10) >= 0.5).astype(np.int64)
    rows = per_subject_metrics(subjects, y, pred)
    names = [r["subject"] for r in rows]
    assert sorted(names) == sorted(set(subjects.tolist()))
    assert names == sorted(names, key=lambda s: int(s[1:]))  # S2 before S10
    assert sum(r["segments"] for r in rows) == len(y)
    for r in rows:
        k = subjects == r["subject"]
        assert r["positives"] == int(y[k].sum()) and r["predicted_positive"] == int(pred[k].sum())
        assert r["accuracy"] == pytest.approx(accuracy_score(y[k], pred[k]))
        if y[k].any():
            assert r["f1"] == pytest.approx(f1_score(y[k], pred[k]))
        else:  # a subject without AF: F1 of the AF class means nothing there
            assert r["f1"] is None
    assert any(r["f1"] is None for r in rows) and any(r["f1"] is not None for r in rows)


def test_subject_sort_key_is_natural_order() -> None:
    names = ["S10", "S2", "P101", "S1", "P21", "x"]
    assert sorted(names, key=subject_sort_key) == ["P21", "P101", "S1", "S2", "S10", "x"]

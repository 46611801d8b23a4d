"""Subject-wise train/val/test splits.

Segments of one subject are strongly correlated, so a random segment split overstates
every metric: no subject may appear in two splits.  Subjects are stratified by their
positive fraction (binary) or by the rarest class they carry (multiclass, multi-label
y of shape (N, C)) so each split sees every class when the data allows it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from atml.errors import DataError

log = logging.getLogger(__name__)

_SPLITS = ("train", "val", "test")
# Random candidate assignments tried before settling for the best-scoring one.
_ATTEMPTS = 64


@dataclass(frozen=True)
class Split:
    """Indices (int64, sorted) and subjects of each part; ``class_counts`` per part."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    train_subjects: tuple[str, ...]
    val_subjects: tuple[str, ...]
    test_subjects: tuple[str, ...]
    class_counts: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] = ((), (), ())
    multilabel: bool = False  # class_counts then count positive labels per class

    def summary(self) -> dict[str, dict[str, object]]:
        """Per part: segments, subjects, positives and per-class counts.

        positives: segments of a class id != 0; for multi-label, all positive labels of the
        classes (an item with two labels counts twice).
        """
        out: dict[str, dict[str, object]] = {}
        for k, name in enumerate(_SPLITS):
            counts = list(self.class_counts[k])
            out[name] = {
                "segments": int(len(getattr(self, name))),
                "subjects": len(getattr(self, f"{name}_subjects")),
                "positives": int(sum(counts) if self.multilabel else sum(counts[1:])),
                "class_counts": counts,
            }
        return out


def split_sizes(n_subjects: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) subject counts; val/test get >= 1 subject when their fraction > 0."""
    n_val = max(1, int(round(val_fraction * n_subjects))) if val_fraction > 0 else 0
    n_test = max(1, int(round(test_fraction * n_subjects))) if test_fraction > 0 else 0
    n_train = n_subjects - n_val - n_test
    if n_train < 1:
        need = 1 + (val_fraction > 0) + (test_fraction > 0)
        raise DataError(
            f"subject split: the data has {n_subjects} subject(s) but val_fraction="
            f"{val_fraction} and test_fraction={test_fraction} need at least {need} "
            "(one per part; no subject may be in two parts)"
        )
    return n_train, n_val, n_test


def _systematic(order_len: int, sizes: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Part id per position 0..order_len-1, each part's slots evenly spread with random phase.

    Positions are subjects sorted by positive fraction, so spreading slots evenly gives every
    part low-, mid- and high-AF subjects (stratification without needing many subjects).
    """
    slots: list[tuple[float, float, int]] = []
    for part, size in enumerate(sizes):
        if size == 0:
            continue
        phase = rng.random()
        step = order_len / size
        slots += [((i + phase) * step, rng.random(), part) for i in range(size)]
    slots.sort()
    return np.array([part for _, _, part in slots], dtype=np.int64)


def subject_split(
    subject: np.ndarray,
    y: np.ndarray,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
) -> Split:
    """Split segment indices by subject; deterministic for a given seed.

    Tries seeded stratified assignments until every non-empty part contains every class
    present in the data (if any does), else keeps the most balanced attempt and warns.
    """
    subject = np.asarray(subject)
    y = np.asarray(y)
    multilabel = y.ndim == 2
    if subject.ndim != 1 or y.ndim not in (1, 2) or len(subject) != len(y):
        raise DataError(
            f"subject_split: subject {subject.shape} and y {y.shape} must have the same length "
            "(subject 1-D; y (N,) class ids or (N, C) multi-label)"
        )
    if len(y) == 0:
        raise DataError("subject_split: no segments to split")
    uniq, inverse = np.unique(subject, return_inverse=True)
    if multilabel:
        per_subject = np.zeros((len(uniq), y.shape[1]), dtype=np.int64)
        np.add.at(per_subject, inverse, (y > 0.5).astype(np.int64))
    else:
        y = y.astype(np.int64)
        n_classes = int(y.max()) + 1
        per_subject = np.zeros((len(uniq), n_classes), dtype=np.int64)
        np.add.at(per_subject, (inverse, y), 1)
    if multilabel or per_subject.shape[1] > 2:
        order_key = _rarest_class_key(per_subject)
    else:
        order_key = per_subject[:, 1:].sum(axis=1) / per_subject.sum(axis=1)
    present = per_subject.sum(axis=0) > 0
    sizes = split_sizes(len(uniq), val_fraction, test_fraction)

    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray] | None = None
    for _ in range(_ATTEMPTS):
        order = np.lexsort((rng.random(len(uniq)), order_key))
        part_of = np.empty(len(uniq), dtype=np.int64)
        part_of[order] = _systematic(len(uniq), sizes, rng)
        score = _score(per_subject, part_of, sizes, present)
        if score == 0.0:
            best = (score, part_of)
            break
        if best is None or score < best[0]:
            best = (score, part_of)
    assert best is not None
    if best[0] > 0:
        log.warning(
            "subject split (seed %d): no assignment of %d subjects gives every part every "
            "class; using the closest one",
            seed,
            len(uniq),
        )
    part_of = best[1]
    part_of_segment = part_of[inverse]
    idx = [np.flatnonzero(part_of_segment == p).astype(np.int64) for p in range(3)]
    subj = [tuple(sorted(str(s) for s in uniq[part_of == p])) for p in range(3)]
    counts = tuple(tuple(int(c) for c in per_subject[part_of == p].sum(axis=0)) for p in range(3))
    return Split(
        train=idx[0],
        val=idx[1],
        test=idx[2],
        train_subjects=subj[0],
        val_subjects=subj[1],
        test_subjects=subj[2],
        class_counts=counts,  # type: ignore[arg-type]
        multilabel=multilabel,
    )


def _rarest_class_key(per_subject: np.ndarray) -> np.ndarray:
    """Sort key per subject: the overall frequency of the rarest class it carries.

    Sorting by it groups the subjects of each rare class, so the evenly spread slots of
    :func:`_systematic` hand every part some of them.  Subjects without any class sort last.
    """
    freq = per_subject.sum(axis=0).astype(np.float64)
    has = per_subject > 0
    masked = np.where(has, freq[None, :], np.inf)
    return masked.min(axis=1)


def _score(
    per_subject: np.ndarray, part_of: np.ndarray, sizes: tuple[int, int, int], present: np.ndarray
) -> float:
    """0 when every non-empty part holds every present class; else the number of misses."""
    misses = 0
    for part, size in enumerate(sizes):
        if size == 0:
            continue
        counts = per_subject[part_of == part].sum(axis=0)
        misses += int(((counts == 0) & present).sum())
    return float(misses)

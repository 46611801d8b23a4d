"""Subject-grouped, stratified cross-validation folds.

Every subject lands in exactly one fold of a repeat; folds are stratified by class so each
held-out fold sees the classes in about the proportion of the whole pool (scikit-learn's
``StratifiedGroupKFold``, seeded). Repeats deal the same subjects again with other seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atml.errors import DataError

__all__ = ["Fold", "subject_folds", "fold_seed"]


@dataclass(frozen=True)
class Fold:
    """One held-out fold: segment indices (into the pool given) and subjects on each side."""

    repeat: int
    index: int  # position among all folds of all repeats: repeat * folds + fold
    train: np.ndarray
    held: np.ndarray
    train_subjects: tuple[str, ...]
    held_subjects: tuple[str, ...]


def fold_seed(seed: int, repeat: int) -> int:
    """The seed of repeat ``repeat`` of a fold deal seeded ``seed`` (repeat 0: ``seed`` itself)."""
    if repeat == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(repeat)]).generate_state(1)[0])


def _strata(y: np.ndarray) -> np.ndarray:
    """One stratum per segment: its class (multi-label: its rarest positive label, else -1)."""
    if y.ndim == 1:
        return y.astype(np.int64)
    pos = y > 0.5
    freq = pos.sum(axis=0).astype(np.float64)
    masked = np.where(pos, freq[None, :], np.inf)
    return np.where(pos.any(axis=1), masked.argmin(axis=1), -1).astype(np.int64)


def subject_folds(subject: np.ndarray, y: np.ndarray, folds: int, seed: int = 0,
                  repeats: int = 1) -> list[Fold]:
    """``folds`` x ``repeats`` subject-grouped folds of the segments ``(subject, y)``.

    Raises DataError when there are fewer subjects than folds or ``folds`` < 2.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    subject = np.asarray(subject).astype(str)
    y = np.asarray(y)
    n_subjects = len(np.unique(subject))
    if folds < 2:
        raise DataError(f"validation.folds must be at least 2 (got {folds})")
    if repeats < 1:
        raise DataError(f"validation.repeats must be at least 1 (got {repeats})")
    if folds > n_subjects:
        raise DataError(f"validation.folds: {folds} folds need at least {folds} subjects "
                        f"outside the test split (there are {n_subjects})")
    strata = _strata(y)
    out: list[Fold] = []
    for r in range(repeats):
        cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=fold_seed(seed, r) % 2**32)
        parts = sorted(cv.split(np.zeros(len(y)), strata, subject), key=lambda p: sorted(set(subject[p[1]])))
        for k, (tr, held) in enumerate(parts):
            out.append(Fold(repeat=r, index=r * folds + k, train=np.sort(tr).astype(np.int64),
                            held=np.sort(held).astype(np.int64),
                            train_subjects=tuple(sorted(set(subject[tr]))),
                            held_subjects=tuple(sorted(set(subject[held])))))
    return out

"""Subject-grouped, stratified folds on the real IESD-2024 subjects."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from atml.data.folds import subject_folds
from atml.errors import DataError


@pytest.fixture(scope="module")
def iesd(train_npz):
    with np.load(train_npz) as z:
        return z["subject"].astype(str), (z["label"] == "AFIB").astype(np.int64)


def test_every_subject_in_exactly_one_fold_and_folds_stratified(iesd):
    subject, y = iesd
    folds = subject_folds(subject, y, 5, seed=0)
    assert [f.index for f in folds] == [0, 1, 2, 3, 4]
    for a, b in itertools.combinations(folds, 2):
        assert not set(a.held_subjects) & set(b.held_subjects)
    assert sorted(s for f in folds for s in f.held_subjects) == sorted(set(subject.tolist()))
    for f in folds:
        assert not set(f.held_subjects) & set(f.train_subjects)
        assert set(subject[f.held]) == set(f.held_subjects) and set(subject[f.train]) == set(f.train_subjects)
        assert len(f.held) + len(f.train) == len(y)
        # stratified: each held-out fold's AF share within 0.1 of the whole pool's (0.45)
        assert abs(y[f.held].mean() - y.mean()) < 0.1


def test_folds_are_seeded_and_repeats_differ(iesd):
    subject, y = iesd
    a = subject_folds(subject, y, 5, seed=3, repeats=2)
    b = subject_folds(subject, y, 5, seed=3, repeats=2)
    assert [f.held_subjects for f in a] == [f.held_subjects for f in b]
    assert [f.index for f in a] == list(range(10)) and [f.repeat for f in a] == [0] * 5 + [1] * 5
    assert {f.held_subjects for f in a[:5]} != {f.held_subjects for f in a[5:]}
    other = subject_folds(subject, y, 5, seed=4)
    assert {f.held_subjects for f in other} != {f.held_subjects for f in a[:5]}


def test_too_few_subjects_or_folds_is_a_clear_error(iesd):
    subject, y = iesd
    with pytest.raises(DataError, match=r"54 folds need at least 54 subjects .*\(there are 53\)"):
        subject_folds(subject, y, 54)
    with pytest.raises(DataError, match="at least 2"):
        subject_folds(subject, y, 1)

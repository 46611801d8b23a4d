"""Subject-wise splits: no leakage, determinism, both classes per part, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from atml.data import DataSpec, load_dataset, subject_split
from atml.errors import DataError


def _check_partition(split, subject: np.ndarray, n: int) -> None:
    parts = [split.train, split.val, split.test]
    allidx = np.concatenate(parts)
    assert len(allidx) == n and len(np.unique(allidx)) == n  # every segment exactly once
    sets = [set(subject[p].tolist()) for p in parts]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sets[0] == set(split.train_subjects)
    assert sets[1] == set(split.val_subjects)
    assert sets[2] == set(split.test_subjects)
    for p in parts:
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0)


def test_real_npz_split_has_no_subject_leak(npz_dataset) -> None:
    ds = npz_dataset
    split = subject_split(ds.subject, ds.y, val_fraction=0.2, test_fraction=0.1, seed=3)
    _check_partition(split, ds.subject, len(ds.y))
    assert (len(split.train_subjects), len(split.val_subjects), len(split.test_subjects)) == (37, 11, 5)
    summary = split.summary()
    for part in ("train", "val", "test"):
        assert summary[part]["positives"] > 0
        assert summary[part]["positives"] < summary[part]["segments"]
    assert sum(s["segments"] for s in summary.values()) == 50000
    assert sum(s["positives"] for s in summary.values()) == 22724


def test_split_is_deterministic_per_seed_and_seeds_differ(npz_dataset) -> None:
    ds = npz_dataset
    a = subject_split(ds.subject, ds.y, 0.2, 0.1, seed=7)
    b = subject_split(ds.subject, ds.y, 0.2, 0.1, seed=7)
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
    others = {subject_split(ds.subject, ds.y, 0.2, 0.1, seed=s).val_subjects for s in range(8, 12)}
    assert len(others | {a.val_subjects}) > 1


def test_three_subjects_still_split(txt_sample: Path, session_cache: Path) -> None:
    ds = load_dataset(DataSpec(path=str(txt_sample)), session_cache)
    split = ds.split(DataSpec(val_fraction=0.2))
    _check_partition(split, ds.subject, len(ds.y))
    assert len(split.val_subjects) == 1 and len(split.train_subjects) == 2 and len(split.test) == 0
    three = ds.split(DataSpec(val_fraction=0.2, test_fraction=0.2))
    assert [len(s) for s in (three.train_subjects, three.val_subjects, three.test_subjects)] == [1, 1, 1]
    # A separate test set makes test_fraction irrelevant.
    ignored = ds.split(DataSpec(val_fraction=0.2, test_fraction=0.2, test_path=str(txt_sample)))
    assert len(ignored.test) == 0


def test_too_few_subjects_is_a_clear_error() -> None:
    subject = np.array(["S1"] * 5 + ["S2"] * 5)
    y = np.array([0, 1] * 5)
    with pytest.raises(
        DataError, match=r"2 subject\(s\) but val_fraction=0\.2 and test_fraction=0\.2 need at least 3"
    ):
        subject_split(subject, y, 0.2, 0.2, seed=0)
    split = subject_split(subject, y, 0.2, 0.0, seed=0)
    assert len(split.train_subjects) == 1 and len(split.val_subjects) == 1


def test_stratification_gives_every_part_both_classes() -> None:
    # 12 subjects, only 4 of which have any positives: a naive random split often leaves
    # a part without positives.
    subject = np.repeat([f"S{i}" for i in range(12)], 20)
    y = np.zeros(240, dtype=np.int64)
    for i in (0, 3, 6, 9):
        y[i * 20 : i * 20 + 10] = 1
    for seed in range(20):
        split = subject_split(subject, y, 0.25, 0.25, seed=seed)
        for part in (split.train, split.val, split.test):
            assert set(y[part].tolist()) == {0, 1}

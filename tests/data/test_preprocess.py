"""Dataset-level preprocessing (atml.data.preprocess) on real ECG: per-segment z-score
normalisation of IESD segments and CPSC Holter windows, and the seeded, subject-stratified
subsample of the 50,000 train.npz segments.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import wfdb

from atml.data.preprocess import SUBSAMPLE_SEED, normalize, subsample
from atml.data.readers.iesd import read_iesd_segment
from atml.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword")


@pytest.fixture(scope="module")
def segments(txt_sample: Path) -> np.ndarray:
    """Every real IESD text segment as (344, 1, 1250) float32 in mV."""
    names = sorted(p.name for p in txt_sample.iterdir())
    return np.stack([read_iesd_segment(txt_sample / n, 1250) for n in names])[:, None, :]


@pytest.fixture(scope="module")
def npz_subjects(train_npz: Path) -> np.ndarray:
    with np.load(train_npz) as z:
        return np.char.add("S", z["subject"].astype(str))


def test_zscore_gives_every_real_segment_zero_mean_and_unit_std(segments: np.ndarray) -> None:
    x = segments.copy()
    assert np.abs(x.mean(axis=-1)).max() > 1e-3  # the raw segments are not centred
    out = normalize(x, "zscore")
    assert out is x and out.dtype == np.float32  # in place: no second copy of the data
    np.testing.assert_allclose(out.mean(axis=-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=-1), 1.0, atol=1e-4)
    # An affine function of its own segment: the shape of the waveform is untouched.
    ref = segments.astype(np.float64)
    expected = (ref - ref.mean(axis=-1, keepdims=True)) / ref.std(axis=-1, keepdims=True)
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_zscore_is_per_lead_and_leaves_a_flat_lead_at_zero(shared_data: Path) -> None:
    sig = wfdb.rdrecord(str(shared_data / "cpsc2021_sample" / "data_101_8")).p_signal.T.astype(np.float32)
    windows = np.stack([sig[:, s : s + 2000] for s in range(0, 20000, 2000)])  # (10, 2, 2000)
    flat = np.full((10, 1, 2000), 3.0, np.float32)  # a disconnected electrode: constant offset
    x = np.concatenate([windows, flat], axis=1)
    out = normalize(x, "zscore")
    np.testing.assert_allclose(out[:, :2].mean(axis=-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(out[:, :2].std(axis=-1), 1.0, atol=1e-4)
    assert np.isfinite(out).all() and not out[:, 2].any()  # centred, never divided by ~0


def test_normalize_none_keeps_the_physical_values_and_unknown_methods_fail(segments: np.ndarray) -> None:
    x = segments.copy()
    np.testing.assert_array_equal(normalize(x, "none"), segments)
    with pytest.raises(DataError, match=r"normalize = 'minmax': must be one of zscore, none"):
        normalize(x, "minmax")


def test_subsample_keeps_each_subjects_share_of_the_real_data(npz_subjects: np.ndarray) -> None:
    n = len(npz_subjects)
    idx = subsample(npz_subjects, 5000)
    assert idx.dtype == np.int64 and len(idx) == 5000
    assert (np.diff(idx) > 0).all() and idx[0] >= 0 and idx[-1] < n  # sorted, no repeats
    uniq, counts = np.unique(npz_subjects, return_counts=True)
    got = dict(zip(*np.unique(npz_subjects[idx], return_counts=True), strict=True))
    assert set(got) == set(uniq.tolist())  # all 53 subjects stay represented
    for s, c in zip(uniq.tolist(), counts.tolist(), strict=True):
        assert abs(got[s] - c * 5000 / n) < 1  # largest-remainder quota: floor or ceil


def test_subsample_is_seeded_and_reproducible(npz_subjects: np.ndarray) -> None:
    a = subsample(npz_subjects, 2000)
    np.testing.assert_array_equal(a, subsample(npz_subjects, 2000, seed=SUBSAMPLE_SEED))
    np.testing.assert_array_equal(subsample(npz_subjects, 2000, seed=7), subsample(npz_subjects, 2000, seed=7))
    assert not np.array_equal(a, subsample(npz_subjects, 2000, seed=7))
    everything = np.arange(len(npz_subjects))
    np.testing.assert_array_equal(subsample(npz_subjects, None), everything)
    np.testing.assert_array_equal(subsample(npz_subjects, len(npz_subjects) + 1), everything)

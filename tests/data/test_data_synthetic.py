"""Synthetic ECG: deterministic, fast, and physiologically plausible (AF is irregular)."""

from __future__ import annotations

import time

import numpy as np

from atml.data import generate_synthetic, synthetic_ecg


def test_same_seed_same_data_other_seed_other_data() -> None:
    a = synthetic_ecg(4, 10, seed=5)
    b = synthetic_ecg(4, 10, seed=5)
    c = synthetic_ecg(4, 10, seed=6)
    np.testing.assert_array_equal(a.signal, b.signal)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.signal, c.signal)


def test_shape_labels_and_speed() -> None:
    started = time.perf_counter()
    raw = synthetic_ecg(24, 40, seed=0)
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0, f"24x40 synthetic segments took {elapsed:.2f}s"
    assert raw.signal.shape == (960, 1250) and raw.signal.dtype == np.float32
    assert np.isfinite(raw.signal).all()
    assert set(raw.labels.tolist()) == {"AFIB", "N"}
    assert 0.3 < float(np.mean(raw.labels == "AFIB")) < 0.6
    per_subject = {
        s: float(np.mean(raw.labels[raw.subjects == s] == "AFIB")) for s in np.unique(raw.subjects)
    }
    assert len(per_subject) == 24
    assert all(0 < f < 1 for f in per_subject.values())  # every subject has both rhythms
    assert max(per_subject.values()) - min(per_subject.values()) > 0.2  # subjects differ
    assert raw.source == "synthetic(seed=0)"


def _detect_r_peaks(x: np.ndarray, fs: int) -> np.ndarray:
    """Minimal QRS detector: smoothed squared slope, adaptive threshold, 250 ms refractory."""
    slope = np.diff(x, prepend=x[0]) ** 2
    energy = np.convolve(slope, np.ones(int(0.08 * fs)) / (0.08 * fs), mode="same")
    threshold = 0.3 * np.percentile(energy, 99)
    above = energy > threshold
    peaks: list[int] = []
    i = 0
    while i < len(x):
        if above[i]:
            j = i
            while j < len(x) and above[j]:
                j += 1
            peaks.append(i + int(np.argmax(energy[i:j])))
            i = max(j, peaks[-1] + int(0.25 * fs))
        else:
            i += 1
    return np.array(peaks)


def _rr_cv(peaks: np.ndarray) -> float:
    rr = np.diff(peaks)
    return float(rr.std() / rr.mean()) if len(rr) >= 3 else np.nan


def test_af_rr_intervals_are_more_irregular_than_sinus() -> None:
    raw, truth = generate_synthetic(12, 20, seed=1)
    af = raw.labels == "AFIB"
    true_cv = np.array([_rr_cv(p) for p in truth.r_peaks])
    assert np.nanmedian(true_cv[af]) > 3 * np.nanmedian(true_cv[~af])
    # The irregularity must be visible in the signal, not only in the generator's bookkeeping.
    seen_cv = np.array([_rr_cv(_detect_r_peaks(s.astype(np.float64), raw.fs)) for s in raw.signal])
    assert np.nanmedian(seen_cv[af]) > 2 * np.nanmedian(seen_cv[~af])
    # ...but not trivially separable: some AF is fairly regular, some sinus is irregular.
    assert np.nanmin(true_cv[af]) < np.nanmax(true_cv[~af])
    # Plausible rates: 40-180 bpm.
    rates = np.array([60 * raw.fs / np.mean(np.diff(p)) for p in truth.r_peaks if len(p) > 1])
    assert rates.min() > 40 and rates.max() < 180

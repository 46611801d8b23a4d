"""Signal transforms (atml.data.transforms) on real ECG: CPSC 2021 Holter records (2 leads,
200 Hz) and IESD text segments (1 lead, 250 Hz).

Expected values come from scipy and wfdb directly (welch spectra, resample_poly,
rdrecord, rdann), never from atml itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import wfdb
from scipy.signal import resample_poly, welch

from atml.data.readers.iesd import read_iesd_segment
from atml.data.spec import DataSpec
from atml.data.transforms import (
    bandpass,
    cut,
    label_windows,
    resample,
    rhythm_intervals,
    scale_intervals,
    select_leads,
    transform_segments,
    window_plan,
)
from atml.errors import DataError

# wfdb 4.3 calls pandas with inplace=True, which pandas 3 deprecates: noise, not our code.
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword")

RECORD = "data_101_8"  # 24244 samples at 200 Hz, AF 3650-14224 and 19094-23906
FS = 200


@pytest.fixture(scope="module")
def record(shared_data: Path) -> Path:
    return shared_data / "cpsc2021_sample" / RECORD


@pytest.fixture(scope="module")
def holter(record: Path) -> np.ndarray:
    """The record's physical signal (2, n) float32, read by wfdb."""
    return wfdb.rdrecord(str(record)).p_signal.T.astype(np.float32)


@pytest.fixture(scope="module")
def segments(txt_sample: Path) -> np.ndarray:
    """Twelve real 5 s IESD segments as (12, 1, 1250) float32."""
    names = sorted(p.name for p in txt_sample.iterdir())[::29][:12]
    return np.stack([read_iesd_segment(txt_sample / n, 1250) for n in names])[:, None, :]


def _power(x: np.ndarray, fs: int, low: float, high: float) -> np.ndarray:
    """Welch power of ``x`` in [low, high) Hz, per row."""
    f, p = welch(x, fs=fs, nperseg=min(8192, x.shape[-1]), axis=-1)
    return p[..., (f >= low) & (f < high)].sum(axis=-1)


# ------------------------------------------------------------------ band-pass


def test_bandpass_removes_real_baseline_wander_and_keeps_the_qrs_band(holter: np.ndarray) -> None:
    t = np.arange(holter.shape[-1]) / FS
    wander = (0.8 * np.sin(2 * np.pi * 0.15 * t) + 0.4 * np.sin(2 * np.pi * 0.3 * t + 1)).astype(np.float32)
    for x in (holter, holter + wander):  # the record's own drift and offset, then a stronger one
        y = bandpass(x, FS, (0.5, 40.0))
        assert y.dtype == np.float32 and y.shape == x.shape
        assert (_power(y, FS, 0.0, 0.4) < 1e-2 * _power(x, FS, 0.0, 0.4)).all()  # drift gone
        np.testing.assert_allclose(_power(y, FS, 5.0, 30.0), _power(x, FS, 5.0, 30.0), rtol=0.05)
        assert np.abs(y.mean(axis=-1)).max() < 1e-2  # the ~5 mV electrode offset too
    # A linear filter: the added wander is removed, the rest is what the plain record gives.
    inner = slice(10 * FS, -10 * FS)  # away from the edge transients
    clean, wandering = bandpass(holter, FS, (0.5, 40.0)), bandpass(holter + wander, FS, (0.5, 40.0))
    assert np.abs(wandering[:, inner] - clean[:, inner]).max() < 0.02


def test_lowpass_removes_mains_hum_from_a_real_segment(segments: np.ndarray) -> None:
    t = np.arange(segments.shape[-1]) / 250
    hum = segments + (0.2 * np.sin(2 * np.pi * 50 * t)).astype(np.float32)
    y = bandpass(hum, 250, (None, 40.0))
    assert (_power(y, 250, 48, 52) < 0.02 * _power(hum, 250, 48, 52)).all()
    np.testing.assert_allclose(_power(y, 250, 1, 20), _power(segments, 250, 1, 20), rtol=0.05)


def test_bandpass_none_is_a_no_op_and_high_at_nyquist_is_an_error(segments: np.ndarray) -> None:
    assert bandpass(segments, 250, None) is segments
    with pytest.raises(DataError, match=r"bandpass high=125\.0 Hz must be below half the sampling rate"):
        bandpass(segments, 250, (0.5, 125.0))


# ------------------------------------------------------------------ resampling


def test_resample_250_to_125_hz_halves_the_samples_and_keeps_the_waveform(segments: np.ndarray) -> None:
    y, fs = resample(segments, 250, 125)
    assert fs == 125 and y.dtype == np.float32 and y.shape == (12, 1, 625)
    assert y.shape[-1] / fs == segments.shape[-1] / 250  # still 5 s
    np.testing.assert_allclose(y, resample_poly(segments.astype(np.float64), 1, 2, axis=-1), atol=1e-5)
    for a, b in zip(y[:, 0], segments[:, 0, ::2], strict=True):  # the anti-alias FIR alters nothing in-band
        assert np.corrcoef(a, b)[0, 1] > 0.999


def test_resample_200_to_250_hz_keeps_the_duration_of_a_holter_record(holter: np.ndarray) -> None:
    y, fs = resample(holter, FS, 250)
    assert fs == 250 and y.shape == (2, int(np.ceil(holter.shape[-1] * 250 / FS)))
    assert abs(y.shape[-1] / fs - holter.shape[-1] / FS) < 1 / fs


def test_resample_keeps_the_rate_when_none_or_equal_and_rejects_fractional_rates(segments: np.ndarray) -> None:
    for target in (None, 250):
        y, fs = resample(segments, 250.0, target)
        assert fs == 250 and isinstance(fs, int)
        np.testing.assert_array_equal(y, segments)
    with pytest.raises(DataError, match=r"non-integer rate 250\.5 Hz"):
        resample(segments, 250.5, 125)


# ------------------------------------------------------------------ leads and windows


def test_select_leads_by_name_in_the_requested_order(record: Path, holter: np.ndarray) -> None:
    names = wfdb.rdheader(str(record)).sig_name  # ['I', 'II']
    assert select_leads(holter, names, None, RECORD) is holter
    np.testing.assert_array_equal(select_leads(holter, names, ["ii", " I "], RECORD), holter[[1, 0]])
    with pytest.raises(DataError, match=rf"{RECORD}: no lead 'V1' \(record has \['I', 'II'\]\)"):
        select_leads(holter, names, ["II", "V1"], RECORD)


def test_windows_of_a_real_record_are_its_slices(holter: np.ndarray) -> None:
    n = holter.shape[-1]
    plan = window_plan(n, FS, 10.0, 5.0, pad_short=False)
    assert plan.length == 2000 and plan.pad == 0
    np.testing.assert_array_equal(plan.starts, np.arange(0, n - 2000 + 1, 1000))
    windows = cut(holter, plan)
    assert windows.shape == (len(plan.starts), 2, 2000)
    for k in (0, 7, len(plan.starts) - 1):
        s = plan.starts[k]
        np.testing.assert_array_equal(windows[k], holter[:, s : s + 2000])
    whole = window_plan(n, FS, None, None, pad_short=False)
    np.testing.assert_array_equal(cut(holter, whole)[0], holter)


def test_a_record_shorter_than_a_window_is_dropped_or_zero_padded(holter: np.ndarray) -> None:
    short = holter[:, : 3 * FS]
    assert len(window_plan(short.shape[-1], FS, 10.0, None, pad_short=False).starts) == 0
    plan = window_plan(short.shape[-1], FS, 10.0, None, pad_short=True)
    padded = cut(short, plan)
    assert padded.shape == (1, 2, 2000)
    np.testing.assert_array_equal(padded[0, :, : 3 * FS], short)
    assert not padded[0, :, 3 * FS :].any()


def test_transform_segments_resamples_then_cuts_each_segment_in_order(segments: np.ndarray) -> None:
    spec = DataSpec(target_fs=125, window=2.0, stride=1.0)
    x, per, fs = transform_segments(segments, 250, spec, "txt_sample")
    # 5 s at 125 Hz = 625 samples -> windows of 250 every 125: 4 per segment, consecutive
    assert (per, fs) == (4, 125) and x.shape == (12 * 4, 1, 250)
    for j in (0, 5, 11):
        down = resample_poly(segments[j, 0].astype(np.float64), 1, 2)
        for i in range(4):
            np.testing.assert_allclose(x[j * 4 + i, 0], down[125 * i : 125 * i + 250], atol=1e-5)
    same, one, rate = transform_segments(segments, 250, DataSpec(), "txt_sample")
    assert (one, rate) == (1, 250)
    np.testing.assert_array_equal(same, segments)
    with pytest.raises(DataError, match=r"txt_sample: segments of 5 s are shorter than data\.window=6\.0 s"):
        transform_segments(segments, 250, DataSpec(window=6.0), "txt_sample")


# ------------------------------------------------------------------ rhythm labels


def _rhythm_changes(record: Path) -> list[tuple[int, str]]:
    """(sample, rhythm) of the record's rhythm notes, straight from wfdb.rdann."""
    ann = wfdb.rdann(str(record), "atr")
    return [(int(s), n[1:]) for s, n in zip(ann.sample, ann.aux_note, strict=True) if n.startswith("(")]


def test_rhythm_intervals_cover_the_record_like_its_annotations(record: Path, holter: np.ndarray) -> None:
    n = holter.shape[-1]
    changes = _rhythm_changes(record)
    bounds, labels = rhythm_intervals(changes, n, "N")
    assert bounds[0] == 0 and bounds[-1] == n and (np.diff(bounds) > 0).all()
    assert all(a != b for a, b in zip(labels, labels[1:], strict=False))  # equal neighbours merged
    per_sample = np.repeat(np.array(labels, dtype=object), np.diff(bounds))
    expected = np.full(n, "N", dtype=object)  # before the first note: the default rhythm
    for (s, lab), (e, _) in zip(changes, [*changes[1:], (n, "")], strict=True):
        expected[s:e] = lab
    np.testing.assert_array_equal(per_sample, expected)
    assert "AFIB" in labels
    # Before the first note (sample 3650) the rhythm is unknown when there is no default.
    unknown_bounds, unknown_labels = rhythm_intervals(changes, n, None)
    assert unknown_labels[0] is None and unknown_bounds[1] == changes[0][0] == 3650
    # Moved to 100 Hz the bounds halve and still end at the record's new length.
    half, same = scale_intervals((bounds, labels), FS, 100, (n + 1) // 2)
    assert same == labels and half[-1] == (n + 1) // 2
    np.testing.assert_array_equal(half[1:-1], np.rint(bounds[1:-1] / 2).astype(np.int64))


def test_windows_over_an_af_onset_are_dropped_or_take_the_majority(record: Path, holter: np.ndarray) -> None:
    n = holter.shape[-1]
    iv = rhythm_intervals(_rhythm_changes(record), n, "N")
    onset = int(iv[0][list(iv[1]).index("AFIB")])  # 3650
    starts = np.array([0, onset - 1500, onset - 500, onset + 1000])  # N, mostly N, mostly AF, AF
    assert label_windows(starts, 2000, n, iv, "drop") == ["N", None, None, "AFIB"]
    assert label_windows(starts, 2000, n, iv, "majority") == ["N", "N", "AFIB", "AFIB"]

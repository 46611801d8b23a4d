"""Signal transforms shared by every format: lead selection, resampling, band-pass, windows.

Pure functions of (array, sampling rate, DataSpec fields), so a cached dataset is fully
determined by its spec and the source files, and each step can become a searched
parameter.  Order per record: leads -> resample -> band-pass -> windows; normalisation
happens per window afterwards (:func:`atml.data.preprocess.normalize`).  Filtering the
whole record before cutting avoids edge transients in every window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import gcd

import numpy as np

from atml.data.spec import DataSpec
from atml.errors import DataError

# Butterworth order of the band-pass; sosfiltfilt doubles it (zero phase).
BANDPASS_ORDER = 4


def select_leads(x: np.ndarray, names: Sequence[str], wanted: Sequence[str] | None, where: str) -> np.ndarray:
    """Rows of ``x`` (leads, samples) for the lead names in ``wanted`` (case-insensitive).

    ``wanted`` None keeps every lead in stored order.  A missing lead is a DataError naming
    ``where`` and the leads the record has.
    """
    if wanted is None:
        return x
    index = {str(n).strip().lower(): i for i, n in enumerate(names)}
    rows = []
    for lead in wanted:
        i = index.get(lead.strip().lower())
        if i is None:
            raise DataError(f"{where}: no lead {lead!r} (record has {list(names)})")
        rows.append(i)
    return x[rows]


def resample(x: np.ndarray, fs_in: float, fs_out: int | None) -> tuple[np.ndarray, int]:
    """Polyphase resampling along the last axis to ``fs_out`` Hz (None: keep ``fs_in``).

    Returns (float32 array, output rate).  resample_poly's built-in anti-alias FIR keeps
    downsampling clean; integer rates only, so the up/down ratio is exact.
    """
    if fs_out is None or float(fs_in) == float(fs_out):
        return np.asarray(x, dtype=np.float32), int(round(fs_in))
    from scipy.signal import resample_poly

    up, down = resample_ratio(fs_in, fs_out)
    out = resample_poly(np.asarray(x, dtype=np.float32), up, down, axis=-1)
    return np.asarray(out, dtype=np.float32), int(fs_out)


def resample_ratio(fs_in: float, fs_out: int) -> tuple[int, int]:
    """(up, down) of :func:`resample` from ``fs_in`` to ``fs_out`` Hz, in lowest terms.

    An exported graph that resamples inside (:mod:`atml.onnx.preprocess_graph`) uses the same
    factors; a non-integer source rate is a DataError.
    """
    if float(fs_in) != int(fs_in):
        raise DataError(f"cannot resample from a non-integer rate {fs_in} Hz")
    g = gcd(int(fs_in), int(fs_out))
    return int(fs_out) // g, int(fs_in) // g


def bandpass(x: np.ndarray, fs: int, band: tuple[float | None, float | None] | None) -> np.ndarray:
    """Zero-phase Butterworth filter along the last axis; ``band`` = (low, high) Hz.

    (low, None) is a high-pass, (None, high) a low-pass, None leaves ``x`` unchanged.
    """
    if band is None:
        return x
    from scipy.signal import sosfiltfilt

    return np.asarray(sosfiltfilt(bandpass_sos(fs, band), x, axis=-1), dtype=np.float32)


def bandpass_sos(fs: int, band: tuple[float | None, float | None]) -> np.ndarray:
    """Second-order sections (float64, (sections, 6)) of the Butterworth filter :func:`bandpass`
    applies forward and backward; an exported graph that filters inside uses the same ones.

    A cut-off at or above half the sampling rate is a DataError.
    """
    from scipy.signal import butter

    low, high = band
    nyq = fs / 2.0
    if high is not None and high >= nyq:
        raise DataError(
            f"DataSpec.bandpass high={high} Hz must be below half the sampling rate "
            f"({nyq:g} Hz at fs={fs}; set data.target_fs or lower the cut-off)"
        )
    if low is not None and high is not None:
        return butter(BANDPASS_ORDER, [low, high], btype="bandpass", fs=fs, output="sos")
    if low is not None:
        return butter(BANDPASS_ORDER, low, btype="highpass", fs=fs, output="sos")
    return butter(BANDPASS_ORDER, high, btype="lowpass", fs=fs, output="sos")


@dataclass(frozen=True)
class WindowPlan:
    """Window starts (samples) and length for one signal; ``pad`` zeros appended first."""

    starts: np.ndarray  # int64 (k,)
    length: int
    pad: int = 0


def window_plan(
    n: int, fs: int, window: float | None, stride: float | None, pad_short: bool
) -> WindowPlan:
    """Where to cut an ``n``-sample signal at ``fs`` Hz into windows of ``window`` seconds.

    ``window`` None: the whole signal is one item.  A signal shorter than one window gives
    no windows, or one zero-padded window with ``pad_short``.
    """
    if window is None:
        return WindowPlan(np.zeros(1, dtype=np.int64), n)
    length = max(1, int(round(window * fs)))
    step = max(1, int(round((stride if stride is not None else window) * fs)))
    if n < length:
        if pad_short and n > 0:
            return WindowPlan(np.zeros(1, dtype=np.int64), length, pad=length - n)
        return WindowPlan(np.zeros(0, dtype=np.int64), length)
    return WindowPlan(np.arange(0, n - length + 1, step, dtype=np.int64), length)


def cut(x: np.ndarray, plan: WindowPlan) -> np.ndarray:
    """Windows of ``x`` (..., samples) stacked on a new axis 0: (k, ..., length)."""
    if plan.pad:
        widths = [(0, 0)] * (x.ndim - 1) + [(0, plan.pad)]
        x = np.pad(x, widths)
    if len(plan.starts) == 1 and plan.starts[0] == 0 and x.shape[-1] == plan.length:
        return x[None]
    return np.stack([x[..., s : s + plan.length] for s in plan.starts])


def transform_segments(x: np.ndarray, fs: int, spec: DataSpec, where: str) -> tuple[np.ndarray, int, int]:
    """Apply resample, band-pass and windows to fixed-length segments (N, leads, samples).

    Returns (x', windows per segment, output rate); x' is (N * k, leads, length) with the
    k windows of one segment consecutive.  With default spec fields x is returned as is.
    """
    x, fs_out = resample(x, fs, spec.target_fs)
    x = bandpass(x, fs_out, spec.bandpass)
    plan = window_plan(x.shape[-1], fs_out, spec.window, spec.stride, spec.pad_short)
    k = len(plan.starts)
    if k == 0:
        raise DataError(
            f"{where}: segments of {x.shape[-1] / fs_out:g} s are shorter than data.window="
            f"{spec.window} s (set pad_short: true to zero-pad them)"
        )
    if spec.window is None:
        return x, 1, fs_out
    windows = cut(np.moveaxis(x, 0, -2), plan)  # (k, leads, N, length)
    out = np.ascontiguousarray(np.moveaxis(windows, 2, 0))  # (N, k, leads, length)
    return out.reshape(-1, *out.shape[2:]), k, fs_out


Intervals = tuple[np.ndarray, list[str | None]]


def rhythm_intervals(
    changes: Sequence[tuple[int, str]], n: int, default: str | None
) -> Intervals:
    """Contiguous rhythm intervals covering [0, n) from (sample, label) rhythm changes.

    Before the first change the rhythm is ``default`` (None: unknown, never labelled).
    Consecutive equal labels merge; empty intervals (e.g. CPSC's closing "(N" at the last
    sample) vanish.  Returns (bounds int64 (m + 1,), labels (m,)).
    """
    points: list[tuple[int, str | None]] = [(0, default)]
    for sample, label in sorted(changes, key=lambda c: c[0]):
        s = min(max(int(sample), 0), n)
        if points and points[-1][0] == s:
            points[-1] = (s, label)
        else:
            points.append((s, label))
    bounds: list[int] = []
    labels: list[str | None] = []
    for i, (s, label) in enumerate(points):
        end = points[i + 1][0] if i + 1 < len(points) else n
        if end <= s:
            continue
        if labels and labels[-1] == label:
            continue
        bounds.append(s)
        labels.append(label)
    bounds.append(n)
    return np.asarray(bounds, dtype=np.int64), labels


def scale_intervals(iv: Intervals, fs_in: float, fs_out: int, n_out: int) -> Intervals:
    """Interval bounds moved from ``fs_in`` to ``fs_out`` samples (last bound = n_out)."""
    bounds, labels = iv
    if float(fs_in) == float(fs_out):
        return bounds.copy(), labels
    scaled = np.rint(bounds * (fs_out / float(fs_in))).astype(np.int64)
    scaled[-1] = n_out
    return scaled, labels


def label_windows(
    starts: np.ndarray, length: int, n: int, iv: Intervals, mixed: str
) -> list[str | None]:
    """Rhythm label per window [s, s + length) (clipped to n); None means drop the window.

    A window inside one interval takes its label; a window over a rhythm change is dropped
    (``mixed="drop"``) or takes the label covering most of it (``"majority"``, ties to the
    earlier rhythm).  Unknown rhythm (label None) never labels a window.
    """
    bounds, labels = iv
    out: list[str | None] = []
    for s in starts.tolist():
        e = min(s + length, n)
        i = int(np.searchsorted(bounds, s, side="right")) - 1
        j = int(np.searchsorted(bounds, e - 1, side="right")) - 1
        if i == j:
            out.append(labels[i])
            continue
        if mixed == "drop":
            out.append(None)
            continue
        cover: dict[str | None, int] = {}
        for k in range(i, j + 1):
            cover[labels[k]] = cover.get(labels[k], 0) + min(e, bounds[k + 1]) - max(s, bounds[k])
        best = max(cover.items(), key=lambda kv: kv[1])[0]  # first max wins: earlier rhythm
        out.append(best)
    return out

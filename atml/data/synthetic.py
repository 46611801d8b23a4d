"""Deterministic synthetic single-lead ECG: sinus rhythm ("N") versus atrial fibrillation ("AFIB").

Used when no data path is given (demos, tests, CI without the shared data).  It has to be
hard enough that model search means something, so besides the textbook difference
(regular RR with P waves versus irregular RR with f-waves and no P waves) it contains the
cases that make real AF detection hard: AF with fairly regular ventricular response and
fine f-waves, sinus arrhythmia, premature beats with pauses, faint P waves, baseline
wander, mains hum, muscle noise and motion bursts.  Subjects differ in heart rate,
morphology, gain, noise level and AF burden, so subject-wise splits matter here as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atml.data.readers.registry import RawData

# Wave indices in the per-beat component arrays.
_P, _Q, _R, _S, _T = range(5)
_MIN_RR_S = 0.3  # ventricular refractoriness: no RR shorter than this
_PAD_S = 1.0  # render margin on both sides so beats cut by the window edge look complete
_BEAT_NORMAL, _BEAT_PVC, _BEAT_PAC = 0, 1, 2


@dataclass(frozen=True)
class SyntheticTruth:
    """Ground truth the generator used, for tests and plausibility checks.

    r_peaks[i]: R-peak positions (in samples, float) of segment i inside the window.
    rr_cv[i]: coefficient of variation of the RR intervals drawn for segment i.
    """

    r_peaks: tuple[np.ndarray, ...]
    rr_cv: np.ndarray
    hard: np.ndarray  # bool (N,): segment drawn from an ambiguous sub-population


def synthetic_ecg(
    n_subjects: int,
    per_subject: int,
    fs: int = 250,
    seconds: float = 5.0,
    seed: int = 0,
) -> RawData:
    """Generate ``n_subjects * per_subject`` labelled segments ("AFIB" / "N") as RawData."""
    return generate_synthetic(n_subjects, per_subject, fs, seconds, seed)[0]


def generate_synthetic(
    n_subjects: int,
    per_subject: int,
    fs: int = 250,
    seconds: float = 5.0,
    seed: int = 0,
) -> tuple[RawData, SyntheticTruth]:
    """Like :func:`synthetic_ecg`, also returning the ground truth (R peaks, RR variability)."""
    if n_subjects < 1 or per_subject < 1 or fs < 50 or seconds <= 0:
        raise ValueError(
            f"synthetic_ecg: need n_subjects>=1, per_subject>=1, fs>=50, seconds>0; got "
            f"{n_subjects}, {per_subject}, {fs}, {seconds}"
        )
    rng = np.random.default_rng(seed)
    n = n_subjects * per_subject
    subj = np.repeat(np.arange(n_subjects), per_subject)
    length = int(round(seconds * fs))
    pad = int(round(_PAD_S * fs))
    ext = length + 2 * pad

    # --- per-subject traits -------------------------------------------------------------
    hr = rng.uniform(55, 100, n_subjects)
    gain = rng.uniform(0.5, 1.8, n_subjects)
    af_burden = np.clip(rng.normal(0.45, 0.17, n_subjects), 0.12, 0.8)
    p_amp = rng.uniform(0.06, 0.25, n_subjects)
    q_amp = rng.uniform(0.0, 0.15, n_subjects)
    s_amp = rng.uniform(0.05, 0.45, n_subjects)
    t_amp = rng.uniform(0.1, 0.45, n_subjects) * np.where(rng.random(n_subjects) < 0.1, -1, 1)
    qrs_scale = rng.uniform(0.8, 1.3, n_subjects)
    pr = rng.uniform(0.12, 0.2, n_subjects)
    qt_k = rng.uniform(0.22, 0.28, n_subjects)  # T peak ~ qt_k * sqrt(RR), Bazett-like
    emg_sd = rng.uniform(0.004, 0.035, n_subjects)
    wander = rng.uniform(0.02, 0.3, n_subjects)
    mains_amp = rng.uniform(0.0, 0.03, n_subjects)
    mains_hz = np.where(rng.random(n_subjects) < 0.2, 60.0, 50.0)
    pvc_sign = np.where(rng.random(n_subjects) < 0.5, -1.0, 1.0)

    # --- labels: exact per-subject AF count so every subject has both rhythms -------------
    is_af = np.zeros(n, dtype=bool)
    for s in range(n_subjects):
        if per_subject == 1:
            k = int(rng.random() < af_burden[s])
        else:  # keep at least one segment of each rhythm per subject
            k = min(max(int(round(af_burden[s] * per_subject)), 1), per_subject - 1)
        is_af[s * per_subject + rng.permutation(per_subject)[:k]] = True

    # --- RR intervals (n, B) ----------------------------------------------------------
    span = seconds + 2 * _PAD_S
    n_beats = int(np.ceil(span / _MIN_RR_S)) + 2
    hard = rng.random(n) < 0.2
    # Sinus: subject rate with per-segment drift, respiratory sinus arrhythmia, jitter.
    sin_rr = 60.0 / (hr[subj] * np.exp(rng.normal(0, 0.08, n)))
    rsa = np.where(hard, rng.uniform(0.06, 0.12, n), rng.uniform(0.01, 0.045, n))
    rsa_hz = rng.uniform(0.15, 0.4, n)
    beat_t = np.arange(n_beats)[None, :] * sin_rr[:, None]
    sinus = sin_rr[:, None] * (
        1
        + rsa[:, None] * np.sin(2 * np.pi * rsa_hz[:, None] * beat_t + rng.uniform(0, 2 * np.pi, (n, 1)))
        + rng.normal(0, 1, (n, n_beats)) * rng.uniform(0.005, 0.02, (n, 1))
    )
    # AF: irregularly irregular gamma-distributed RR; the hard ones are only mildly irregular.
    af_rr = 60.0 / rng.uniform(70, 150, n)
    cv = np.where(hard, rng.uniform(0.04, 0.09, n), rng.uniform(0.12, 0.32, n))
    shape = 1.0 / cv**2
    af = rng.gamma(shape[:, None], (af_rr / shape)[:, None], (n, n_beats))
    rr = np.where(is_af[:, None], af, sinus)
    cv_drawn = np.where(is_af, cv, np.hypot(rsa / np.sqrt(2), 0.0125))

    # Premature beats in sinus segments (PVC: compensatory pause; PAC: reset).
    beat_type = np.zeros((n, n_beats), dtype=np.int8)
    ectopic = (~is_af) & (rng.random(n) < np.where(hard, 0.6, 0.1))
    rows = np.flatnonzero(ectopic)
    j = np.floor((_PAD_S + rng.uniform(0.3, seconds - 0.3, rows.size)) / sin_rr[rows]).astype(int) + 1
    j = np.clip(j, 1, n_beats - 2)
    pvc = rng.random(rows.size) < 0.5
    coupling = rng.uniform(0.55, 0.78, rows.size)
    base = rr[rows, j]
    rr[rows, j] = base * coupling
    rr[rows, j + 1] = np.where(pvc, base * (2 - coupling), base * rng.uniform(1.0, 1.2, rows.size))
    beat_type[rows, j] = np.where(pvc, _BEAT_PVC, _BEAT_PAC)
    rr = np.maximum(rr, _MIN_RR_S)

    times = -rng.uniform(0, 1, (n, 1)) * rr[:, :1] + np.cumsum(rr, axis=1)  # seconds from ext start

    # --- per-beat wave parameters (n, B, 5): offset (s), width (s), amplitude (mV) -------
    def per_subject(v: np.ndarray) -> np.ndarray:
        return v[subj][:, None]

    jit = rng.normal(0, 1, (n, n_beats, 5))
    amp = np.empty((n, n_beats, 5))
    amp[..., _P] = per_subject(p_amp) * np.where(hard & ~is_af, 0.35, 1.0)[:, None]
    amp[..., _Q] = -per_subject(q_amp)
    amp[..., _R] = 1.0
    amp[..., _S] = -per_subject(s_amp)
    amp[..., _T] = per_subject(t_amp)
    # AF: no P waves, more beat-to-beat amplitude variation (fusion with f-waves).
    amp *= 1 + jit * np.where(is_af, 0.07, 0.03)[:, None, None]
    amp[is_af, :, _P] = 0.0
    off = np.empty((n, n_beats, 5))
    qs = per_subject(qrs_scale)
    off[..., _P] = -per_subject(pr)
    off[..., _Q] = -0.028 * qs
    off[..., _R] = 0.0
    off[..., _S] = 0.03 * qs
    off[..., _T] = per_subject(qt_k) * np.sqrt(rr)
    wid = np.empty((n, n_beats, 5))
    wid[..., _P] = 0.025
    wid[..., _Q] = 0.009 * qs
    wid[..., _R] = 0.010 * qs
    wid[..., _S] = 0.011 * qs
    wid[..., _T] = 0.05
    # Ectopic morphology.
    is_pvc = beat_type == _BEAT_PVC
    is_pac = beat_type == _BEAT_PAC
    amp[is_pvc, _P] = 0.0
    amp[is_pvc, _Q] = 0.0
    sign = pvc_sign[subj][:, None] * np.ones((1, n_beats))
    amp[is_pvc, _R] = 1.4 * sign[is_pvc]
    wid[is_pvc, _R] *= 2.6
    amp[is_pvc, _S] *= 1.5
    wid[is_pvc, _S] *= 2.0
    amp[is_pvc, _T] = -0.45 * sign[is_pvc]
    amp[is_pac, _P] *= -0.6  # ectopic atrial focus: inverted, smaller P
    off[is_pac, _P] *= 0.8

    fs_f = float(fs)
    signal = _render_beats(times, off, wid, amp, fs_f, ext)

    t = np.arange(ext) / fs_f
    # Fibrillatory waves 4-9 Hz with drifting frequency; the hard cases get fine f-waves.
    af_rows = np.flatnonzero(is_af)
    if af_rows.size:
        m = af_rows.size
        f0 = rng.uniform(4.0, 9.0, (m, 1))
        drift = 0.7 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5, (m, 1)) * t + rng.uniform(0, 6.3, (m, 1)))
        phase = 2 * np.pi * np.cumsum(f0 + drift, axis=1) / fs_f
        f_amp = np.where(hard[af_rows], rng.uniform(0.008, 0.025, m), rng.uniform(0.02, 0.09, m))[:, None]
        envelope = 1 + 0.35 * np.sin(
            2 * np.pi * rng.uniform(0.2, 1.0, (m, 1)) * t + rng.uniform(0, 6.3, (m, 1))
        )
        signal[af_rows] += (
            f_amp * envelope * (np.sin(phase) + 0.35 * np.sin(2 * phase + rng.uniform(0, 6.3, (m, 1))))
        )

    signal += _noise(rng, n, t, fs_f, subj, emg_sd, wander, mains_amp, mains_hz, seconds)
    signal *= (gain[subj] * np.exp(rng.normal(0, 0.1, n)))[:, None]
    signal = signal[:, pad : pad + length].astype(np.float32)

    peaks = []
    for i in range(n):
        r = times[i] * fs_f - pad
        peaks.append(r[(r >= 0) & (r < length)])
    raw = RawData(
        signal=signal,
        labels=np.where(is_af, "AFIB", "N"),
        subjects=np.char.add("S", (subj + 1).astype(str)),
        fs=fs,
        source=f"synthetic(seed={seed})",
    )
    return raw, SyntheticTruth(r_peaks=tuple(peaks), rr_cv=cv_drawn, hard=hard)


def _render_beats(
    times: np.ndarray, off: np.ndarray, wid: np.ndarray, amp: np.ndarray, fs: float, ext: int
) -> np.ndarray:
    """Sum of Gaussian waves, evaluated only near each wave centre (+-4 sigma).

    Rendering every wave over the whole segment costs ~30x more; only the waves that reach
    the rendered span are kept, grouped by window width so QRS waves use narrow windows.
    """
    n = times.shape[0]
    centre = ((times[:, :, None] + off) * fs).ravel()
    sigma = (wid * fs).ravel()
    a = amp.ravel()
    row = np.repeat(np.arange(n), off.shape[1] * off.shape[2])
    reach = 4.0 * sigma
    keep = (a != 0) & (centre + reach >= 0) & (centre - reach < ext)
    centre, sigma, a, row, reach = centre[keep], sigma[keep], a[keep], row[keep], reach[keep]
    out = np.zeros(n * ext)
    narrow_half = int(np.ceil(0.06 * fs))
    narrow = reach <= narrow_half
    for sel, half in ((narrow, narrow_half), (~narrow, int(np.ceil(reach.max(initial=1.0))))):
        win = np.arange(-half, half + 1)
        idx_all = np.flatnonzero(sel)
        for lo in range(0, idx_all.size, 20000):  # bounded temporaries for large requests
            ev = idx_all[lo : lo + 20000]
            c = centre[ev, None]
            pos = np.rint(c).astype(np.int64) + win
            vals = a[ev, None] * np.exp(-0.5 * ((pos - c) / sigma[ev, None]) ** 2)
            ok = (pos >= 0) & (pos < ext)
            # Events are ordered by row, so a chunk only touches rows r0..r1.
            r0, r1 = int(row[ev[0]]) * ext, (int(row[ev[-1]]) + 1) * ext
            flat = (row[ev, None] * ext + pos)[ok] - r0
            out[r0:r1] += np.bincount(flat, vals[ok], minlength=r1 - r0)
    return out.reshape(n, ext)


def _noise(
    rng: np.random.Generator,
    n: int,
    t: np.ndarray,
    fs: float,
    subj: np.ndarray,
    emg_sd: np.ndarray,
    wander: np.ndarray,
    mains_amp: np.ndarray,
    mains_hz: np.ndarray,
    seconds: float,
) -> np.ndarray:
    """Baseline wander (<0.5 Hz), mains hum, white + pink muscle noise, motion bursts."""
    ext = t.size
    out = np.zeros((n, ext))
    for f_lo, f_hi, scale in ((0.05, 0.3, 1.0), (0.2, 0.5, 0.5)):
        f = rng.uniform(f_lo, f_hi, (n, 1))
        out += scale * wander[subj][:, None] * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3, (n, 1)))
    out += mains_amp[subj][:, None] * np.sin(
        2 * np.pi * mains_hz[subj][:, None] * t + rng.uniform(0, 6.3, (n, 1))
    )
    sd = emg_sd[subj] * np.exp(rng.normal(0, 0.3, n))
    out += rng.normal(0, 1, (n, ext)) * sd[:, None]
    # Pink noise: shape white noise by 1/sqrt(f) in the frequency domain.
    spec = np.fft.rfft(rng.normal(0, 1, (n, ext)), axis=1)
    freqs = np.fft.rfftfreq(ext, 1 / fs)
    spec[:, 1:] /= np.sqrt(freqs[1:])
    spec[:, 0] = 0
    pink = np.fft.irfft(spec, n=ext, axis=1)
    pink /= pink.std(axis=1, keepdims=True) + 1e-12
    out += pink * (0.7 * sd)[:, None]
    # Motion bursts in ~10% of segments: smoothed high-amplitude noise under a Hann window.
    rows = np.flatnonzero(rng.random(n) < 0.1)
    if rows.size:
        pad0 = int(round(_PAD_S * fs))
        dur = rng.uniform(0.2, 1.0, rows.size)
        start = rng.uniform(0, max(seconds - 1.0, 0.01), rows.size)
        level = rng.uniform(0.1, 0.5, rows.size)
        kernel = np.ones(5) / 5
        for r, d, s0, lv in zip(rows, dur, start, level, strict=True):
            w = max(int(d * fs), 4)
            a = pad0 + int(s0 * fs)
            burst = np.convolve(rng.normal(0, 1, w + 4), kernel, mode="valid")[:w]
            out[r, a : a + w] += lv * np.hanning(w) * burst / (burst.std() + 1e-12)
    return out

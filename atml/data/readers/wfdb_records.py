"""Reading listed WFDB records into labelled windows: the shared half of every WFDB layout.

A layout (:mod:`atml.data.readers.wfdb_layouts`) lists its records as :class:`RecordRef`;
:func:`collect` then reads every record once, applies the spec's lead selection,
resampling, band-pass and windows (:mod:`atml.data.transforms`) and labels each window:
with the record label (comma-joined when there are several), or with the rhythm episode
from ``.atr`` annotations.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atml.data.readers.registry import MAX_PROBLEMS, RawData
from atml.data.readers.wfdb_io import read_header, read_rhythm_changes, read_signal
from atml.data.spec import DataSpec
from atml.data.transforms import (
    bandpass,
    cut,
    label_windows,
    resample,
    rhythm_intervals,
    scale_intervals,
    select_leads,
    window_plan,
)
from atml.errors import DataError

__all__ = ["RecordRef", "SpecMismatch", "collect"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordRef:
    """One record of a layout: where its header is, whose it is, where its label comes from."""

    name: str  # path relative to the dataset folder, without extension
    header: Path
    subject: str
    label: str | None = None  # "given" labels (comma-joined for several)
    source: str = "given"  # given | dx (header '# Dx:') | rhythm (.atr annotations)
    error: str = ""  # a problem found while listing (bad CSV row): the record is bad


class SpecMismatch(DataError):
    """The spec does not fit the data as a whole (never skipped with on_bad="skip")."""


@dataclass
class _Acc:
    """What collect() accumulates over records."""

    signals: list[np.ndarray]
    labels: list[str]
    subjects: list[str]
    names: list[str]
    problems: list[str]
    skipped: int = 0
    short: int = 0
    mixed: int = 0
    repaired: int = 0
    leads: tuple[str, ...] | None = None
    fs: int | None = None
    length: tuple[str, int] | None = None


def _record_label(ref: RecordRef, comments_dx: str | None) -> str:
    if ref.source == "dx":
        if not comments_dx:
            raise DataError(f"{ref.header}: no '# Dx:' comment (CinC 2020/2021 records carry their codes there)")
        return ",".join(c.strip() for c in comments_dx.split(",") if c.strip())
    return ref.label or ""


def _one(ref: RecordRef, spec: DataSpec, acc: _Acc) -> None:
    """Read one record and append its labelled windows to ``acc``; DataError if bad."""
    if ref.error:
        raise DataError(ref.error)
    h = read_header(ref.header)
    label = _record_label(ref, h.comment("Dx"))
    x = read_signal(h)
    acc.repaired += bool(h.repaired)
    where = str(ref.header.with_suffix(""))
    if spec.leads is not None:
        x = select_leads(x, h.lead_names, spec.leads, where)
    else:
        if acc.leads is None:
            acc.leads = h.lead_names
        if [n.lower() for n in h.lead_names] != [n.lower() for n in acc.leads]:
            if sorted(n.lower() for n in h.lead_names) != sorted(n.lower() for n in acc.leads):
                raise DataError(f"{where}: leads {list(h.lead_names)} differ from the first record's "
                                f"{list(acc.leads)} (set data.leads to pick common ones)")
            x = select_leads(x, h.lead_names, acc.leads, where)
    if not np.isfinite(x).all():
        raise DataError(f"{where}: missing or non-finite samples")
    n_in = x.shape[-1]
    x, fs = resample(x, h.fs, spec.target_fs)
    if acc.fs is None:
        acc.fs = fs
    elif fs != acc.fs:
        raise SpecMismatch(f"records have different sampling rates ({where}: {fs} Hz, earlier ones "
                            f"{acc.fs} Hz): set data.target_fs to resample them to one rate")
    try:
        x = bandpass(x, fs, spec.bandpass)
    except DataError as exc:  # a cut-off above Nyquist fails every record alike
        raise SpecMismatch(f"{where}: {exc}") from None
    plan = window_plan(x.shape[-1], fs, spec.window, spec.stride, spec.pad_short)
    if spec.window is None:
        if acc.length is None:
            acc.length = (where, x.shape[-1])
        elif acc.length[1] != x.shape[-1]:
            raise SpecMismatch(
                f"records differ in length ({acc.length[0]}: {acc.length[1]} samples, {where}: "
                f"{x.shape[-1]}): set data.window (seconds) to cut equal windows, pad_short to keep short ones")
    if len(plan.starts) == 0:
        acc.short += 1
        return
    if ref.source == "rhythm":
        iv = rhythm_intervals(read_rhythm_changes(ref.header.with_suffix("")), n_in, spec.rhythm_default)
        iv = scale_intervals(iv, h.fs, fs, x.shape[-1])
        labels = label_windows(plan.starts, plan.length, x.shape[-1], iv, spec.window_mixed)
    else:
        labels = [label] * len(plan.starts)
    keep = [i for i, lab in enumerate(labels) if lab is not None]
    acc.mixed += len(labels) - len(keep)
    if not keep:
        return
    windows = cut(x, plan)[keep]
    acc.signals.append(np.ascontiguousarray(windows, dtype=np.float32))
    acc.labels += [labels[i] for i in keep]  # type: ignore[misc]
    acc.subjects += [ref.subject] * len(keep)
    if spec.window is None:
        acc.names.append(ref.name)
    else:
        acc.names += [f"{ref.name}@{plan.starts[i] / fs:g}s" for i in keep]


def collect(folder: Path, refs: Iterable[RecordRef], spec: DataSpec) -> RawData:
    """Read the records, preprocess and window them; bad records raise or are counted."""
    acc = _Acc([], [], [], [], [])
    n_records = 0
    for ref in refs:
        n_records += 1
        try:
            _one(ref, spec, acc)
        except SpecMismatch:
            raise
        except DataError as exc:
            if spec.on_bad == "error":
                raise
            acc.skipped += 1
            if len(acc.problems) < MAX_PROBLEMS:
                acc.problems.append(str(exc))
    if acc.repaired:
        log.info("%s: read %d header(s) with a date before the time on the record line", folder, acc.repaired)
    if acc.short:
        log.info("%s: %d record(s) shorter than one %gs window dropped (pad_short: false)",
                 folder, acc.short, spec.window)
    if acc.mixed:
        log.info("%s: %d window(s) dropped over a rhythm change or unknown rhythm", folder, acc.mixed)
    if not acc.signals:
        first = f" (first: {acc.problems[0]})" if acc.problems else ""
        raise DataError(f"{folder}: no usable windows from {n_records} record(s), {acc.skipped} bad{first}")
    signal = np.concatenate(acc.signals) if len(acc.signals) > 1 else acc.signals[0]
    log.info("%s: %d record(s) -> %d item(s) of %s", folder, n_records, len(signal), signal.shape[1:])
    return RawData(
        signal=signal,
        labels=np.array(acc.labels, dtype=str),
        subjects=np.array(acc.subjects, dtype=str),
        fs=int(acc.fs or 0),
        source=str(folder),
        skipped=acc.skipped,
        problems=tuple(acc.problems),
        names=np.array(acc.names, dtype=str),
        leads=tuple(spec.leads if spec.leads is not None else (acc.leads or ())),
    )

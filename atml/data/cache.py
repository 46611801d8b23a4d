"""Load a dataset once, preprocess it and cache the arrays as .npy under ``cache_dir/<key>/``.

The cache is built in a private temporary folder and renamed into place, so processes that
race on the same key end up with one complete cache: a loser of the race discards its own
copy and loads the winner's.  ``x.npy`` is opened with mmap_mode="r", so many trial
processes share one copy of the data through the page cache.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from atml.data.labels import map_labels
from atml.data.preprocess import normalize, subsample
from atml.data.readers.npz import NpzStream
from atml.data.readers.registry import READERS, RawData, reader_takes_spec
from atml.data.spec import WFDB_FORMATS, DataSpec
from atml.data.splits import Split, subject_split
from atml.data.synthetic import synthetic_ecg
from atml.data.transforms import transform_segments
from atml.errors import DataError, StorageError

log = logging.getLogger(__name__)

_META = "meta.json"  # written last: its presence marks a complete cache folder
_CHUNK_ROWS = 4096


@dataclass(frozen=True)
class Dataset:
    """Preprocessed segments: x float32 (N, leads, samples), subject str (N,) and y:
    int64 (N,) class ids for task "binary"/"multiclass", float32 (N, C) 0/1 for "multilabel".
    """

    x: np.ndarray
    y: np.ndarray
    subject: np.ndarray
    classes: tuple[str, ...]
    fs: int
    source: str
    skipped: int = 0
    task: str = "binary"  # binary | multiclass | multilabel: picks the loss in training
    leads: tuple[str, ...] = ()  # lead names, () when the format has none (txt, npz)

    @property
    def n_leads(self) -> int:
        """Number of leads (channels) per segment."""
        return int(self.x.shape[1])

    @property
    def n_samples(self) -> int:
        """Samples per segment and lead."""
        return int(self.x.shape[2])

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def split(self, spec: DataSpec) -> Split:
        """Subject-wise split following the spec (test_fraction ignored if test_path is set)."""
        test_fraction = 0.0 if spec.test_path is not None else spec.test_fraction
        return subject_split(self.subject, self.y, spec.val_fraction, test_fraction, spec.split_seed)


def load_dataset(spec: DataSpec, cache_dir: str | Path) -> Dataset:
    """Load the data described by ``spec``, building ``cache_dir/<spec.cache_key()>`` once."""
    key = spec.cache_key()
    root = Path(cache_dir)
    final = root / key
    if (final / _META).is_file():
        return _load_cached(final)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create cache folder {root}: {exc.strerror}") from exc
    _clean_stale(root)
    tmp = root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    started = time.perf_counter()
    try:
        log.info("building data cache %s from %s", final, spec.path or "synthetic")
        _build(spec, tmp)
        try:
            os.rename(tmp, final)
        except OSError as exc:
            # Another process finished first (rename onto a non-empty folder fails).
            if not (final / _META).is_file():
                raise StorageError(
                    f"cannot move data cache into {final} ({exc.strerror}); if that folder "
                    "is left over from a crash, delete it"
                ) from exc
            log.info("data cache %s was built concurrently; using that copy", final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("data cache %s ready in %.2fs", final, time.perf_counter() - started)
    return _load_cached(final)


STALE_AFTER = 3600.0  # seconds without a write before a dead builder's folder is removed


def _clean_stale(root: Path, now: float | None = None) -> None:
    """Remove ``.tmp-*`` build folders left by killed processes (up to hundreds of MB each).

    A folder goes only when the process named in it is not running here and nothing in it
    was written for STALE_AFTER seconds (a cache on a shared disk may be being built by a
    process of another machine, whose pid means nothing here; it keeps writing).
    """
    now = time.time() if now is None else now
    for d in root.glob(".tmp-*"):
        try:
            pid = int(d.name.rsplit("-", 2)[-2])
        except (ValueError, IndexError):
            continue
        try:
            os.kill(pid, 0)
            continue  # alive here
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, someone else's
        try:
            newest = max([d.stat().st_mtime, *(f.stat().st_mtime for f in d.iterdir())])
        except OSError:
            continue
        if now - newest > STALE_AFTER:
            log.info("removing %s, left by a stopped cache build", d)
            shutil.rmtree(d, ignore_errors=True)


def load_test_dataset(spec: DataSpec, cache_dir: str | Path) -> Dataset | None:
    """The separate test set from ``spec.test_path`` with the same preprocessing, or None."""
    if spec.test_path is None:
        return None
    test_spec = replace(
        spec,
        path=spec.test_path,
        test_path=None,
        format="auto" if spec.format == "synthetic" else spec.format,
    )
    return load_dataset(test_spec, cache_dir)


def _load_cached(folder: Path) -> Dataset:
    try:
        meta = json.loads((folder / _META).read_text())
        x = np.load(folder / "x.npy", mmap_mode="r")
        y = np.load(folder / "y.npy")
        subject = np.load(folder / "subject.npy")
    except (OSError, ValueError, KeyError) as exc:
        raise StorageError(
            f"data cache {folder} is unreadable ({exc}); delete that folder to rebuild it"
        ) from exc
    log.info("loaded data cache %s (%d segments)", folder, len(y))
    return Dataset(
        x=x,
        y=y,
        subject=subject,
        classes=tuple(meta["classes"]),
        fs=int(meta["fs"]),
        source=str(meta["source"]),
        skipped=int(meta["skipped"]),
        task=str(meta.get("task", "binary")),
        leads=tuple(meta.get("leads", ())),
    )


def _build(spec: DataSpec, out: Path) -> None:
    """Write x.npy, y.npy, subject.npy and finally meta.json into ``out``."""
    fmt = spec.resolved_format()
    leads: tuple[str, ...] = ()
    if spec.leads is not None and fmt not in WFDB_FORMATS:
        raise DataError(
            f"DataSpec.leads = {list(spec.leads)}: format {fmt!r} has no lead names; use null/all "
            f"(lead selection works for WFDB formats: {', '.join(WFDB_FORMATS)})"
        )
    if fmt == "npz":
        # Streamed: the float32 copy of a large npz never sits in memory at once.
        with NpzStream(spec.path, spec.segment_length, spec.fs) as stream:  # type: ignore[arg-type]
            labels, subjects, source = stream.labels, stream.subjects, str(spec.path)
            selected, y, skipped, problem = _select(labels, subjects, spec, lambda i: f"{source}[row {i}]")
            n_written, bad, per, fs = _stream_npz(stream, selected, spec, out)
        if bad:
            problem = problem or f"{source}[row {bad[0]}]: non-finite value"
            if spec.on_bad == "error":
                raise DataError(f"{source}[row {bad[0]}]: non-finite value ({len(bad)} rows affected)")
            keep = ~np.isin(selected, bad)
            y, selected = y[keep], selected[keep]
            skipped += len(bad)
        subj = np.repeat(subjects[selected], per)
        y = np.repeat(y, per, axis=0)
    else:
        raw = _read(spec, fmt)
        selected, y, skipped, problem = _select(raw.labels, raw.subjects, spec, raw.item_name)
        skipped += raw.skipped
        problem = raw.problems[0] if raw.problems else problem
        sig = raw.signal[selected]
        x = sig[:, None, :] if sig.ndim == 2 else sig
        x = np.ascontiguousarray(x, dtype=np.float32)
        per, fs = 1, raw.fs
        if fmt not in WFDB_FORMATS:  # WFDB readers already resampled, filtered and cut
            x, per, fs = transform_segments(x, raw.fs, spec, raw.source)
        x = normalize(x, spec.normalize)
        np.save(out / "x.npy", x)
        n_written = len(x)
        subj = np.repeat(raw.subjects[selected], per)
        y = np.repeat(y, per, axis=0)
        source, leads = raw.source, raw.leads
    if n_written == 0:
        raise DataError(f"{source}: no segments left after dropping {list(spec.drop_labels)} and bad items")
    if skipped:
        log.warning("%s: skipped %d bad item(s); first: %s", source, skipped, problem)
    y_dtype = np.float32 if spec.multilabel else np.int64
    np.save(out / "y.npy", np.ascontiguousarray(y, dtype=y_dtype))
    np.save(out / "subject.npy", np.asarray(subj).astype(str))
    meta = {
        "classes": list(spec.classes),
        "fs": int(fs),
        "source": source,
        "skipped": int(skipped),
        "n": int(n_written),
        "task": spec.task,
        "leads": list(leads),
        "spec": spec.to_dict(),
    }
    (out / _META).write_text(json.dumps(meta, indent=1, default=str))


def _read(spec: DataSpec, fmt: str) -> RawData:
    if fmt == "synthetic":
        return synthetic_ecg(
            spec.synthetic_subjects,
            spec.synthetic_per_subject,
            fs=spec.fs,
            seconds=spec.segment_length / spec.fs,
            seed=spec.synthetic_seed,
        )
    reader = READERS.get(fmt)
    if reader is None:
        raise DataError(f"no reader for data format {fmt!r} (known: {sorted(READERS)})")
    if reader_takes_spec(reader):
        return reader(spec.path, on_bad=spec.on_bad, spec=spec)
    return reader(spec.path, segment_length=spec.segment_length, fs=spec.fs, on_bad=spec.on_bad)


def _select(labels, subjects, spec: DataSpec, name_of) -> tuple[np.ndarray, np.ndarray, int, str]:  # noqa: ANN001
    """Indices to keep (after drop/mapping/cap), their class ids, skipped count, a problem."""
    mapped = map_labels(labels, spec, name_of)
    kept = np.flatnonzero(mapped.keep)
    if mapped.dropped:
        log.info("dropped %d segment(s) with labels %s", mapped.dropped, list(spec.drop_labels))
    pick = subsample(np.asarray(subjects)[kept], spec.max_segments)
    return kept[pick].astype(np.int64), mapped.y[pick], mapped.unmapped, mapped.unmapped_example


def _stream_npz(
    stream: NpzStream, selected: np.ndarray, spec: DataSpec, out: Path
) -> tuple[int, list[int], int, int]:
    """Convert selected rows chunk by chunk into an on-disk x.npy.

    Returns (rows written, bad source rows, windows per source row, output rate); each source
    row becomes ``per`` consecutive rows (resampled, filtered, windowed per the spec).
    """
    leads = 1 if len(stream.shape) == 2 else stream.shape[1]
    probe, per, fs = transform_segments(
        np.zeros((1, leads, spec.segment_length), np.float32), stream.fs, spec, str(stream.path)
    )
    shape = (len(selected) * per, leads, probe.shape[-1])
    x = np.lib.format.open_memmap(out / "x.npy", mode="w+", dtype=np.float32, shape=shape)
    bad: list[int] = []
    pos = 0
    for start, chunk in stream.iter_chunks(_CHUNK_ROWS):
        lo, hi = np.searchsorted(selected, [start, start + len(chunk)])
        if lo == hi:
            continue
        rows = chunk[selected[lo:hi] - start]
        rows = rows[:, None, :] if rows.ndim == 2 else rows
        finite = np.isfinite(rows.reshape(len(rows), -1)).all(axis=1)
        if not finite.all():
            bad += (selected[lo:hi][~finite]).tolist()
            if spec.on_bad == "error":
                break
            rows = rows[finite]
            if not len(rows):
                continue
        rows, _, _ = transform_segments(rows, stream.fs, spec, str(stream.path))
        x[pos : pos + len(rows)] = normalize(rows, spec.normalize)
        pos += len(rows)
    x.flush()
    del x
    if pos != shape[0] and not (bad and spec.on_bad == "error"):
        _truncate_npy(out / "x.npy", pos)
    return pos, bad, per, fs


def _truncate_npy(path: Path, rows: int) -> None:
    """Rewrite an .npy keeping its first ``rows`` rows (rare: only after skipped bad rows)."""
    src = np.load(path, mmap_mode="r")
    tmp = path.with_suffix(".part.npy")
    dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=src.dtype, shape=(rows, *src.shape[1:]))
    for lo in range(0, rows, _CHUNK_ROWS):
        dst[lo : lo + _CHUNK_ROWS] = src[lo : min(lo + _CHUNK_ROWS, rows)]
    dst.flush()
    del dst, src
    os.replace(tmp, path)

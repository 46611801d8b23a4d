"""Readers that turn user data on disk into raw arrays (physical units, labels as text).

Every reader returns a :class:`RawData`; the loader in :mod:`atml.data.cache` maps labels,
normalises and caches.  New formats register with :func:`register_format` (the WFDB layouts
in :mod:`atml.data.wfdb_readers` do so when ``atml.data`` is imported); a reader whose
signature has a ``spec`` parameter gets the whole DataSpec (leads, windows, resampling).  The npz reader also has a streaming form (:class:`NpzStream`)
because the full 50,000-segment file would otherwise need ~250 MB of float32 at once.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from atml.errors import DataError

log = logging.getLogger(__name__)

# IESD/ATML contest file names: S<subject>-<label>-<index>.txt, or S<subject>-<index>.txt
# for segments whose label was withheld (those become "UNK", as in train.npz).
_IESD_LABELLED = re.compile(r"^S(\d+)-([A-Za-z~][A-Za-z0-9_~]*)-(\d+)\.txt$")
_IESD_UNLABELLED = re.compile(r"^S(\d+)-(\d+)\.txt$")
UNLABELLED = "UNK"
IESD_PATTERN_HELP = "S<subject>-<label>-<index>.txt or S<subject>-<index>.txt"

# Keep at most this many problem descriptions: the count is what matters, the first few
# tell the user what kind of damage it is.
_MAX_PROBLEMS = 5


@dataclass(frozen=True)
class RawData:
    """Segments as read from disk, before label mapping and normalisation.

    signal: float32 (N, samples) or (N, leads, samples), physical units (mV).
    labels / subjects: str arrays (N,); a multi-label item joins its labels with ",".  names: per-segment item names for messages
    (file names), or None when items are rows of one file.
    """

    signal: np.ndarray
    labels: np.ndarray
    subjects: np.ndarray
    fs: int
    source: str
    skipped: int = 0
    problems: tuple[str, ...] = ()
    names: np.ndarray | None = field(default=None, repr=False)
    leads: tuple[str, ...] = ()  # lead names when the format has them (WFDB), else ()

    def item_name(self, i: int) -> str:
        """Human-readable name of segment ``i`` for error messages."""
        if self.names is not None:
            return str(Path(self.source) / str(self.names[i]))
        return f"{self.source}[row {i}]"


def shared_data_dir() -> Path:
    """Folder with the shared real ECG data: env ATML_SHARED_DATA, else <repo>/../shared/data."""
    env = os.environ.get("ATML_SHARED_DATA")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    return (repo / ".." / "shared" / "data").resolve()


def _check_on_bad(on_bad: str) -> None:
    if on_bad not in ("error", "skip"):
        raise DataError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")


def _is_iesd_folder(path: Path) -> bool:
    if not path.is_dir():
        return False
    return any(
        _IESD_LABELLED.match(e.name) or _IESD_UNLABELLED.match(e.name)
        for e in os.scandir(path)
        if e.is_file()
    )


def _is_npz(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".npz"


# Ordered: the first detector that accepts the path wins.
_DETECTORS: list[tuple[str, Callable[[Path], bool]]] = [
    ("iesd_txt", _is_iesd_folder),
    ("npz", _is_npz),
]


def register_format(
    name: str,
    detector: Callable[[Path], bool],
    reader: Callable[..., RawData],
    before: str | None = None,
    recursive: bool = False,
) -> None:
    """Add (or replace) a format: ``detector(path)`` for format="auto", ``reader`` to read it.

    Detectors run in registration order, the first that accepts wins; ``before`` inserts
    ahead of an already registered detector.  ``recursive``: the source identity (cache
    key) lists the whole folder tree, for layouts with records in sub-folders.
    """
    _DETECTORS[:] = [(n, d) for n, d in _DETECTORS if n != name]
    at = next((i for i, (n, _) in enumerate(_DETECTORS) if n == before), len(_DETECTORS))
    _DETECTORS.insert(at, (name, detector))
    READERS[name] = reader
    if recursive:  # the cache key then lists files in sub-folders too
        _RECURSIVE_FORMATS.add(name)


def reader_takes_spec(reader: Callable[..., RawData]) -> bool:
    """Whether ``reader`` wants the DataSpec (``spec`` keyword) rather than (fs, length)."""
    import inspect

    return "spec" in inspect.signature(reader).parameters


def detect_format(path: str | Path | None) -> str:
    """Return the data format name for ``path`` ("synthetic" when path is None)."""
    if path is None:
        return "synthetic"
    p = Path(path)
    if not p.exists():
        raise DataError(f"data path does not exist: {p}")
    for name, accepts in _DETECTORS:
        if accepts(p):
            return name
    if p.is_dir() and not any(e.is_file() for e in os.scandir(p)):
        raise DataError(f"data folder is empty: {p}")
    hint = ""
    if p.is_dir() and any(e.name.endswith(".hea") for e in os.scandir(p)):
        hint = (
            "; WFDB headers found but no labels: add REFERENCE.csv (record,label rows), a CSV "
            "with a 'record,label[,subject]' header, .atr rhythm annotations or '# Dx:' header comments"
        )
    raise DataError(
        f"cannot detect data format of {p} (expected a folder of {IESD_PATTERN_HELP} files, a .npz "
        f"file or a labelled WFDB folder: PTB-XL, CinC 2017/2020/2021, rhythm-annotated records){hint}"
    )


def parse_iesd_name(name: str) -> tuple[str, str] | None:
    """(subject, label) from an IESD file name, e.g. "S1-AB-20.txt" -> ("S1", "AB")."""
    m = _IESD_LABELLED.match(name)
    if m:
        return f"S{int(m.group(1))}", m.group(2)
    m = _IESD_UNLABELLED.match(name)
    if m:
        return f"S{int(m.group(1))}", UNLABELLED
    return None


def _locate_bad_token(text: str) -> tuple[int, str]:
    """Line number (1-based) and content of the first line that is not a number."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        for tok in line.split():
            try:
                float(tok)
            except ValueError:
                return lineno, tok
    return 0, ""


def _finite_problem(values: np.ndarray, text: str) -> tuple[int, float]:
    """Line number and value of the first non-finite sample (line == sample for IESD)."""
    i = int(np.flatnonzero(~np.isfinite(values))[0])
    # Values are one per line in the contest format; count lines to be exact anyway.
    seen = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        seen += len(line.split())
        if seen > i:
            return lineno, float(values[i])
    return i + 1, float(values[i])


def read_iesd_segment(path: Path, segment_length: int) -> np.ndarray:
    """Parse one IESD text file into float32 (segment_length,); DataError names the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror})") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    tokens = text.split()
    # np.loadtxt is ~20x slower; converting the split tokens in one call is the fast path
    # and the slow line-by-line scan only runs to explain a failure.
    try:
        values = np.array(tokens, dtype=np.float64)
    except ValueError:
        lineno, tok = _locate_bad_token(text)
        raise DataError(f"{path} line {lineno}: not a number: {tok[:40]!r}") from None
    if values.size != segment_length:
        raise DataError(f"{path}: {values.size} samples, expected {segment_length}")
    if not np.isfinite(values).all():
        lineno, val = _finite_problem(values, text)
        raise DataError(f"{path} line {lineno}: non-finite value {val}")
    return values.astype(np.float32)


def read_iesd_folder(
    path: str | Path,
    segment_length: int = 1250,
    fs: int = 250,
    on_bad: str = "error",
) -> RawData:
    """Read a folder of IESD/ATML text segments (one float per line) into RawData.

    Files not ending in .txt and hidden files are ignored; a .txt file whose name does not
    follow the contest pattern is a bad item.  With on_bad="skip" bad files are dropped and
    counted; with "error" the first one raises DataError naming the file.
    """
    _check_on_bad(on_bad)
    folder = Path(path)
    if not folder.exists():
        raise DataError(f"data path does not exist: {folder}")
    if not folder.is_dir():
        raise DataError(f"{folder}: expected a folder of {IESD_PATTERN_HELP} files")
    entries = sorted(e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))
    txt = [n for n in entries if n.endswith(".txt")]
    if len(entries) > len(txt):
        log.info("ignoring %d non-.txt files in %s", len(entries) - len(txt), folder)
    if not txt:
        raise DataError(f"{folder}: no {IESD_PATTERN_HELP} files found")

    signals: list[np.ndarray] = []
    labels: list[str] = []
    subjects: list[str] = []
    names: list[str] = []
    problems: list[str] = []
    skipped = 0
    for name in txt:
        try:
            parsed = parse_iesd_name(name)
            if parsed is None:
                raise DataError(f"{folder / name}: unknown file name pattern (expected {IESD_PATTERN_HELP})")
            sig = read_iesd_segment(folder / name, segment_length)
        except DataError as exc:
            if on_bad == "error":
                raise
            skipped += 1
            if len(problems) < _MAX_PROBLEMS:
                problems.append(str(exc))
            continue
        signals.append(sig)
        subjects.append(parsed[0])
        labels.append(parsed[1])
        names.append(name)
    if not signals:
        first = f" (first: {problems[0]})" if problems else ""
        raise DataError(f"{folder}: no usable segments, {skipped} bad files{first}")
    return RawData(
        signal=np.stack(signals),
        labels=np.array(labels),
        subjects=np.array(subjects),
        fs=fs,
        source=str(folder),
        skipped=skipped,
        problems=tuple(problems),
        names=np.array(names),
    )


# Accepted key names, first match wins: the IESD pack uses signal/label/subject, generic
# numpy exports often use x/y.
_NPZ_KEYS = {
    "signal": ("signal", "x", "X", "data"),
    "label": ("label", "labels", "y"),
    "subject": ("subject", "subjects", "subject_id"),
}


class NpzStream:
    """Reads an .npz in row chunks without loading the whole signal array.

    np.load on an npz decompresses a member completely; streaming the member from the zip
    keeps the peak at one chunk, which matters for the 125 MB int16 IESD pack.
    """

    def __init__(self, path: str | Path, segment_length: int = 1250, fs: int = 250) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"data path does not exist: {self.path}")
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"{self.path}: not a readable .npz file ({exc})") from exc
        members = {n.removesuffix(".npy"): n for n in self._zip.namelist()}
        self._member: dict[str, str] = {}
        for role, candidates in _NPZ_KEYS.items():
            found = next((members[c] for c in candidates if c in members), None)
            if found is None:
                self._zip.close()
                raise DataError(
                    f"{self.path}: missing key {role!r} (accepted names {list(candidates)}; "
                    f"file has {sorted(members)})"
                )
            self._member[role] = found
        small = np.load(self.path, allow_pickle=False)
        try:
            self.gain = float(small["gain"]) if "gain" in small.files else 1.0
            file_fs = int(small["fs"]) if "fs" in small.files else fs
            labels = np.asarray(small[self._member["label"].removesuffix(".npy")])
            subjects = np.asarray(small[self._member["subject"].removesuffix(".npy")])
        except ValueError as exc:  # e.g. object arrays, which need pickle
            raise DataError(f"{self.path}: unreadable array ({exc})") from exc
        finally:
            small.close()
        if self.gain == 0 or not np.isfinite(self.gain):
            raise DataError(f"{self.path}: gain must be a finite non-zero number, got {self.gain}")
        if file_fs != fs:
            raise DataError(f"{self.path}: fs is {file_fs} Hz, expected {fs} (no resampling)")
        self.fs = file_fs
        with self._zip.open(self._member["signal"]) as fh:
            self._header(fh)
        n = self.shape[0]
        if self.shape[-1] != segment_length or len(self.shape) not in (2, 3):
            raise DataError(
                f"{self.path}: signal shape {self.shape}, expected (N, {segment_length}) "
                f"or (N, leads, {segment_length})"
            )
        if labels.shape != (n,) or subjects.shape != (n,):
            raise DataError(
                f"{self.path}: label shape {labels.shape} and subject shape {subjects.shape} "
                f"must both be ({n},) to match signal"
            )
        self.labels = labels.astype(str)
        if subjects.dtype.kind in "iu":
            self.subjects = np.char.add("S", subjects.astype(str))
        else:
            self.subjects = subjects.astype(str)

    def _header(self, fh) -> None:  # noqa: ANN001 - zipfile's file object
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        if fortran or dtype.hasobject or dtype.kind not in "iuf":
            raise DataError(
                f"{self.path}: signal must be a C-ordered numeric array, got dtype {dtype} "
                f"fortran_order={fortran}"
            )
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = dtype

    def iter_chunks(self, rows: int = 4096) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (first_row, float32 chunk in physical units) in file order."""
        row_shape = self.shape[1:]
        row_bytes = int(np.prod(row_shape)) * self.dtype.itemsize
        with self._zip.open(self._member["signal"]) as fh:
            self._header(fh)
            start = 0
            while start < self.shape[0]:
                count = min(rows, self.shape[0] - start)
                buf = fh.read(count * row_bytes)
                if len(buf) != count * row_bytes:
                    raise DataError(f"{self.path}: signal data truncated at row {start}")
                chunk = np.frombuffer(buf, dtype=self.dtype).reshape((count, *row_shape))
                out = chunk.astype(np.float32)
                if self.gain != 1.0:
                    out *= np.float32(1.0 / self.gain)
                yield start, out
                start += count

    def close(self) -> None:
        """Release the zip handle."""
        self._zip.close()

    def __enter__(self) -> NpzStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_npz(
    path: str | Path,
    segment_length: int = 1250,
    fs: int = 250,
    on_bad: str = "error",
) -> RawData:
    """Read an .npz (signal, label, subject, optional gain/fs) fully into memory.

    Physical value = signal / gain.  Rows with non-finite values (float files only) are bad
    items: DataError naming the row, or dropped and counted with on_bad="skip".
    """
    _check_on_bad(on_bad)
    with NpzStream(path, segment_length, fs) as stream:
        signal = np.empty(stream.shape, dtype=np.float32)
        for start, chunk in stream.iter_chunks():
            signal[start : start + len(chunk)] = chunk
        labels, subjects = stream.labels, stream.subjects
    bad = ~np.isfinite(signal.reshape(len(signal), -1)).all(axis=1)
    problems: tuple[str, ...] = ()
    if bad.any():
        rows = np.flatnonzero(bad)
        msg = f"{path}[row {rows[0]}]: non-finite value ({len(rows)} rows affected)"
        if on_bad == "error":
            raise DataError(msg)
        keep = ~bad
        signal, labels, subjects = signal[keep], labels[keep], subjects[keep]
        problems = (msg,)
    return RawData(
        signal=signal,
        labels=labels,
        subjects=subjects,
        fs=fs,
        source=str(path),
        skipped=int(bad.sum()),
        problems=problems,
    )


def source_identity(path: str | Path, fmt: str) -> dict[str, object]:
    """What identifies the source content for caching: path, sizes and mtimes.

    For folders the whole listing counts, so adding, removing or editing a file changes it.
    """
    p = Path(path).resolve()
    if not p.exists():
        raise DataError(f"data path does not exist: {p}")
    if p.is_file():
        st = p.stat()
        return {"path": str(p), "format": fmt, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    listing = []
    if fmt in _RECURSIVE_FORMATS:
        # WFDB layouts keep records in sub-folders (PTB-XL records500/, CinC 2021 per database).
        for root, dirs, files in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            rel = Path(root).relative_to(p)
            for name in sorted(files):
                if not name.startswith("."):
                    st = os.stat(os.path.join(root, name))
                    listing.append((str(rel / name), st.st_size, st.st_mtime_ns))
        return {"path": str(p), "format": fmt, "listing": listing}
    for e in sorted(os.scandir(p), key=lambda e: e.name):
        if e.is_file() and not e.name.startswith("."):
            st = e.stat()
            listing.append((e.name, st.st_size, st.st_mtime_ns))
    return {"path": str(p), "format": fmt, "listing": listing}


# Formats whose source identity covers the whole folder tree, not only the top level.
_RECURSIVE_FORMATS: set[str] = set()


# Format name -> reader(path, segment_length, fs, on_bad).  "synthetic" is handled by the
# loader because it takes generator settings instead of a path.
READERS: dict[str, Callable[..., RawData]] = {
    "iesd_txt": read_iesd_folder,
    "npz": read_npz,
}

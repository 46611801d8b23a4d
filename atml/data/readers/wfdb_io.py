"""Low-level WFDB access: a tolerant header parser and fast signal readers.

wfdb's own ``rdheader`` is strict (a PhysioNet 2017 header with the date before the time
fails) and slow (~13 ms per header, pandas lookups).  Headers here are parsed with wfdb's
public line patterns (``wfdb.io.header.rx_signal``) after the record line is tokenised and
repaired in memory; signals come straight from the files: ``.mat`` through
``scipy.io.loadmat('val')`` (~0.5 ms per 12-lead record) and plain little-endian ``.dat``
formats through ``np.fromfile``.  Anything else (format 212, skew, several samples per
frame) goes through ``wfdb.rdrecord``.  Every problem is a DataError naming the file (and
the line, for header syntax).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atml.errors import DataError

log = logging.getLogger(__name__)

_TIME = re.compile(r"^\d{1,2}(:\d{1,2}){0,2}(\.\d+)?$")
_DATE = re.compile(r"^(\d{1,2}/\d{1,2}/\d{2,4}|\d{4}-\d{1,2}-\d{1,2})$")  # WFDB d/m/y; ISO seen too
_NUM = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
# Plain sample formats that need no unpacking: WFDB format -> numpy dtype and offset.
_PLAIN = {"16": ("<i2", 0), "61": (">i2", 0), "32": ("<i4", 0), "80": ("u1", 128)}
_INVALID16 = -32768  # WFDB's "no sample" value for 16-bit formats
DEFAULT_GAIN = 200.0  # WFDB: an ADC gain of 0 or missing means 200 units per mV


@dataclass(frozen=True)
class SignalInfo:
    """One signal line of a header."""

    file: str
    fmt: str
    gain: float
    baseline: int
    units: str
    name: str
    byte_offset: int = 0
    plain: bool = True  # readable without wfdb (one sample per frame, no skew)


@dataclass(frozen=True)
class Header:
    """A parsed single-segment WFDB header."""

    path: Path
    record: str
    n_sig: int
    fs: float
    sig_len: int | None
    signals: tuple[SignalInfo, ...]
    comments: tuple[str, ...] = ()
    repaired: str = ""  # what was fixed in memory to read it, "" if nothing

    @property
    def lead_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.signals)

    def comment(self, key: str) -> str | None:
        """Value of a ``# Key: value`` comment (case-insensitive key), or None."""
        want = key.lower()
        for c in self.comments:
            k, sep, v = c.partition(":")
            if sep and k.strip().lower() == want:
                return v.strip()
        return None


def _fail(path: Path, lineno: int, line: str, why: str) -> DataError:
    return DataError(f"{path} line {lineno}: {why}: {line.strip()[:120]!r}")


def _record_line(path: Path, lineno: int, line: str) -> tuple[str, int, float, int | None, str]:
    """(record, n_sig, fs, sig_len, repair note) from a record line, tolerating date/time order."""
    tokens = line.split()
    if len(tokens) < 2:
        raise _fail(path, lineno, line, "record line needs at least a name and a signal count")
    name = tokens[0]
    if "/" in name:
        raise _fail(path, lineno, line, "multi-segment records are not supported")
    try:
        n_sig = int(tokens[1])
    except ValueError:
        raise _fail(path, lineno, line, "signal count is not an integer") from None
    fs, sig_len, repair = 250.0, None, ""  # WFDB's default sampling frequency is 250
    if len(tokens) > 2:
        m = _NUM.match(tokens[2])  # "300", "360/1(0)": the counter frequency is not needed
        if not m:
            raise _fail(path, lineno, line, "sampling frequency is not a number")
        fs = float(m.group(0))
    if len(tokens) > 3:
        if not tokens[3].isdigit():
            raise _fail(path, lineno, line, "signal length is not an integer")
        sig_len = int(tokens[3])
    rest = tokens[4:]
    kinds = ["time" if _TIME.match(t) else "date" if _DATE.match(t) else "?" for t in rest]
    if "?" in kinds or len(rest) > 2 or len(set(kinds)) != len(kinds):
        raise _fail(path, lineno, line, "expected '[HH:MM:SS [DD/MM/YYYY]]' after the signal length")
    if kinds == ["date", "time"]:
        repair = "date before time on the record line"
    if any(k == "date" and "-" in t for k, t in zip(kinds, rest, strict=True)):
        repair = "; ".join(filter(None, [repair, "date not in DD/MM/YYYY form on the record line"]))
    if fs <= 0:
        raise _fail(path, lineno, line, "sampling frequency must be > 0")
    return name, n_sig, fs, sig_len, repair


def _signal_line(path: Path, lineno: int, line: str) -> SignalInfo:
    from wfdb.io.header import rx_signal

    m = rx_signal.match(line)
    if m is None or not m.group("file_name"):
        raise _fail(path, lineno, line, "cannot parse signal line")
    g = m.groupdict()
    try:
        gain = float(g["adc_gain"]) if g["adc_gain"] else 0.0
        zero = int(g["adc_zero"]) if g["adc_zero"] else 0
        baseline = int(g["baseline"]) if g["baseline"] else zero
        offset = int(g["byte_offset"]) if g["byte_offset"] else 0
    except ValueError:
        raise _fail(path, lineno, line, "gain, baseline, zero or byte offset is not a number") from None
    plain = (g["samps_per_frame"] or "1") == "1" and (g["skew"] or "0") == "0"
    return SignalInfo(
        file=g["file_name"],
        fmt=g["fmt"],
        gain=gain if gain != 0 else DEFAULT_GAIN,
        baseline=baseline,
        units=g["units"] or "mV",
        name=(g["sig_name"] or "").strip(),
        byte_offset=offset,
        plain=plain,
    )


def parse_header_text(text: str, path: Path) -> Header:
    """Parse header ``text`` (from ``path``, named in errors)."""
    comments: list[str] = []
    lines: list[tuple[int, str]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        s = raw.strip()
        if not s:
            continue
        if s.startswith("#"):
            comments.append(s.lstrip("#").strip())
            continue
        lines.append((lineno, raw.split("#", 1)[0] if "#" in raw else raw))
    if not lines:
        raise DataError(f"{path}: empty header (no record line)")
    record, n_sig, fs, sig_len, repair = _record_line(path, *lines[0])
    signals = tuple(_signal_line(path, no, ln) for no, ln in lines[1 : 1 + n_sig])
    if len(signals) != n_sig:
        raise DataError(f"{path}: record line declares {n_sig} signals, header has {len(signals)} signal lines")
    return Header(path, record, n_sig, fs, sig_len, signals, tuple(comments), repair)


def read_header(path: str | Path) -> Header:
    """Read and parse a ``.hea`` file; DataError names the file (and line)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        raise DataError(f"{p}: header file not found") from None
    except OSError as exc:
        raise DataError(f"{p}: cannot read header ({exc.strerror})") from exc
    return parse_header_text(text, p)


def _physical(digital: np.ndarray, h: Header, invalid: int | None) -> np.ndarray:
    """(n_sig, n) digital -> float32 physical units; invalid samples become NaN."""
    gain = np.array([s.gain for s in h.signals], dtype=np.float64)[:, None]
    base = np.array([s.baseline for s in h.signals], dtype=np.float64)[:, None]
    out = (digital.astype(np.float64) - base) / gain
    if invalid is not None:
        out[digital == invalid] = np.nan
    return out.astype(np.float32)


def _check_len(h: Header, n: int, file: Path) -> None:
    if h.sig_len is not None and n != h.sig_len:
        raise DataError(f"{h.path}: header says {h.sig_len} samples per signal, {file.name} holds {n}")


def _read_mat(h: Header, file: Path) -> np.ndarray:
    from scipy.io import loadmat

    try:
        val = loadmat(str(file))["val"]
    except FileNotFoundError:
        raise DataError(f"{h.path}: signal file {file.name} not found") from None
    except KeyError:
        raise DataError(f"{file}: no 'val' array (PhysioNet .mat records store the signal as 'val')") from None
    except Exception as exc:  # scipy raises ValueError/TypeError/MatReadError on damage
        raise DataError(f"{file}: unreadable .mat file ({exc})") from exc
    val = np.atleast_2d(val)
    if val.shape[0] != h.n_sig:
        raise DataError(f"{h.path}: header declares {h.n_sig} signals, {file.name} holds {val.shape[0]}")
    _check_len(h, val.shape[1], file)
    invalid = _INVALID16 if val.dtype == np.int16 else None
    return _physical(val, h, invalid)


def _read_plain_dat(h: Header, file: Path, dtype: str, offset: int) -> np.ndarray:
    item = np.dtype(dtype).itemsize
    try:
        size = file.stat().st_size - h.signals[0].byte_offset
    except FileNotFoundError:
        raise DataError(f"{h.path}: signal file {file.name} not found") from None
    if size % (item * h.n_sig):
        raise DataError(f"{file}: size is not a whole number of {h.n_sig}-signal frames")
    n = size // (item * h.n_sig)
    _check_len(h, n, file)
    raw = np.fromfile(file, dtype=dtype, offset=h.signals[0].byte_offset)
    digital = raw.reshape(n, h.n_sig).T.astype(np.int64) - offset
    invalid = _INVALID16 if dtype.endswith("i2") else None
    return _physical(digital, h, invalid)


def _read_with_wfdb(h: Header) -> np.ndarray:
    import wfdb

    if h.repaired:
        raise DataError(
            f"{h.path} line 1: {h.repaired}; wfdb cannot read {h.signals[0].fmt}-format "
            "signals with this header (put the time before the date on line 1)"
        )
    try:
        rec = wfdb.rdrecord(str(h.path.with_suffix("")), physical=True)
    except FileNotFoundError as exc:
        raise DataError(f"{h.path}: signal file not found ({exc.filename})") from None
    except Exception as exc:  # wfdb raises bare ValueError/IndexError on damaged files
        raise DataError(f"{h.path}: wfdb cannot read the record ({type(exc).__name__}: {exc})") from exc
    sig = np.asarray(rec.p_signal, dtype=np.float32).T
    _check_len(h, sig.shape[1], h.path)
    return sig


def read_signal(h: Header) -> np.ndarray:
    """Physical signal (n_sig, samples) float32 of the record described by ``h``."""
    if h.n_sig == 0:
        raise DataError(f"{h.path}: record has no signals")
    files = {s.file for s in h.signals}
    fmts = {s.fmt for s in h.signals}
    offsets = {s.byte_offset for s in h.signals}
    simple = len(files) == 1 and len(fmts) == 1 and len(offsets) == 1 and all(s.plain for s in h.signals)
    file = h.path.parent / h.signals[0].file
    if simple and file.suffix.lower() == ".mat":
        return _read_mat(h, file)
    plain = _PLAIN.get(h.signals[0].fmt)
    if simple and plain is not None:
        return _read_plain_dat(h, file, *plain)
    return _read_with_wfdb(h)


def read_rhythm_changes(record: Path, extension: str = "atr") -> list[tuple[int, str]]:
    """(sample, rhythm) for each rhythm annotation (``aux_note`` starting with "(").

    "(AFIB" -> "AFIB".  Beat annotations (empty or "None" aux notes) are ignored.
    """
    import wfdb

    ann_file = record.with_name(f"{record.name}.{extension}")
    if not ann_file.is_file():
        raise DataError(f"{record}: annotation file {ann_file.name} not found")
    try:
        ann = wfdb.rdann(str(record), extension)
    except Exception as exc:  # wfdb raises bare errors on damaged annotation files
        raise DataError(f"{ann_file}: unreadable annotations ({type(exc).__name__}: {exc})") from exc
    notes = ann.aux_note if ann.aux_note is not None else []
    out = []
    for sample, note in zip(ann.sample, notes, strict=False):
        text = (note or "").replace("\x00", "").strip()
        if text.startswith("(") and len(text) > 1:
            out.append((int(sample), text[1:].strip()))
    return out

"""IESD/ATML contest text segments: a folder of ``S<subject>-<label>-<index>.txt`` files.

One float per line, one file per segment; subject and label come from the file name.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from atml.data.readers.registry import IESD_PATTERN_HELP, MAX_PROBLEMS, RawData, check_on_bad, register_format
from atml.errors import DataError

__all__ = ["UNLABELLED", "is_iesd_folder", "parse_iesd_name", "read_iesd_folder", "read_iesd_segment"]

log = logging.getLogger(__name__)

# IESD/ATML contest file names: S<subject>-<label>-<index>.txt, or S<subject>-<index>.txt
# for segments whose label was withheld (those become "UNK", as in train.npz).
_IESD_LABELLED = re.compile(r"^S(\d+)-([A-Za-z~][A-Za-z0-9_~]*)-(\d+)\.txt$")
_IESD_UNLABELLED = re.compile(r"^S(\d+)-(\d+)\.txt$")
UNLABELLED = "UNK"


def is_iesd_folder(path: Path) -> bool:
    """Whether ``path`` is a folder holding at least one IESD-named file (format detection)."""
    if not path.is_dir():
        return False
    return any(
        _IESD_LABELLED.match(e.name) or _IESD_UNLABELLED.match(e.name)
        for e in os.scandir(path)
        if e.is_file()
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
    check_on_bad(on_bad)
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
            if len(problems) < MAX_PROBLEMS:
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


# Ahead of the WFDB layouts whatever the import order (ptbxl is their first detector): a
# folder of contest-named text files is IESD data even if it also holds WFDB files.
register_format("iesd_txt", is_iesd_folder, read_iesd_folder, before="ptbxl")

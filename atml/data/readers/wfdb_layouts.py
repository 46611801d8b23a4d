"""WFDB dataset layouts: PTB-XL, PhysioNet/CinC 2017, CinC 2020/2021, rhythm-annotated
records (CPSC 2021, MIT-BIH AF) and a generic folder with a ``record,label`` CSV.

Each layout lists its records (:class:`~atml.data.readers.wfdb_records.RecordRef`: header
path, subject, label source) and hands them to
:func:`~atml.data.readers.wfdb_records.collect`, which reads, preprocesses, windows and
labels them.  Layouts register themselves with format detection on import (``atml.data``
imports this module).  Detection order: PTB-XL (``ptbxl_database.csv``), CinC 2017
(``REFERENCE.csv``), generic CSV (a ``record,label`` header), rhythm (``.atr`` files),
CinC 2020/2021 (``# Dx:`` in the first header).
"""

from __future__ import annotations

import ast
import csv
import os
import re
from pathlib import Path

from atml.data.readers.registry import RawData, register_format
from atml.data.readers.wfdb_io import read_header
from atml.data.readers.wfdb_records import RecordRef, collect
from atml.data.spec import DataSpec
from atml.errors import DataError

__all__ = [
    "cpsc_subject",
    "is_cinc2017",
    "is_cinc2020",
    "is_ptbxl",
    "is_wfdb_csv",
    "is_wfdb_rhythm",
    "ptbxl_labels",
    "read_cinc2017",
    "read_cinc2020",
    "read_ptbxl",
    "read_wfdb_csv",
    "read_wfdb_rhythm",
]

_CPSC_NAME = re.compile(r"^data_(\d+)_(\d+)$")  # CPSC 2021: data_<patient>_<recording>


def _walk_first(folder: Path, suffix: str) -> Path | None:
    """First file (sorted walk) with ``suffix`` under ``folder``, or None; stops early."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.endswith(suffix) and not name.startswith("."):
                return Path(root) / name
    return None


def _label_csvs(folder: Path) -> list[Path]:
    """Top-level CSVs whose header row starts with ``record,label``."""
    found = []
    for e in sorted(os.scandir(folder), key=lambda e: e.name):
        if not (e.is_file() and e.name.lower().endswith(".csv")) or e.name.upper().startswith("REFERENCE"):
            continue
        with open(e.path, newline="", encoding="utf-8", errors="replace") as fh:
            head = [c.strip().lower() for c in next(csv.reader(fh), [])]
        if head[:2] == ["record", "label"]:
            found.append(Path(e.path))
    return found


def is_ptbxl(p: Path) -> bool:
    """A PTB-XL folder: ``ptbxl_database.csv`` at the top."""
    return p.is_dir() and (p / "ptbxl_database.csv").is_file()


def is_cinc2017(p: Path) -> bool:
    """A CinC 2017 folder: ``REFERENCE.csv`` at the top."""
    return p.is_dir() and (p / "REFERENCE.csv").is_file()


def is_wfdb_csv(p: Path) -> bool:
    """WFDB headers plus a top-level CSV whose header starts ``record,label``."""
    return p.is_dir() and bool(_label_csvs(p)) and _walk_first(p, ".hea") is not None


def is_wfdb_rhythm(p: Path) -> bool:
    """WFDB headers with ``.atr`` annotations somewhere under the folder."""
    return p.is_dir() and _walk_first(p, ".atr") is not None and _walk_first(p, ".hea") is not None


def is_cinc2020(p: Path) -> bool:
    """WFDB headers whose first one carries a ``# Dx:`` comment (CinC 2020/2021)."""
    if not p.is_dir():
        return False
    first = _walk_first(p, ".hea")
    if first is None:
        return False
    try:
        return read_header(first).comment("Dx") is not None
    except DataError:
        return False


def _spec_of(path: str | Path, on_bad: str, spec: DataSpec | None) -> DataSpec:
    return spec if spec is not None else DataSpec(path=str(path), on_bad=on_bad)


def _folder(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise DataError(f"data path does not exist or is not a folder: {p}")
    return p


def _headers(folder: Path) -> list[Path]:
    found = sorted(folder.rglob("*.hea"))
    if not found:
        raise DataError(f"{folder}: no WFDB .hea headers found")
    return found


def _rel(folder: Path, header: Path) -> str:
    return str(header.relative_to(folder).with_suffix(""))


def read_cinc2017(path, segment_length=None, fs=None, on_bad="error", spec=None) -> RawData:  # noqa: ANN001
    """PhysioNet/CinC 2017: ``REFERENCE.csv`` rows ``record,label`` (N/A/O/~) + .hea/.mat."""
    folder, spec = _folder(path), _spec_of(path, on_bad, spec)
    ref = folder / "REFERENCE.csv"
    refs = []
    with open(ref, newline="", encoding="utf-8", errors="replace") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            row = [c.strip() for c in row]
            if not any(row) or (lineno == 1 and [c.lower() for c in row[:2]] == ["record", "label"]):
                continue
            if len(row) != 2 or not row[0] or not row[1]:
                raise DataError(f"{ref} line {lineno}: expected 'record,label', got {','.join(row)!r}")
            refs.append(RecordRef(row[0], folder / f"{row[0]}.hea", row[0], row[1]))
    if not refs:
        raise DataError(f"{ref}: no record,label rows")
    return collect(folder, refs, spec)


def read_wfdb_csv(path, segment_length=None, fs=None, on_bad="error", spec=None) -> RawData:  # noqa: ANN001
    """WFDB records listed in a CSV with header ``record,label[,subject]`` (subject defaults to
    the record; several labels in one quoted cell, comma-separated, for multi-label)."""
    folder, spec = _folder(path), _spec_of(path, on_bad, spec)
    tables = _label_csvs(folder)
    if len(tables) != 1:
        names = [t.name for t in tables]
        raise DataError(f"{folder}: expected one CSV with a 'record,label' header, found {names or 'none'}")
    refs = []
    with open(tables[0], newline="", encoding="utf-8", errors="replace") as fh:
        rows = csv.DictReader(fh)
        rows.fieldnames = [c.strip().lower() for c in rows.fieldnames or []]
        for lineno, row in enumerate(rows, start=2):
            rec = (row.get("record") or "").strip().removesuffix(".hea")
            label = (row.get("label") or "").strip()
            if not rec:
                continue
            subject = (row.get("subject") or "").strip() or rec
            error = "" if label else f"{tables[0]} line {lineno}: empty label for record {rec!r}"
            refs.append(RecordRef(rec, folder / f"{rec}.hea", subject, label, error=error))
    return collect(folder, refs, spec)


def read_cinc2020(path, segment_length=None, fs=None, on_bad="error", spec=None) -> RawData:  # noqa: ANN001
    """CinC 2020/2021: every .hea under the folder, labels from ``# Dx: code,code``."""
    folder, spec = _folder(path), _spec_of(path, on_bad, spec)
    refs = [RecordRef(_rel(folder, h), h, h.stem, source="dx") for h in _headers(folder)]
    return collect(folder, refs, spec)


def cpsc_subject(record: str) -> str:
    """Subject of a rhythm record: "data_101_6" -> "P101" (CPSC 2021), else the record."""
    m = _CPSC_NAME.match(record)
    return f"P{int(m.group(1))}" if m else record


def read_wfdb_rhythm(path, segment_length=None, fs=None, on_bad="error", spec=None) -> RawData:  # noqa: ANN001
    """Long records labelled by ``.atr`` rhythm annotations (``aux_note`` "(AFIB", "(N", ...)."""
    folder, spec = _folder(path), _spec_of(path, on_bad, spec)
    refs = [RecordRef(_rel(folder, h), h, cpsc_subject(h.stem), source="rhythm") for h in _headers(folder)]
    return collect(folder, refs, spec)


def _ptbxl_statements(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        raise DataError(f"{path}: not found (PTB-XL superclass/subclass labels need scp_statements.csv)")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    head = [c.strip() for c in rows[0]]
    for col in ("diagnostic", "diagnostic_class", "diagnostic_subclass"):
        if col not in head:
            raise DataError(f"{path}: missing column {col!r}")
    return {r[0].strip(): dict(zip(head, (c.strip() for c in r), strict=False)) for r in rows[1:] if r}


def ptbxl_labels(scp_codes: dict[str, float], level: str, statements: dict[str, dict[str, str]]) -> list[str]:
    """Sorted labels of one PTB-XL record: its codes ("scp") or their diagnostic
    (sub)classes for the diagnostic statements among them."""
    if level == "scp":
        return sorted(scp_codes)
    column = "diagnostic_class" if level == "superclass" else "diagnostic_subclass"
    out = set()
    for code in scp_codes:
        st = statements.get(code)
        if st and st.get("diagnostic") not in ("", "0", "0.0", None) and st.get(column):
            out.add(st[column])
    return sorted(out)


def read_ptbxl(path, segment_length=None, fs=None, on_bad="error", spec=None) -> RawData:  # noqa: ANN001
    """PTB-XL: ``ptbxl_database.csv`` (scp_codes, patient_id, filename_lr/hr) and
    ``scp_statements.csv``; labels per ``spec.ptbxl_labels``, subject = patient.

    The 500 Hz records (filename_hr) are read unless target_fs <= 100, which reads the
    100 Hz ones (filename_lr); when the chosen file is absent the other one is used.
    """
    folder, spec = _folder(path), _spec_of(path, on_bad, spec)
    db = folder / "ptbxl_database.csv"
    statements = _ptbxl_statements(folder / "scp_statements.csv") if spec.ptbxl_labels != "scp" else {}
    order = ("filename_lr", "filename_hr") if spec.target_fs is not None and spec.target_fs <= 100 else (
        "filename_hr", "filename_lr")
    refs = []
    with open(db, newline="", encoding="utf-8") as fh:
        rows = csv.DictReader(fh)
        missing = {"patient_id", "scp_codes"} - set(rows.fieldnames or [])
        if missing or not set(order) & set(rows.fieldnames or []):
            raise DataError(f"{db}: missing column(s) {sorted(missing) or list(order)}")
        for lineno, row in enumerate(rows, start=2):
            files = [row.get(c, "").strip() for c in order if row.get(c, "").strip()]
            name = next((f for f in files if (folder / f"{f}.hea").is_file()), files[0] if files else "")
            error, label = "", ""
            try:
                codes = ast.literal_eval(row["scp_codes"])
                if not isinstance(codes, dict):
                    raise ValueError("not a dict")
                label = ",".join(ptbxl_labels(codes, spec.ptbxl_labels, statements))
                subject = f"P{int(float(row['patient_id']))}"
            except (ValueError, SyntaxError, TypeError) as exc:
                error = f"{db} line {lineno}: bad scp_codes/patient_id ({exc})"
                subject = f"row{lineno}"
            if not name:
                error = error or f"{db} line {lineno}: no record file name"
            refs.append(RecordRef(name or f"row{lineno}", folder / f"{name}.hea", subject, label, error=error))
    return collect(folder, refs, spec)


# After the IESD reader, which registers itself ahead of "ptbxl".
register_format("ptbxl", is_ptbxl, read_ptbxl, recursive=True)
register_format("cinc2017", is_cinc2017, read_cinc2017, recursive=True)
register_format("wfdb_csv", is_wfdb_csv, read_wfdb_csv, recursive=True)
register_format("wfdb_rhythm", is_wfdb_rhythm, read_wfdb_rhythm, recursive=True)
register_format("cinc2020", is_cinc2020, read_cinc2020, recursive=True)

"""The format registry: what every reader returns, which reader reads a path, cache identity.

Every reader returns a :class:`RawData`; the loader in :mod:`atml.data.cache` maps labels,
normalises and caches.  Formats register with :func:`register_format` when their module is
imported (``atml.data`` imports every built-in one); a reader whose signature has a ``spec``
parameter gets the whole DataSpec (leads, windows, resampling).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from atml.errors import DataError

__all__ = [
    "IESD_PATTERN_HELP",
    "MAX_PROBLEMS",
    "ON_BAD",
    "READERS",
    "RawData",
    "check_on_bad",
    "detect_format",
    "reader_takes_spec",
    "register_format",
    "shared_data_dir",
    "source_identity",
]

ON_BAD = ("error", "skip")
# Keep at most this many problem descriptions: the count is what matters, the first few
# tell the user what kind of damage it is.
MAX_PROBLEMS = 5
# Named in the detection error; the IESD reader uses it in its own messages too.
IESD_PATTERN_HELP = "S<subject>-<label>-<index>.txt or S<subject>-<index>.txt"


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
    repo = Path(__file__).resolve().parents[3]
    return (repo / ".." / "shared" / "data").resolve()


def check_on_bad(on_bad: str) -> None:
    """DataError unless ``on_bad`` is one of :data:`ON_BAD`."""
    if on_bad not in ON_BAD:
        raise DataError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")


# Ordered: the first detector that accepts the path wins.
_DETECTORS: list[tuple[str, Callable[[Path], bool]]] = []
# Formats whose source identity covers the whole folder tree, not only the top level.
_RECURSIVE_FORMATS: set[str] = set()
# Format name -> reader(path, segment_length, fs, on_bad) or reader(path, on_bad=, spec=).
# "synthetic" is handled by the loader because it takes generator settings instead of a path.
READERS: dict[str, Callable[..., RawData]] = {}


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

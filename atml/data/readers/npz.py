"""numpy ``.npz`` archives: signal, label, subject (optional gain and fs), read whole or streamed.

The streaming form (:class:`NpzStream`) exists because the full 50,000-segment IESD file
would otherwise need ~250 MB of float32 at once.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from atml.data.readers.registry import RawData, check_on_bad, register_format
from atml.errors import DataError

__all__ = ["NpzStream", "is_npz", "read_npz"]


def is_npz(path: Path) -> bool:
    """Whether ``path`` is an .npz file (format detection)."""
    return path.is_file() and path.suffix.lower() == ".npz"


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
    check_on_bad(on_bad)
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


register_format("npz", is_npz, read_npz)

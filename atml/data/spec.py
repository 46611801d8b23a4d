"""The data specification: what to load and how to turn it into model input.

:class:`DataSpec` is a frozen value object validated once; it also owns the cache key
(content fields plus the source identity).  The steps it describes live in
:mod:`atml.data.transforms` (signal), :mod:`atml.data.labels` and :mod:`atml.data.preprocess`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from atml.data.readers.registry import ON_BAD, detect_format, source_identity
from atml.errors import DataError

__all__ = [
    "FORMATS",
    "NORMALIZATIONS",
    "ON_BAD",
    "PREPROCESS_VERSION",
    "PTBXL_LABELS",
    "SIGNAL_FIELDS",
    "SPLIT_FIELDS",
    "SYNTHETIC_FIELDS",
    "TASKS",
    "WFDB_FORMATS",
    "WINDOW_MIXED",
    "DataSpec",
]

# Record formats (WFDB layouts, read by atml.data.readers.wfdb_layouts) carry their own sampling
# rate and lengths; segment formats (txt, npz, synthetic) use ``fs``/``segment_length``.
WFDB_FORMATS = ("ptbxl", "cinc2017", "wfdb_csv", "wfdb_rhythm", "cinc2020")
FORMATS = ("auto", "iesd_txt", "npz", "synthetic", *WFDB_FORMATS)
NORMALIZATIONS = ("zscore", "none")
WINDOW_MIXED = ("drop", "majority")
PTBXL_LABELS = ("superclass", "subclass", "scp")
TASKS = ("binary", "multiclass", "multilabel")
# Fields that only choose the split; they must not change what is cached.
SPLIT_FIELDS = frozenset({"val_fraction", "test_fraction", "test_path", "split_seed"})
SYNTHETIC_FIELDS = frozenset({"synthetic_subjects", "synthetic_per_subject", "synthetic_seed"})
# Fields that turn source segments/records into the model's input: written to an exported
# model's sidecar (DataSpec.signal_settings) and read back by atml evaluate.
SIGNAL_FIELDS = ("segment_length", "fs", "target_fs", "window", "stride", "pad_short", "window_mixed",
                 "rhythm_default", "leads", "bandpass", "normalize")
# Bump when preprocessing changes meaning, so old caches are not reused.
PREPROCESS_VERSION = 1


@dataclass(frozen=True)
class DataSpec:
    """What data to load and how to turn it into (x, y, subject); see docs of each field."""

    path: str | None = None  # None -> synthetic
    format: str = "auto"  # auto | iesd_txt | npz | synthetic | ptbxl | cinc2017 | wfdb_csv | wfdb_rhythm | cinc2020
    positive: tuple[str, ...] = ("AFIB",)  # labels mapped to class 1; all others -> class 0
    classes: tuple[str, ...] = ("non-AFIB", "AFIB")  # class names, index = class id
    drop_labels: tuple[str, ...] = ()  # labels removed before mapping (e.g. "UNK")
    label_map: dict[str, int] | None = None  # explicit label -> class id (overrides positive)
    segment_length: int = 1250  # samples per stored segment (txt/npz/synthetic; WFDB headers carry theirs)
    fs: int = 250  # source rate of txt/npz/synthetic (WFDB headers carry theirs); see target_fs
    normalize: str = "zscore"  # zscore (per segment, per lead) | none
    val_fraction: float = 0.2  # fraction of SUBJECTS
    test_fraction: float = 0.0  # fraction of SUBJECTS held out, never used for selection
    test_path: str | None = None  # separate test data; if given, test_fraction is ignored
    split_seed: int = 0
    on_bad: str = "error"  # error | skip
    max_segments: int | None = None  # subject-stratified seeded cap (source segments; WFDB: windows)
    synthetic_subjects: int = 24
    synthetic_per_subject: int = 40
    synthetic_seed: int = 0
    # Signal preprocessing (all formats; the defaults change nothing).  Order per record:
    # leads -> resample -> band-pass -> windows -> normalize (per window and lead).
    target_fs: int | None = None  # resample to this rate (Hz, resample_poly); None keeps the source rate
    window: float | None = None  # window length in seconds; None: one item per record/segment
    stride: float | None = None  # window stride in seconds; None: = window (no overlap)
    pad_short: bool = False  # zero-pad records shorter than one window instead of dropping them
    window_mixed: str = "drop"  # window over a rhythm change: drop | majority
    rhythm_default: str | None = "N"  # rhythm before the first .atr rhythm annotation; None: unknown
    leads: tuple[str, ...] | None = None  # lead names to keep, in this order; None / "all": every lead
    bandpass: tuple[float | None, float | None] | None = None  # (low, high) Hz, zero-phase Butterworth
    # Labels beyond binary: len(classes) > 2 maps labels to classes by name (or label_map);
    # multilabel gives y (N, C) 0/1 over ``classes`` from comma-separated record labels.
    multilabel: bool = False
    strict_labels: bool = False  # multilabel: a label outside classes/label_map is a bad item
    drop_empty: bool = False  # multilabel: drop items with no class (e.g. PTB-XL without superclass)
    ptbxl_labels: str = "superclass"  # PTB-XL label level: superclass | subclass | scp

    def __post_init__(self) -> None:
        # Accept lists from JSON/CLI callers but store tuples so the spec stays immutable.
        for name in ("positive", "classes", "drop_labels"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, tuple(str(v) for v in value))
        if self.path is not None:
            object.__setattr__(self, "path", str(self.path))
        if self.test_path is not None:
            object.__setattr__(self, "test_path", str(self.test_path))
        if self.label_map is not None:
            object.__setattr__(self, "label_map", {str(k): v for k, v in dict(self.label_map).items()})
        self._coerce()
        self._validate()
        if self.label_map is not None:  # numpy ints would break JSON (cache key, hash)
            object.__setattr__(self, "label_map", {k: int(v) for k, v in self.label_map.items()})
        if self.max_segments is not None:
            object.__setattr__(self, "max_segments", int(self.max_segments))

    def _coerce(self) -> None:
        """Accept YAML/JSON shapes for the preprocessing fields; store immutable tuples."""
        leads = self.leads
        if isinstance(leads, str):
            leads = None if leads.strip().lower() == "all" else (leads,)
        elif leads is not None:
            leads = tuple(str(v) for v in leads)
            if len(leads) == 1 and leads[0].strip().lower() == "all":
                leads = None
        object.__setattr__(self, "leads", leads)
        if self.bandpass is not None:
            band = self.bandpass
            if isinstance(band, dict):
                band = (band.get("low"), band.get("high"))
            if isinstance(band, (str, bytes)) or not hasattr(band, "__len__") or len(band) != 2:
                raise DataError(f"DataSpec.bandpass = {self.bandpass!r}: must be [low, high] in Hz or null")
            try:
                band = tuple(None if v is None else float(v) for v in band)
            except (TypeError, ValueError):
                raise DataError(f"DataSpec.bandpass = {self.bandpass!r}: low/high must be numbers or null") from None
            object.__setattr__(self, "bandpass", band)
        for name in ("window", "stride"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool) and isinstance(value, (int, float, np.number)):
                object.__setattr__(self, name, float(value))

    def _validate(self) -> None:
        def bad(field: str, value: object, rule: str) -> DataError:
            return DataError(f"DataSpec.{field} = {value!r}: {rule}")

        if self.format not in FORMATS:
            raise bad("format", self.format, f"must be one of {', '.join(FORMATS)}")
        if self.normalize not in NORMALIZATIONS:
            raise bad("normalize", self.normalize, f"must be one of {', '.join(NORMALIZATIONS)}")
        if self.on_bad not in ON_BAD:
            raise bad("on_bad", self.on_bad, f"must be one of {', '.join(ON_BAD)}")
        if len(self.classes) < (1 if self.multilabel else 2):
            raise bad("classes", self.classes, "needs at least two class names")
        if len(set(self.classes)) != len(self.classes):
            raise bad("classes", self.classes, "class names must be unique")
        if self.label_map is not None:
            for label, cid in self.label_map.items():
                if isinstance(cid, bool) or not isinstance(cid, (int, np.integer)):
                    raise bad("label_map", {label: cid}, "class ids must be integers")
                if not 0 <= cid < len(self.classes):
                    raise bad("label_map", {label: cid}, f"class id outside 0..{len(self.classes) - 1}")
        for name in ("segment_length", "fs", "synthetic_subjects", "synthetic_per_subject"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise bad(name, value, "must be a positive integer")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= float(value) < 1.0:
                raise bad(name, value, "must be in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise bad(
                "val_fraction + test_fraction",
                self.val_fraction + self.test_fraction,
                "must be below 1 (some subjects must remain for training)",
            )
        if self.max_segments is not None and (
            isinstance(self.max_segments, bool) or int(self.max_segments) < 1
        ):
            raise bad("max_segments", self.max_segments, "must be a positive integer or None")
        if self.format == "synthetic" and self.path is not None:
            raise bad("path", self.path, "must be None for format 'synthetic'")
        self._validate_preprocessing(bad)

    def _validate_preprocessing(self, bad) -> None:  # noqa: ANN001 - the error factory above
        if self.target_fs is not None and (
            isinstance(self.target_fs, bool) or not isinstance(self.target_fs, (int, np.integer)) or self.target_fs < 1
        ):
            raise bad("target_fs", self.target_fs, "must be a positive integer (Hz) or None")
        for name in ("window", "stride"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, float) or not np.isfinite(value) or value <= 0):
                raise bad(name, value, "must be a positive number of seconds or None")
        if self.stride is not None and self.window is None:
            raise bad("stride", self.stride, "needs window (seconds) to be set")
        if self.window_mixed not in WINDOW_MIXED:
            raise bad("window_mixed", self.window_mixed, f"must be one of {', '.join(WINDOW_MIXED)}")
        if self.ptbxl_labels not in PTBXL_LABELS:
            raise bad("ptbxl_labels", self.ptbxl_labels, f"must be one of {', '.join(PTBXL_LABELS)}")
        if self.rhythm_default is not None and not isinstance(self.rhythm_default, str):
            raise bad("rhythm_default", self.rhythm_default, "must be a rhythm label (e.g. 'N') or None")
        for name in ("pad_short", "multilabel", "strict_labels", "drop_empty"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, getattr(self, name), "must be true or false")
        if self.leads is not None:
            if not self.leads or any(not v.strip() for v in self.leads):
                raise bad("leads", self.leads, "must be lead names (e.g. ['II']) or 'all'")
            if len({v.strip().lower() for v in self.leads}) != len(self.leads):
                raise bad("leads", self.leads, "lead names must be unique")
        if self.bandpass is not None:
            low, high = self.bandpass
            if low is None and high is None:
                raise bad("bandpass", list(self.bandpass), "needs low and/or high (Hz), or null for no filter")
            if any(v is not None and (not np.isfinite(v) or v <= 0) for v in self.bandpass):
                raise bad("bandpass", list(self.bandpass), "cut-offs must be positive numbers (Hz)")
            if low is not None and high is not None and low >= high:
                raise bad("bandpass", list(self.bandpass), "low must be < high")
            if high is not None and self.target_fs is not None and high >= self.target_fs / 2:
                raise bad("bandpass", list(self.bandpass), f"high must be below target_fs / 2 = {self.target_fs / 2:g} Hz")

    @property
    def task(self) -> str:
        """"binary" | "multiclass" | "multilabel": picks the loss and metrics in training."""
        if self.multilabel:
            return "multilabel"
        return "binary" if len(self.classes) == 2 else "multiclass"

    def class_lookup(self) -> dict[str, int] | None:
        """Label -> class id: label_map, else class names for multiclass/multilabel, else None.

        None means the binary rule: labels in ``positive`` are class 1, the rest class 0.
        """
        if self.label_map is not None:
            return dict(self.label_map)
        if self.multilabel or len(self.classes) > 2:
            return {c: i for i, c in enumerate(self.classes)}
        return None

    def __hash__(self) -> int:
        # label_map is a dict (callers index it), so hash its sorted items instead.
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of all fields (tuples as lists)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        if self.label_map is not None:
            out["label_map"] = dict(sorted(self.label_map.items()))
        return out

    def signal_settings(self) -> dict[str, Any]:
        """The SIGNAL_FIELDS of :meth:`to_dict`: how the model input is made (``segment_length``
        and ``fs`` describe the source segments of txt/npz/synthetic data)."""
        d = self.to_dict()
        return {k: d[k] for k in SIGNAL_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSpec:
        """Inverse of :meth:`to_dict`; unknown keys are a DataError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(f"DataSpec: unknown field(s) {unknown} (known: {sorted(known)})")
        return cls(**data)

    def resolved_format(self) -> str:
        """The concrete format: ``format`` unless it is "auto", then detected from path."""
        if self.format != "auto":
            return self.format
        return detect_format(self.path)

    def cache_key(self) -> str:
        """Deterministic key of everything that determines the cached arrays.

        Depends on the content-relevant fields and on the source identity (path, size and
        mtime of the file, or the folder listing), never on split fields.
        """
        fmt = self.resolved_format()
        content = {
            k: v
            for k, v in self.to_dict().items()
            if k not in SPLIT_FIELDS
            and k not in ("path", "format")
            and (fmt == "synthetic" or k not in SYNTHETIC_FIELDS)
            and not (k in _DEFAULT_OMITTED and v == _DEFAULT_OMITTED[k])
        }
        ident: dict[str, Any] = {"format": fmt}
        if fmt != "synthetic":
            if self.path is None:
                raise DataError(f"DataSpec.path is None but format is {fmt!r}")
            ident = source_identity(self.path, fmt)
        blob = json.dumps(
            {"v": PREPROCESS_VERSION, "spec": content, "source": ident},
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


# Fields added after caches existed: left out of the cache key while at their defaults, so
# every cache built before them keeps its key (their defaults change nothing).
_DEFAULT_OMITTED: dict[str, Any] = {
    f.name: (list(f.default) if isinstance(f.default, tuple) else f.default)
    for f in fields(DataSpec)
    if f.name
    in {
        "target_fs", "window", "stride", "pad_short", "window_mixed", "rhythm_default", "leads",
        "bandpass", "multilabel", "strict_labels", "drop_empty", "ptbxl_labels",
    }
}

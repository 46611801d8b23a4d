"""Data specification and the preprocessing steps applied before caching.

The steps are pure functions on arrays so the in-memory path (text folders, synthetic) and
the streaming path (large npz) share them exactly.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from atml.errors import DataError

log = logging.getLogger(__name__)

FORMATS = ("auto", "iesd_txt", "npz", "synthetic")
NORMALIZATIONS = ("zscore", "none")
ON_BAD = ("error", "skip")
# Fields that only choose the split; they must not change what is cached.
SPLIT_FIELDS = frozenset({"val_fraction", "test_fraction", "test_path", "split_seed"})
SYNTHETIC_FIELDS = frozenset({"synthetic_subjects", "synthetic_per_subject", "synthetic_seed"})
# Bump when preprocessing changes meaning, so old caches are not reused.
PREPROCESS_VERSION = 1
# Seed of the max_segments subsample: fixed (not split_seed) because the subsample is cached
# and the cache key deliberately ignores split fields.
SUBSAMPLE_SEED = 0


@dataclass(frozen=True)
class DataSpec:
    """What data to load and how to turn it into (x, y, subject); see docs of each field."""

    path: str | None = None  # None -> synthetic
    format: str = "auto"  # auto | iesd_txt | npz | synthetic
    positive: tuple[str, ...] = ("AFIB",)  # labels mapped to class 1; all others -> class 0
    classes: tuple[str, ...] = ("non-AFIB", "AFIB")  # class names, index = class id
    drop_labels: tuple[str, ...] = ()  # labels removed before mapping (e.g. "UNK")
    label_map: dict[str, int] | None = None  # explicit label -> class id (overrides positive)
    segment_length: int = 1250
    fs: int = 250
    normalize: str = "zscore"  # zscore (per segment, per lead) | none
    val_fraction: float = 0.2  # fraction of SUBJECTS
    test_fraction: float = 0.0  # fraction of SUBJECTS held out, never used for selection
    test_path: str | None = None  # separate test data; if given, test_fraction is ignored
    split_seed: int = 0
    on_bad: str = "error"  # error | skip
    max_segments: int | None = None  # subject-stratified seeded cap for quick runs
    synthetic_subjects: int = 24
    synthetic_per_subject: int = 40
    synthetic_seed: int = 0

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
        self._validate()
        if self.label_map is not None:  # numpy ints would break JSON (cache key, hash)
            object.__setattr__(self, "label_map", {k: int(v) for k, v in self.label_map.items()})
        if self.max_segments is not None:
            object.__setattr__(self, "max_segments", int(self.max_segments))

    def _validate(self) -> None:
        def bad(field: str, value: object, rule: str) -> DataError:
            return DataError(f"DataSpec.{field} = {value!r}: {rule}")

        if self.format not in FORMATS:
            raise bad("format", self.format, f"must be one of {', '.join(FORMATS)}")
        if self.normalize not in NORMALIZATIONS:
            raise bad("normalize", self.normalize, f"must be one of {', '.join(NORMALIZATIONS)}")
        if self.on_bad not in ON_BAD:
            raise bad("on_bad", self.on_bad, f"must be one of {', '.join(ON_BAD)}")
        if len(self.classes) < 2:
            raise bad("classes", self.classes, "needs at least two class names")
        if len(set(self.classes)) != len(self.classes):
            raise bad("classes", self.classes, "class names must be unique")
        if self.label_map is not None:
            for label, cid in self.label_map.items():
                if isinstance(cid, bool) or not isinstance(cid, (int, np.integer)):
                    raise bad("label_map", {label: cid}, "class ids must be integers")
                if not 0 <= cid < len(self.classes):
                    raise bad("label_map", {label: cid}, f"class id outside 0..{len(self.classes) - 1}")
        elif len(self.classes) != 2:
            raise bad("classes", self.classes, "needs exactly 2 names unless label_map is given")
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
        from atml.data.readers import detect_format  # local: readers imports nothing of ours

        if self.format != "auto":
            return self.format
        return detect_format(self.path)

    def cache_key(self) -> str:
        """Deterministic key of everything that determines the cached arrays.

        Depends on the content-relevant fields and on the source identity (path, size and
        mtime of the file, or the folder listing), never on split fields.
        """
        from atml.data.readers import source_identity

        fmt = self.resolved_format()
        content = {
            k: v
            for k, v in self.to_dict().items()
            if k not in SPLIT_FIELDS
            and k not in ("path", "format")
            and (fmt == "synthetic" or k not in SYNTHETIC_FIELDS)
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


@dataclass(frozen=True)
class LabelResult:
    """Outcome of label mapping: keep mask over the input, class ids of kept items."""

    keep: np.ndarray  # bool (N,)
    y: np.ndarray  # int64 (keep.sum(),)
    dropped: int  # removed on purpose (drop_labels)
    unmapped: int  # outside label_map and skipped (on_bad="skip")
    unmapped_example: str = ""


def map_labels(labels: np.ndarray, spec: DataSpec, name_of=None) -> LabelResult:  # noqa: ANN001
    """Map text labels to class ids following ``spec``; ``name_of(i)`` names item i in errors."""
    labels = np.asarray(labels).astype(str)
    keep = ~np.isin(labels, list(spec.drop_labels)) if spec.drop_labels else np.ones(len(labels), bool)
    dropped = int((~keep).sum())
    unmapped = 0
    example = ""
    if spec.label_map is not None:
        known = np.isin(labels, list(spec.label_map))
        outside = keep & ~known
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            where = name_of(i) if name_of else f"item {i}"
            values = sorted(set(labels[outside].tolist()))
            example = (
                f"{where}: label outside the mapping: {str(labels[i])!r} "
                f"(labels {values[:10]} not in label_map {sorted(spec.label_map)})"
            )
            if spec.on_bad == "error":
                raise DataError(example)
            unmapped = int(outside.sum())
            keep &= known
        lut = dict(spec.label_map)
        y = np.array([lut[v] for v in labels[keep]], dtype=np.int64)
    else:
        y = np.isin(labels[keep], list(spec.positive)).astype(np.int64)
    return LabelResult(keep=keep, y=y, dropped=dropped, unmapped=unmapped, unmapped_example=example)


def subsample(subjects: np.ndarray, max_segments: int | None, seed: int = SUBSAMPLE_SEED) -> np.ndarray:
    """Sorted indices of at most ``max_segments`` items, each subject keeping its share.

    Per-subject quotas follow the largest-remainder rule so every subject with data stays
    represented when possible; items inside a subject are drawn at random (seeded).
    """
    n = len(subjects)
    if max_segments is None or max_segments >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    uniq, inverse, counts = np.unique(subjects, return_inverse=True, return_counts=True)
    exact = counts * (max_segments / n)
    quota = np.floor(exact).astype(np.int64)
    rest = max_segments - int(quota.sum())
    if rest > 0:
        order = np.lexsort((rng.random(len(uniq)), -(exact - quota)))
        quota[order[:rest]] += 1
    chosen = []
    for k in range(len(uniq)):
        members = np.flatnonzero(inverse == k)
        if quota[k]:
            chosen.append(rng.choice(members, size=int(quota[k]), replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def normalize(x: np.ndarray, method: str) -> np.ndarray:
    """Normalise float32 (N, leads, samples) in place per segment and lead; returns x.

    Flat leads (std ~ 0, e.g. a disconnected electrode) are only centred, never divided,
    so they stay zeros instead of becoming NaN.
    """
    if method == "none":
        return x
    if method != "zscore":
        raise DataError(f"normalize = {method!r}: must be one of {', '.join(NORMALIZATIONS)}")
    mean = x.mean(axis=-1, keepdims=True, dtype=np.float64)
    std = x.std(axis=-1, keepdims=True, dtype=np.float64)
    std[std < 1e-8] = 1.0
    x -= mean.astype(np.float32)
    x /= std.astype(np.float32)
    return x

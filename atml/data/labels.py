"""Label mapping: text labels -> class ids (binary, multiclass) or 0/1 rows (multilabel)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from atml.data.spec import DataSpec
from atml.errors import DataError

__all__ = ["LabelResult", "map_labels", "split_multilabel"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelResult:
    """Outcome of label mapping: keep mask over the input, class ids of kept items.

    y is int64 (kept,) for binary/multiclass and float32 (kept, C) 0/1 for multilabel.
    """

    keep: np.ndarray  # bool (N,)
    y: np.ndarray
    dropped: int  # removed on purpose (drop_labels, drop_empty)
    unmapped: int  # outside label_map and skipped (on_bad="skip")
    unmapped_example: str = ""


def map_labels(labels: np.ndarray, spec: DataSpec, name_of: Callable[[int], str] | None = None) -> LabelResult:
    """Map text labels to class ids following ``spec``; ``name_of(i)`` names item i in errors."""
    labels = np.asarray(labels).astype(str)
    if spec.multilabel:
        return _map_multilabel(labels, spec, name_of)
    keep = ~np.isin(labels, list(spec.drop_labels)) if spec.drop_labels else np.ones(len(labels), bool)
    dropped = int((~keep).sum())
    unmapped = 0
    example = ""
    lut = spec.class_lookup()
    if lut is not None:
        known = np.isin(labels, list(lut))
        outside = keep & ~known
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            where = name_of(i) if name_of else f"item {i}"
            values = sorted(set(labels[outside].tolist()))
            mapping = "label_map" if spec.label_map is not None else "classes"
            example = (
                f"{where}: label outside the mapping: {str(labels[i])!r} "
                f"(labels {values[:10]} not in {mapping} {sorted(lut)})"
            )
            if spec.on_bad == "error":
                raise DataError(example)
            unmapped = int(outside.sum())
            keep &= known
        y = np.array([lut[v] for v in labels[keep]], dtype=np.int64)
    else:
        y = np.isin(labels[keep], list(spec.positive)).astype(np.int64)
    return LabelResult(keep=keep, y=y, dropped=dropped, unmapped=unmapped, unmapped_example=example)


def split_multilabel(text: str) -> list[str]:
    """Labels of one multi-label item: "164934002, 426783006" -> ["164934002", "426783006"]."""
    return [t.strip() for t in text.split(",") if t.strip()]


def _map_multilabel(labels: np.ndarray, spec: DataSpec, name_of: Callable[[int], str] | None) -> LabelResult:
    """Comma-separated labels per item -> (N, C) 0/1 rows over ``spec.classes``.

    Labels outside the classes (or label_map) are ignored, as in the CinC scoring, unless
    ``strict_labels`` makes them bad items.  Items carrying a ``drop_labels`` label are
    removed; with ``drop_empty`` so are items with no class at all.
    """
    lut = spec.class_lookup() or {}
    drop = set(spec.drop_labels)
    n_classes = len(spec.classes)
    uniq, inverse = np.unique(labels, return_inverse=True)  # windows repeat record labels
    rows = np.zeros((len(uniq), n_classes), dtype=np.float32)
    status = np.zeros(len(uniq), dtype=np.int8)  # 0 keep, 1 drop, 2 unknown label
    ignored: set[str] = set()
    unknown_of: dict[int, list[str]] = {}
    for u, text in enumerate(uniq.tolist()):
        codes = split_multilabel(text)
        if drop.intersection(codes):
            status[u] = 1
            continue
        unknown = [c for c in codes if c not in lut]
        if unknown:
            if spec.strict_labels:
                status[u] = 2
                unknown_of[u] = unknown
                continue
            ignored.update(unknown)
        for c in codes:
            if c in lut:
                rows[u, lut[c]] = 1.0
        if spec.drop_empty and not rows[u].any():
            status[u] = 1
    item_status = status[inverse]
    example = ""
    unmapped = int((item_status == 2).sum())
    if unmapped:
        i = int(np.flatnonzero(item_status == 2)[0])
        where = name_of(i) if name_of else f"item {i}"
        mapping = "label_map" if spec.label_map is not None else "classes"
        example = (
            f"{where}: label(s) outside the mapping: {unknown_of[int(inverse[i])][:10]} "
            f"(strict_labels: every label must be in {mapping})"
        )
        if spec.on_bad == "error":
            raise DataError(example)
    if ignored:
        log.info("ignored %d label(s) not among the classes, e.g. %s", len(ignored), sorted(ignored)[:10])
    keep = item_status == 0
    return LabelResult(
        keep=keep,
        y=rows[inverse[keep]],
        dropped=int((item_status == 1).sum()),
        unmapped=unmapped,
        unmapped_example=example,
    )

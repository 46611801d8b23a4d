"""Rules of the ``validation`` section; its defaults are :class:`ValidationSettings`'."""

from __future__ import annotations

from typing import Any

from atml.config.schema import ValidationSettings, field_defaults
from atml.config.validator import Validator

__all__ = ["SCHEMES", "validation_settings"]

SCHEMES = ("holdout", "subject_kfold")
_TYPES: dict[str, type] = {"scheme": str, "folds": int, "repeats": int, "seed": int, "inner_fraction": float,
                           "confidence": float}


def validation_settings(v: Validator, d: Any) -> ValidationSettings:
    """The ``validation`` section. Whether there are enough subjects for the folds is
    checked with the data (``atml search`` does it before the study exists)."""
    v.keys("validation", d, set(_TYPES))
    defaults = field_defaults(ValidationSettings)
    vals = {k: v.typed(f"validation.{k}", d.get(k, defaults[k]), typ) for k, typ in _TYPES.items()}
    if vals["scheme"] not in SCHEMES:
        v.fail("validation.scheme", f"must be one of {', '.join(SCHEMES)} (got {vals['scheme']!r})")
    if vals["folds"] < 2:
        v.fail("validation.folds", f"must be at least 2 (got {vals['folds']})")
    if vals["repeats"] < 1:
        v.fail("validation.repeats", f"must be at least 1 (got {vals['repeats']})")
    inner = vals["inner_fraction"]
    if inner is not None and not 0.0 <= inner <= 0.5:
        v.fail("validation.inner_fraction", f"must be in [0, 0.5] (got {inner})")
    if not 0.5 <= vals["confidence"] < 1.0:
        v.fail("validation.confidence", f"must be in [0.5, 1) (got {vals['confidence']})")
    return ValidationSettings(**vals)

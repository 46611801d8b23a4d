"""Hyperparameters of a model family: a frozen dataclass, validated once by :func:`validate`.

Each family declares its hyperparameters (with their defaults) as a subclass of
:class:`Hparams` and the rule of each one in ``RULES``; constructing an instance runs
:func:`validate`, so a model only ever sees checked, plain ``int``/``float``/``str`` values (not
numpy scalars, which would leak into layer shapes and the ONNX graph).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from numbers import Integral, Real
from typing import Any, ClassVar

from atml.errors import SpaceError

__all__ = ["Int", "Float", "Choice", "Rule", "COMMON_RULES", "GROWTH", "Hparams", "validate"]


def _bad(family: str, name: str, value: Any, rule: str) -> SpaceError:
    return SpaceError(f"invalid value for '{name}' in model family '{family}': {value!r} ({rule})")


@dataclass(frozen=True)
class Int:
    """An integer ``>= low`` (and ``<= high``); ``odd`` for kernel sizes.

    ``bool`` is rejected although it is an ``Integral``: ``width: true`` in a YAML file is
    a typo, not 1. Integral floats (``8.0``) are rejected too so a float range used by
    mistake for an int parameter is caught early. Odd kernels are what make ``padding =
    k // 2`` keep 'same' lengths, so residual additions line up for every input length.
    """

    low: int
    high: int | None = None
    odd: bool = False

    def check(self, family: str, name: str, value: Any) -> int:
        """``value`` as ``int``, or SpaceError naming ``name``, ``family`` and the rule."""
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise _bad(family, name, value, "must be an integer")
        value = int(value)
        if value < self.low or (self.high is not None and value > self.high):
            rule = f"must be >= {self.low}" if self.high is None else f"must be in [{self.low}, {self.high}]"
            raise _bad(family, name, value, rule)
        if self.odd and value % 2 == 0:
            raise _bad(family, name, value, "must be odd")
        return value


@dataclass(frozen=True)
class Float:
    """A number in ``[low, high)`` (or ``[low, high]`` with ``high_inclusive``)."""

    low: float
    high: float
    high_inclusive: bool = False

    def check(self, family: str, name: str, value: Any) -> float:
        """``value`` as ``float``, or SpaceError naming ``name``, ``family`` and the rule."""
        if isinstance(value, bool) or not isinstance(value, Real):
            raise _bad(family, name, value, "must be a number")
        value = float(value)
        ok = self.low <= value <= self.high if self.high_inclusive else self.low <= value < self.high
        if not ok or math.isnan(value):
            bracket = "]" if self.high_inclusive else ")"
            raise _bad(family, name, value, f"must be in [{self.low}, {self.high}{bracket}")
        return value


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of names (a preset such as ``resnet18``)."""

    options: tuple[str, ...]

    def check(self, family: str, name: str, value: Any) -> str:
        """``value`` as ``str``, or SpaceError naming ``name``, ``family`` and the options."""
        if not isinstance(value, str) or value not in self.options:
            raise _bad(family, name, value, f"must be one of: {', '.join(self.options)}")
        return str(value)


Rule = Int | Float | Choice

# The rules of the hyperparameters every family has, in the order they are checked.
COMMON_RULES: Mapping[str, Rule] = {
    "in_channels": Int(low=1),
    "n_classes": Int(low=1),
    "width": Int(low=1),
    "depth": Int(low=1),
    "kernel_size": Int(low=3, odd=True),
    "dropout": Float(low=0.0, high=1.0),
    "stem_stride": Int(low=1),
}

# Channel multiplier per block or stage (afnet, resnet1d, sepnet).
GROWTH = Float(low=1.0, high=4.0, high_inclusive=True)


@dataclass(frozen=True, kw_only=True)
class Hparams:
    """Base of every family's hyperparameters: the two set from the data.

    A subclass sets ``FAMILY`` (the name errors report) and ``RULES`` (one rule per
    field, checked in the mapping's order), and declares its searchable fields with
    their defaults; construction validates them all.
    """

    FAMILY: ClassVar[str] = ""
    RULES: ClassVar[Mapping[str, Rule]] = COMMON_RULES

    in_channels: int
    n_classes: int

    def __post_init__(self) -> None:
        validate(self)

    def as_dict(self) -> dict[str, Any]:
        """Every field, in declaration order (``in_channels``, ``n_classes`` first)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def validate(hp: Hparams) -> None:
    """Check every field of ``hp`` against its rule and store it as a plain ``int``/``float``/``str``.

    Raises :class:`~atml.errors.SpaceError` for the first bad value (message names the
    parameter, the family, the value and the rule). Called once, by construction.
    """
    names = {f.name for f in fields(hp)}
    if names != set(hp.RULES):
        # A family declared a field without a rule (or the reverse): a programming error.
        raise TypeError(f"{type(hp).__name__}: fields and RULES differ: {sorted(names ^ set(hp.RULES))}")
    for name, rule in hp.RULES.items():
        # frozen: the coerced value is stored the way dataclasses' own __init__ does
        object.__setattr__(hp, name, rule.check(hp.FAMILY, name, getattr(hp, name)))

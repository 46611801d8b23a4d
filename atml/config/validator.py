"""The generic checks every section uses: mapping keys, value types, parameter mappings.

Each failure raises :class:`~atml.errors.SpaceError` as one line that names the source,
the field and the rule (``afib.yaml: train.lr: low must be < high (got low=0.1, high=0.01)``).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, NoReturn

from atml.config.schema import Param
from atml.errors import SpaceError

__all__ = ["Validator", "join"]


def join(a: str, b: str) -> str:
    """A field path: ``join("train", "lr")`` -> ``train.lr`` (``b`` alone when ``a`` is empty)."""
    return f"{a}.{b}" if a else b


class Validator:
    """Checks on one space file; ``source`` (its name) starts every message."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, msg: str) -> NoReturn:
        """Raise a SpaceError for the field ``where``."""
        loc = f"{self.source}: {where}: " if where else f"{self.source}: "
        raise SpaceError(loc + msg)

    def keys(self, where: str, d: Any, allowed: set[str], required: set[str] = frozenset()) -> None:
        """``d`` is a mapping whose keys are among ``allowed`` and include ``required``."""
        if not isinstance(d, dict):
            self.fail(where, f"expected a mapping, got {type(d).__name__} {d!r}")
        for k in d:
            if k not in allowed:
                self.fail(join(where, str(k)), f"unknown key (allowed: {', '.join(sorted(allowed))})")
        for k in sorted(required):
            if k not in d:
                self.fail(join(where, k), "missing required key")

    def typed(self, where: str, value: Any, typ: type) -> Any:
        """``value`` as a ``typ`` (an int is a float; None stays None), or fail."""
        if value is None:
            return None
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if typ is float and isinstance(value, str):
            try:  # YAML 1.1 reads 1e-3 (no dot) as a string
                return float(value)
            except ValueError:
                pass
        if typ in (int, float) and isinstance(value, bool) or not isinstance(value, typ):
            self.fail(where, f"expected {typ.__name__}, got {type(value).__name__} {value!r}")
        if typ is float and not math.isfinite(value):
            self.fail(where, f"expected a finite number, got {value!r}")
        return value

    def param(self, where: str, spec: Any, typ: type, name: str) -> Param | Any:
        """A fixed value (returned as is) or a parameter mapping (returned as Param);
        ``typ`` ``object`` takes values of any type."""
        if not isinstance(spec, dict):
            if isinstance(spec, list):
                self.fail(where, "a list is not a parameter; use {type: categorical, choices: [...]}")
            return self.typed(where, spec, typ) if typ is not object else spec
        self.keys(where, spec, {"type", "low", "high", "log", "step", "choices"}, required={"type"})
        kind = spec["type"]
        if kind not in ("float", "int", "categorical"):
            self.fail(join(where, "type"), f"must be float, int or categorical (got {kind!r})")
        if kind == "categorical":
            self.keys(where, spec, {"type", "choices"}, required={"choices"})
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                self.fail(join(where, "choices"), f"must be a non-empty list (got {choices!r})")
            if typ is not object:
                choices = [self.typed(f"{join(where, 'choices')}[{i}]", c, typ) for i, c in enumerate(choices)]
            if len(set(map(repr, choices))) != len(choices):
                self.fail(join(where, "choices"), f"duplicate choices {choices!r}")
            return Param(name, "categorical", choices=tuple(choices))
        self.keys(where, spec, {"type", "low", "high", "log", "step"}, required={"low", "high"})
        if typ is not object and typ is not float and typ is not int:
            self.fail(where, f"a {typ.__name__} cannot be a {kind} range; use categorical")
        if typ is int and kind == "float":
            self.fail(join(where, "type"), "must be int for an integer setting (got float)")
        num = float if kind == "float" else int
        low = self.typed(join(where, "low"), spec["low"], num)
        high = self.typed(join(where, "high"), spec["high"], num)
        log = self.typed(join(where, "log"), spec.get("log", False), bool)
        step = self.typed(join(where, "step"), spec.get("step"), num)
        if not low < high:
            self.fail(where, f"low must be < high (got low={low}, high={high})")
        if log and low <= 0:
            self.fail(where, f"log range needs low > 0 (got low={low})")
        if log and step is not None:
            self.fail(where, "log and step cannot be combined")
        if step is not None and step <= 0:
            self.fail(join(where, "step"), f"must be > 0 (got {step})")
        return Param(name, kind, low=low, high=high, log=log, step=step)

    def kwargs(self, where: str, d: dict[str, Any], cls: Any) -> None:
        """Every key of ``d`` but ``type`` is a scalar keyword argument of ``cls``."""
        sig = inspect.signature(cls.__init__)
        allowed = {n for n in sig.parameters if n != "self"}
        for k, val in d.items():
            if k == "type":
                continue
            if k not in allowed:
                self.fail(join(where, k), f"unknown setting for {d['type']} (allowed: {', '.join(sorted(allowed))})")
            if isinstance(val, (dict, list)):
                self.fail(join(where, k), f"expected a scalar, got {val!r}")

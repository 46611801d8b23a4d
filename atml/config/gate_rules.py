"""Rules of the ``gate`` section; its defaults are :class:`GateSettings`'."""

from __future__ import annotations

from typing import Any

from atml.config.schema import GateSettings, field_defaults
from atml.config.study_rules import INT8_METRICS, METRICS
from atml.config.validator import Validator

__all__ = ["gate_settings"]

# YAML key -> type; ``pass`` is the field ``pass_`` (a Python keyword).
_TYPES: dict[str, type] = {
    "metrics": list, "pass": float, "avoid_below": float, "keep": int, "stop_at": float,
    "patience_trials": int, "max_onnx_kb": float, "radius": float,
}

# Scores in [0, 1] the gate's lo/hi are taken over: every validation metric but the loss,
# of the trained model or of its int8 export (int8_f1, ...: measured only when named).
_GATE_METRICS = (*(m for m in METRICS if m != "val_loss"), *INT8_METRICS)


def _defaults() -> dict[str, Any]:
    out = {k.rstrip("_"): v for k, v in field_defaults(GateSettings).items()}
    out["metrics"] = list(out["metrics"])
    return out


def gate_settings(v: Validator, d: Any) -> GateSettings:
    """The ``gate`` section."""
    v.keys("gate", d, set(_TYPES))
    defaults = _defaults()
    vals = {k: v.typed(f"gate.{k}", d.get(k, defaults[k]), typ) for k, typ in _TYPES.items()}
    for m in vals["metrics"]:
        if m not in _GATE_METRICS:
            v.fail("gate.metrics", f"unknown metric {m!r} (allowed: {', '.join(_GATE_METRICS)})")
    for k in ("pass", "avoid_below", "stop_at", "radius"):
        if vals[k] is not None and not 0.0 <= vals[k] <= 1.0:
            v.fail(f"gate.{k}", f"must be in [0, 1] (got {vals[k]})")
    for k in ("keep", "patience_trials"):
        if vals[k] is not None and vals[k] < 1:
            v.fail(f"gate.{k}", f"must be >= 1 (got {vals[k]})")
    if vals["max_onnx_kb"] is not None and vals["max_onnx_kb"] <= 0:
        v.fail("gate.max_onnx_kb", f"must be > 0 (got {vals['max_onnx_kb']})")
    vals["pass_"] = vals.pop("pass")
    vals["metrics"] = tuple(vals["metrics"])
    return GateSettings(**vals)

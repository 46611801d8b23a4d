"""The shared avoid list: parameter points that failed, and their neighbourhoods.

The list lives in the study storage, one study user attribute per entry
(:data:`atml.records.AVOID_PREFIX` + trial number; a null value is a removed entry), so
every worker on every machine sees it and two workers never race on one value. A newly
sampled point inside an entry's neighbourhood is not trained: numeric parameters match
within ``radius`` x their range (log space for log parameters), categorical ones must be
equal.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from atml import records
from atml.config import Param

__all__ = ["DEFAULT_RADIUS", "AvoidEntry", "param_radius", "matches", "find_match",
           "avoid_entries", "add_avoid", "clear_avoid"]

DEFAULT_RADIUS = 0.02  # continuous parameters: 2 % of the range (log range for log ones)


@dataclass(frozen=True)
class AvoidEntry:
    """One avoided point: the trial that failed, its parameters, why, and its gate metrics."""

    trial: int
    params: dict[str, Any]
    reason: str
    metrics: dict[str, float] | None = None

    def to_json(self) -> str:
        return json.dumps({"trial": self.trial, "params": self.params, "reason": self.reason,
                           "metrics": self.metrics}, sort_keys=True)


def param_radius(p: Param, radius: float | None) -> float:
    """Neighbourhood half-width as a fraction of ``p``'s range.

    Without an explicit radius a stepped parameter gets two steps (ATML skipped learning
    rates within two steps of an avoided one) and a continuous one 2 % of its range.
    """
    if radius is not None:
        return radius
    if p.kind == "categorical":
        return 0.0
    step = p.step if p.step is not None else (1 if p.kind == "int" and not p.log else None)
    if step is not None and p.high > p.low:
        return 2 * step / (p.high - p.low)
    return DEFAULT_RADIUS


def _scaled(p: Param, v: float) -> float:
    if p.log:
        return (math.log(v) - math.log(p.low)) / (math.log(p.high) - math.log(p.low))
    return (v - p.low) / (p.high - p.low)


def matches(point: dict[str, Any], entry: AvoidEntry, params: dict[str, Param], radius: float | None) -> bool:
    """Whether ``point`` lies inside ``entry``'s neighbourhood (every entry parameter near)."""
    if not entry.params:
        return False
    for name, ev in entry.params.items():
        if name not in point:
            return False
        pv = point[name]
        p = params.get(name)
        if p is None or p.kind == "categorical" or isinstance(pv, (str, bool)) or isinstance(ev, (str, bool)):
            if pv != ev:
                return False
            continue
        r = param_radius(p, radius)
        # a hair of tolerance: "two steps" must include the point exactly two steps away
        if abs(_scaled(p, float(pv)) - _scaled(p, float(ev))) > r + 1e-9:
            return False
    return True


def find_match(point: dict[str, Any], entries: list[AvoidEntry], params: dict[str, Param],
               radius: float | None) -> AvoidEntry | None:
    """The first entry whose neighbourhood holds ``point``, or None."""
    for e in entries:
        if matches(point, e, params, radius):
            return e
    return None


def avoid_entries(user_attrs: dict[str, Any]) -> list[AvoidEntry]:
    """Avoid-list entries from a study's user attributes, by trial (cleared ones left out).

    An entry without a trial number or a parameter dict (written by hand, or by another
    version) is left out: it could not match a point.
    """
    out = []
    for _, d in records.avoid_records(user_attrs):
        trial, params = d.get("trial"), d.get("params")
        if isinstance(trial, int) and not isinstance(trial, bool) and isinstance(params, dict):
            out.append(AvoidEntry(trial=trial, params=params, reason=str(d.get("reason", "")),
                                  metrics=d.get("metrics")))
    return sorted(out, key=lambda e: e.trial)


def add_avoid(study: Any, entry: AvoidEntry) -> None:
    """Put ``entry`` on ``study``'s shared avoid list (one attribute per entry: no races)."""
    study.set_user_attr(f"{records.AVOID_PREFIX}{entry.trial}", entry.to_json())


def clear_avoid(study: Any) -> int:
    """Clear the avoid list; returns how many entries were removed."""
    return records.clear_prefix(study.user_attrs, records.AVOID_PREFIX, study.set_user_attr)

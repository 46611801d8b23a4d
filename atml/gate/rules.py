"""The gate's rules: a trial's lowest and highest gate metric, its folder name, and stop rules.

After a trial, its gate metrics (validation split only) give ``hi`` (highest) and ``lo``
(lowest). ``lo >= pass`` files a folder ``int(100*hi)-int(100*lo)`` (``95-94``);
``lo < avoid_below`` puts the trial's point on the avoid list. ``stop_at`` (a ``lo`` that
ends the study) and ``patience_trials`` (trials without a better ``lo``) give the study's
stop reason, which every worker honours.
"""

from __future__ import annotations

import math

from atml.config import GateSettings

__all__ = ["metric_label", "lo_hi", "folder_name", "evaluation_metrics_txt", "stop_reason"]

_LABELS = {"f1": "F1 Score", "accuracy": "Accuracy", "precision": "Precision",
           "recall": "Recall", "auroc": "AUROC"}


def metric_label(name: str) -> str:
    """ATML's label of a gate metric (``F1 Score``); the int8 model's as ``Int8 F1 Score``."""
    if name.startswith("int8_"):
        return f"Int8 {metric_label(name.removeprefix('int8_'))}"
    return _LABELS.get(name, name)


def lo_hi(metrics: dict[str, float], names: tuple[str, ...]) -> tuple[float, float]:
    """``(lowest, highest)`` of the gate metrics ``names``; both NaN when any of them is NaN."""
    vals = [float(metrics[n]) for n in names]
    if any(math.isnan(v) for v in vals):
        return math.nan, math.nan
    return min(vals), max(vals)


def folder_name(hi: float, lo: float) -> str:
    """ATML's folder name: int(100 x highest) - int(100 x lowest)."""
    return f"{int(100 * hi + 1e-9)}-{int(100 * lo + 1e-9)}"


def evaluation_metrics_txt(metrics: dict[str, float], names: tuple[str, ...], trial: int) -> str:
    """``evaluation_metrics.txt`` in ATML's layout: one ``Name: value`` line per metric."""
    lines = [f"{metric_label(n)}: {float(metrics[n]):.4f}" for n in names]
    lines.append(f"(validation split, trial {trial})")
    return "\n".join(lines) + "\n"


def stop_reason(gate: GateSettings, finished: list[tuple[int, float]]) -> str | None:
    """Why the study should stop, from ``(trial, lo)`` of finished trials in finish order."""
    if not finished:
        return None
    if gate.stop_at is not None:
        for trial, lo in finished:
            if not math.isnan(lo) and lo >= gate.stop_at:
                return f"stop_at reached: trial {trial} lowest metric {lo:.4f} >= {gate.stop_at}"
    if gate.patience_trials is not None:
        best, since = -math.inf, 0
        for _, lo in finished:
            if not math.isnan(lo) and lo > best:
                best, since = lo, 0
            else:
                since += 1
        if since >= gate.patience_trials:
            return f"patience_trials reached: {since} trials without a better lowest metric (best {best:.4f})"
    return None

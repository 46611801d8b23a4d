"""The study record: every ``atml.*`` study attribute and trial attribute, read and written here.

A study carries the ATML protocol in Optuna user attributes, so any worker, the dashboard
and the CLI agree on it through the storage alone. This module is the only place that
spells a key; the readers are tolerant (a value may be a JSON string or a plain value,
and a cleared entry is ``None``) because the dashboard reads studies written by other
versions and by hand. No torch, no web framework.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from atml.storage.resilient import set_trial_user_attrs, study_user_attr

__all__ = [
    "SPACE", "METRIC", "STOP", "DEADLINE", "AVOID_PREFIX", "GATE_PREFIX", "NOTE_PREFIX",
    "REASON", "SKIPPED", "WORKER", "DEVICE",
    "set_attrs", "attr_json", "entries", "stored_space", "stop_reason", "read_stop_reason", "deadline",
    "avoid_records", "gate_records", "note_records", "clear_prefix",
    "reason", "set_reason", "mark_skipped", "was_skipped", "device",
    "best_trial", "feasible",
]

# -- study attributes -------------------------------------------------------------------
SPACE = "atml.space"  # JSON {"source": ..., "raw": ...} of the validated space, set once at creation
METRIC = "atml.metric"  # the primary metric's name, for readers that do not parse the space
STOP = "atml.stop_reason"  # set: every worker stops after its current trial; the text says why
DEADLINE = "atml.deadline"  # unix time at which the study's timeout ends (None: no timeout)
AVOID_PREFIX = "atml.avoid."  # + trial number: one avoid-list entry per attribute (no races)
GATE_PREFIX = "atml.gate."  # + trial number: one filed gate folder
NOTE_PREFIX = "atml.note."  # + note id: a note on the study or on one of its trials

# -- trial attributes -------------------------------------------------------------------
REASON = "reason"  # why a trial was pruned, failed or skipped (one line)
SKIPPED = "skipped"  # True: ended before training (size cap, avoid list); uses up no budget
WORKER = "worker"  # host:pid of the worker that ran it
DEVICE = "device"  # where it trained: "cpu", "mps", or "cuda:0 (NVIDIA H200)" (+ the worker's CUDA_VISIBLE_DEVICES)


def attr_json(v: Any) -> Any:
    """A value written as a JSON string or as a plain value; None stays None."""
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def entries(user_attrs: dict[str, Any], prefix: str) -> list[tuple[str, Any]]:
    """``(key without prefix, parsed value)`` of every live attribute under ``prefix``."""
    out = []
    for k, v in user_attrs.items():
        if k.startswith(prefix) and v is not None:
            val = attr_json(v)
            if val is not None and val != "":
                out.append((k[len(prefix):], val))
    return out


def stored_space(user_attrs: dict[str, Any]) -> dict[str, Any] | None:
    """The space stored on a study (``{"source", "raw"}``), or None for a study ATML did not create."""
    val = attr_json(user_attrs.get(SPACE))
    return val if isinstance(val, dict) else None


def stop_reason(user_attrs: dict[str, Any]) -> str | None:
    v = user_attrs.get(STOP)
    return v if isinstance(v, str) and v else None


def read_stop_reason(study: optuna.Study) -> str | None:
    """The study's stop reason as its storage holds it now, reading that one attribute
    only where the storage can: every epoch of every trial asks, and the study's other
    attributes (the space, the avoid list, gate records, notes) grow with the study."""
    return stop_reason({STOP: study_user_attr(study, STOP)})


def deadline(user_attrs: dict[str, Any]) -> float | None:
    v = user_attrs.get(DEADLINE)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def avoid_records(user_attrs: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Avoid-list entries as ``(key, dict)``; a value that is not a dict becomes its reason."""
    return [(k, v if isinstance(v, dict) else {"reason": str(v)}) for k, v in entries(user_attrs, AVOID_PREFIX)]


def gate_records(user_attrs: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Filed gate folders as ``(key, dict)``."""
    return [(k, v if isinstance(v, dict) else {}) for k, v in entries(user_attrs, GATE_PREFIX)]


def note_records(user_attrs: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Notes as ``(id, dict)``; values that are not dicts are left out."""
    return [(k, v) for k, v in entries(user_attrs, NOTE_PREFIX) if isinstance(v, dict)]


def clear_prefix(user_attrs: dict[str, Any], prefix: str, set_attr: Callable[[str, Any], None]) -> int:
    """Set every live attribute under ``prefix`` to None with ``set_attr``; returns how many."""
    keys = [k for k, v in user_attrs.items() if k.startswith(prefix) and v is not None]
    for k in keys:
        set_attr(k, None)
    return len(keys)


def reason(trial: Any) -> str | None:
    v = trial.user_attrs.get(REASON)
    return v if isinstance(v, str) else None


def set_attrs(trial: Any, attrs: dict[str, Any]) -> None:
    """Set several user attributes of ``trial`` at once (one storage transaction where it can be)."""
    set_trial_user_attrs(trial, attrs)


def set_reason(trial: Any, text: str) -> None:
    trial.set_user_attr(REASON, text)


def mark_skipped(trial: Any, why: str) -> None:
    """Record that ``trial`` ended before training: it does not use up the budget."""
    set_attrs(trial, {REASON: why, SKIPPED: True})


def was_skipped(trial: Any) -> bool:
    """Whether ``trial`` (frozen or live) ended before training (see :data:`SKIPPED`)."""
    return bool(trial.user_attrs.get(SKIPPED))


def device(trial: Any) -> str | None:
    """Where ``trial`` (frozen or live) trained (see :data:`DEVICE`); None when it did not record it."""
    v = trial.user_attrs.get(DEVICE)
    return v if isinstance(v, str) and v else None


def feasible(t: FrozenTrial) -> bool:
    """A trial whose constraint values (``Trial.set_constraint``) are all <= 0."""
    return all(c <= 0 for c in t.constraints.values())


def best_trial(study: optuna.Study | Any, trials: list[FrozenTrial] | None = None) -> FrozenTrial | None:
    """The best completed, feasible trial.

    Several objectives: among the Pareto front, the best by the first (primary) objective
    (a validation metric); the dashboard shows the whole front.
    """
    trials = trials if trials is not None else study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None and feasible(t)]
    if not done:
        return None
    directions = study.directions
    if len(directions) > 1:
        front = {t.number for t in study.best_trials}
        done = [t for t in done if t.number in front] or done
    sign = 1 if directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
    return max(done, key=lambda t: (sign * t.values[0], -t.number))

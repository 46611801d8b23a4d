"""Picking the best trial of a study (single- or multi-objective, with constraints)."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = ["best_trial", "feasible"]


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

"""Per-epoch reporting and pruning of one trial.

Single-objective studies prune with the Optuna pruner the worker built
(:func:`atml.search.strategy.make_pruner`); Optuna's pruners do not apply to several
objectives, so those use :func:`median_rule` on the per-epoch history every trial stores.
The rule lives with the trial (not the search strategy) because it reads what the trial
records and because an :class:`~atml.trial.Objective` used on its own must prune the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna

from atml import records
from atml.config import StudySettings
from atml.trial import attributes

__all__ = ["MEDIAN_STARTUP_TRIALS", "MEDIAN_WARMUP_STEPS", "STOP_CHECK_SECONDS", "median_rule", "should_prune",
           "epoch_reporter"]

# The median rule's defaults, shared with Optuna's MedianPruner built by the search strategy.
MEDIAN_STARTUP_TRIALS = 4
MEDIAN_WARMUP_STEPS = 2

# A trial reads the study's stop reason after its first epoch, then at most this often: on
# an accelerator an epoch can take a fraction of a second, and every worker asks.
STOP_CHECK_SECONDS = 2.0


def median_rule(study: optuna.Study, st: StudySettings, epoch: int, value: float) -> bool:
    """Pruning for multi-objective studies, where Optuna's pruners do not apply.

    The median rule on the primary (validation) objective: prune when this epoch's value
    is worse than the median of completed trials at the same epoch (their per-epoch
    history is stored on each trial). Uses the pruner's n_startup_trials and
    n_warmup_steps; ``pruner: none`` turns it off.
    """
    cfg = st.pruner
    if cfg.get("type") == "none" or epoch < int(cfg.get("n_warmup_steps", MEDIAN_WARMUP_STEPS)):
        return False
    seen = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        hist = attributes.history(t)
        if len(hist) > epoch and st.metric in hist[epoch]:
            seen.append(hist[epoch][st.metric])
    if len(seen) < int(cfg.get("n_startup_trials", MEDIAN_STARTUP_TRIALS)):
        return False
    median = float(np.median(seen))
    return value < median if st.direction == "maximize" else value > median


def should_prune(trial: optuna.Trial, st: StudySettings, epoch: int, value: float) -> bool:
    """The study's pruner (one objective) or the median rule (several) on this epoch's value."""
    return median_rule(trial.study, st, epoch, value) if st.multi else trial.should_prune()


def epoch_reporter(trial: optuna.Trial, st: StudySettings,
                   epochs: list[dict[str, float]]) -> Callable[[int, float, dict[str, Any]], None]:
    """The ``report`` callback of :func:`atml.train.fit` for ``trial``.

    Each epoch: append to ``epochs`` (the trial's history), report to the pruner, then end
    the trial as pruned when the study was stopped (by the gate, the dashboard, a signal;
    read after the first epoch and then every :data:`STOP_CHECK_SECONDS` at most) or the
    pruner says so.
    """
    study = trial.study
    checked = -math.inf

    def report(epoch: int, value: float, m: dict[str, Any]) -> None:
        nonlocal checked
        epochs.append({k: float(m[k]) for k in ("train_loss", "val_loss", st.metric) if k in m})
        if not st.multi:
            trial.report(value, epoch)
        stopped = None
        if time.monotonic() - checked >= STOP_CHECK_SECONDS:
            checked = time.monotonic()
            stopped = records.read_stop_reason(study)
        if stopped:
            attributes.record_history(trial, epochs)
            records.set_reason(trial, f"study stopped ({stopped})")
            raise optuna.TrialPruned(f"study stopped: {stopped}")
        if should_prune(trial, st, epoch, value):
            attributes.record_history(trial, epochs)
            records.set_reason(trial, f"pruned by {st.pruner['type']} at epoch {epoch}")
            raise optuna.TrialPruned(f"pruned at epoch {epoch} ({st.metric}={value:.4f})")

    return report

"""Samplers and pruners built from the study settings of a search space.

Samplers are not persisted by Optuna: every worker rebuilds them from the space stored
with the study. To make trial parameters reproducible whichever worker runs a trial, the
sampler is reseeded per trial from ``(seed, trial.number)``: trial 7 of seed 42 draws the
same random numbers on any machine. With one worker the whole sequence is reproducible;
with several, model-based samplers also depend on which trials had finished.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial

from atml.config import StudySettings, sampler_class, trial_seed
from atml.trial.pruning import MEDIAN_STARTUP_TRIALS, MEDIAN_WARMUP_STEPS

__all__ = ["make_sampler", "make_pruner", "PerTrialSeedSampler"]


class PerTrialSeedSampler(BaseSampler):
    """Delegates to a sampler built afresh for each trial with a seed derived from its number."""

    def __init__(self, factory: Callable[[int], BaseSampler], seed: int) -> None:
        self._factory = factory
        self._seed = seed
        self._inner: dict[int, BaseSampler] = {}

    def _for(self, trial: FrozenTrial) -> BaseSampler:
        s = self._inner.get(trial.number)
        if s is None:
            s = self._factory(trial_seed(self._seed, trial.number))
            self._inner[trial.number] = s
        return s

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: optuna.trial.TrialState,
        values: Any,
    ) -> None:
        inner = self._inner.pop(trial.number, None) or self._for(trial)
        inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:  # seeds are per trial already
        pass


def make_sampler(settings: StudySettings) -> BaseSampler:
    """Build the sampler named in ``study.sampler`` (reseeded per trial)."""
    cfg = {k: v for k, v in settings.sampler.items() if k not in ("type", "seed")}
    kind = settings.sampler["type"]
    cls = sampler_class(kind)
    if kind == "tpe":
        # Several workers sampling at once would otherwise propose near-identical points.
        cfg.setdefault("constant_liar", True)
        cfg.setdefault("multivariate", True)
    return PerTrialSeedSampler(lambda seed: cls(seed=seed, **cfg), settings.seed)


def make_pruner(settings: StudySettings, epochs: int, folds: int = 0) -> optuna.pruners.BasePruner:
    """Build the pruner named in ``study.pruner``; resources are epochs, or with ``folds``
    (a cross-validated study) the folds a trial trains: it may then stop after its first.

    Optuna's pruners serve single-objective studies; several objectives are pruned by
    :func:`atml.trial.median_rule` inside the objective.
    """
    cfg = {k: v for k, v in settings.pruner.items() if k != "type"}
    kind = settings.pruner["type"]
    if folds:  # a fold is a whole model: judge a trial from its first one
        cfg.setdefault(*(("min_resource", 1) if kind in ("asha", "successive_halving", "hyperband")
                         else ("n_warmup_steps", 0)))
        epochs = folds
    if kind == "median":
        # The same defaults as the median rule that prunes multi-objective studies.
        cfg.setdefault("n_startup_trials", MEDIAN_STARTUP_TRIALS)
        cfg.setdefault("n_warmup_steps", MEDIAN_WARMUP_STEPS)
        return optuna.pruners.MedianPruner(**cfg)
    if kind == "percentile":
        cfg.setdefault("percentile", 50.0)
        return optuna.pruners.PercentilePruner(**cfg)
    if kind in ("asha", "successive_halving"):
        cfg.setdefault("min_resource", 2)
        cfg.setdefault("reduction_factor", 3)
        return optuna.pruners.SuccessiveHalvingPruner(**cfg)
    if kind == "hyperband":
        cfg.setdefault("min_resource", 2)
        cfg.setdefault("max_resource", epochs)
        cfg.setdefault("reduction_factor", 3)
        return optuna.pruners.HyperbandPruner(**cfg)
    return optuna.pruners.NopPruner()

"""Samplers and pruners built from a space's study settings."""

from __future__ import annotations

import optuna
import pytest
from _helpers import small_space

from atml.config import space_from_dict
from atml.search.strategy import make_pruner
from atml.trial import MEDIAN_STARTUP_TRIALS, MEDIAN_WARMUP_STEPS, median_rule


@pytest.mark.parametrize("kind,cls", [("median", optuna.pruners.MedianPruner),
                                      ("asha", optuna.pruners.SuccessiveHalvingPruner),
                                      ("hyperband", optuna.pruners.HyperbandPruner),
                                      ("none", optuna.pruners.NopPruner)])
def test_pruner_named_in_yaml(kind, cls):
    raw = small_space()
    raw["study"]["pruner"] = {"type": kind}
    assert isinstance(make_pruner(space_from_dict(raw).study, 10), cls)


def test_median_pruner_and_the_median_rule_share_their_defaults():
    """One objective (Optuna's MedianPruner) or several (the median rule): the same warm-up."""
    raw = small_space()
    raw["study"]["pruner"] = {"type": "median"}
    st = space_from_dict(raw).study
    study = optuna.create_study(direction="maximize", pruner=make_pruner(st, 10))
    for _ in range(MEDIAN_STARTUP_TRIALS):
        t = study.ask()
        for step in range(MEDIAN_WARMUP_STEPS + 1):
            t.report(0.8, step)
        t.set_user_attr("history", [{"f1": 0.8}] * (MEDIAN_WARMUP_STEPS + 1))
        study.tell(t, 0.8)
    t = study.ask()
    for step in range(MEDIAN_WARMUP_STEPS + 1):
        t.report(0.1, step)
        assert t.should_prune() == median_rule(study, st, step, 0.1) == (step >= MEDIAN_WARMUP_STEPS)

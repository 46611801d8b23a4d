"""The avoid list on its own: entries in the study storage, neighbourhoods, clearing."""

from __future__ import annotations

import json

import optuna
import pytest

from atml import gate as g
from atml import records
from atml.config import Param

LR = Param("train.lr", "float", low=1e-5, high=1e-1, log=True)
DROP = Param("train.dropout", "float", low=0.0, high=0.5)
STEPPED = Param("train.momentum", "float", low=0.5, high=0.9, step=0.1)
WIDTH = Param("afnet.width", "int", low=4, high=24, step=4)
FAMILY = Param("model.family", "categorical", choices=("afnet", "sepnet"))
PARAMS = {p.name: p for p in (LR, DROP, STEPPED, WIDTH, FAMILY)}


@pytest.fixture
def study():
    return optuna.create_study(storage=optuna.storages.InMemoryStorage())


def test_entries_round_trip_through_the_study(study):
    a = g.AvoidEntry(3, {"train.lr": 1e-3}, "avoid_below: lowest metric 0.4", {"f1": 0.4})
    b = g.AvoidEntry(1, {"train.lr": 1e-2, "model.family": "sepnet"}, "crashed")
    g.add_avoid(study, a)
    g.add_avoid(study, b)
    assert set(study.user_attrs) == {f"{records.AVOID_PREFIX}3", f"{records.AVOID_PREFIX}1"}
    assert g.avoid_entries(study.user_attrs) == [b, a], "by trial number"
    # a second worker writing the same trial's entry replaces it, never duplicates it
    g.add_avoid(study, g.AvoidEntry(3, {"train.lr": 1e-3}, "again"))
    assert [e.reason for e in g.avoid_entries(study.user_attrs)] == ["crashed", "again"]
    assert g.clear_avoid(study) == 2
    assert g.avoid_entries(study.user_attrs) == []
    assert g.clear_avoid(study) == 0, "cleared entries are null attributes, not counted again"


def test_entries_read_what_others_wrote():
    attrs = {
        f"{records.AVOID_PREFIX}0": json.dumps({"trial": 0, "params": {"train.lr": 1e-3}, "reason": "x"}),
        f"{records.AVOID_PREFIX}1": {"trial": 1, "params": {"train.lr": 2e-3}, "reason": "y", "metrics": None},
        f"{records.AVOID_PREFIX}2": None,  # cleared
        f"{records.AVOID_PREFIX}3": "not json: a reason only",  # no point: cannot match
        f"{records.AVOID_PREFIX}4": json.dumps({"params": {"train.lr": 1e-3}}),  # no trial
        f"{records.GATE_PREFIX}5": json.dumps({"trial": 5}),  # another list
        "atml.avoidance": "not an avoid entry",
    }
    assert [(e.trial, e.params, e.reason) for e in g.avoid_entries(attrs)] == [
        (0, {"train.lr": 1e-3}, "x"), (1, {"train.lr": 2e-3}, "y")]


def test_radius_per_parameter_kind():
    assert g.param_radius(LR, None) == g.DEFAULT_RADIUS
    assert g.param_radius(DROP, None) == g.DEFAULT_RADIUS
    assert g.param_radius(STEPPED, None) == pytest.approx(2 * 0.1 / 0.4), "two steps"
    assert g.param_radius(WIDTH, None) == pytest.approx(2 * 4 / 20)
    assert g.param_radius(FAMILY, None) == 0.0
    assert g.param_radius(LR, 0.3) == g.param_radius(FAMILY, 0.3) == 0.3, "an explicit radius wins"


def test_neighbourhood_edges():
    e = g.AvoidEntry(0, {"train.dropout": 0.25, "train.momentum": 0.7}, "x")
    base = {"train.dropout": 0.25, "train.momentum": 0.7, "train.lr": 1e-3}
    assert g.matches(base, e, PARAMS, None), "parameters the entry does not name do not matter"
    assert g.matches({**base, "train.dropout": 0.25 + 0.02 * 0.5}, e, PARAMS, None), "the edge is inside"
    assert not g.matches({**base, "train.dropout": 0.25 + 0.021 * 0.5}, e, PARAMS, None)
    assert g.matches({**base, "train.momentum": 0.5}, e, PARAMS, None), "exactly two steps away"
    assert not g.matches({**base, "train.momentum": 0.9 + 1e-6}, e, PARAMS, None)
    # a parameter the space no longer searches must be equal
    e2 = g.AvoidEntry(1, {"old.param": 3}, "x")
    assert g.matches({"old.param": 3}, e2, PARAMS, None)
    assert not g.matches({"old.param": 3.0001}, e2, PARAMS, None)
    assert not g.matches(base, g.AvoidEntry(2, {}, "no params"), PARAMS, None), "an empty entry avoids nothing"


def test_find_match_returns_the_first_hit():
    far = g.AvoidEntry(0, {"train.lr": 1e-5}, "far")
    near = g.AvoidEntry(1, {"train.lr": 1.05e-3}, "near")
    also = g.AvoidEntry(2, {"train.lr": 1e-3}, "also")
    assert g.find_match({"train.lr": 1e-3}, [far, near, also], PARAMS, None) is near
    assert g.find_match({"train.lr": 1e-2}, [far, near, also], PARAMS, None) is None
    assert g.find_match({"train.lr": 1e-3}, [], PARAMS, None) is None

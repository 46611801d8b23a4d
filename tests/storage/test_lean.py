"""A trial's writes and the budget count in one statement (atml.storage.lean): what a
study holds afterwards is what Optuna's own storage would hold, the same errors are raised,
and the counts match the trials. Real SQLite files and the PostgreSQL server."""

from __future__ import annotations

import math
import uuid

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from atml import records
from atml.storage import open_storage
from atml.storage.optuna_internals import study_id, study_storage, trial_id
from atml.storage.resilient import set_trial_user_attrs, study_user_attrs, trial_counts

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 1e-4, 1.0, log=True)
    n = trial.suggest_int("n", 2, 9, step=1)
    c = trial.suggest_categorical("c", ["a", "bb", None])
    set_trial_user_attrs(trial, {"worker": "w1", "history": [{"f1": x, "loss": float(n)}], "flag": c is None})
    assert trial.user_attrs["history"] == [{"f1": x, "loss": float(n)}]  # the live trial sees its own write
    for step, v in enumerate([x, math.nan, math.inf, -math.inf, 0.25]):
        trial.report(v, step)
    trial.set_user_attr("seconds", 1.5)
    return x * n


def test_a_study_written_lean_is_what_optuna_writes(url: str):
    """Same seed, same objective: one study through atml's storage, one through Optuna's own
    RDBStorage, read back by a third storage: params, distributions, attributes and every
    intermediate value (NaN and infinities included) agree."""
    a, b = f"lean-{uuid.uuid4().hex[:8]}", f"orm-{uuid.uuid4().hex[:8]}"
    for name, storage in ((a, open_storage(url)), (b, RDBStorage(url))):
        s = optuna.create_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(seed=3))
        s.optimize(_objective, n_trials=6)
    try:
        raw = RDBStorage(url)
        mine, theirs = (optuna.load_study(study_name=n, storage=raw).get_trials() for n in (a, b))
        assert len(mine) == len(theirs) == 6
        for m, t in zip(mine, theirs, strict=True):
            assert (m.number, m.state, m.values, m.params, m.distributions, m.user_attrs) == \
                   (t.number, t.state, t.values, t.params, t.distributions, t.user_attrs)
            assert sorted(m.intermediate_values) == sorted(t.intermediate_values) == [0, 1, 2, 3, 4]
            for step, v in t.intermediate_values.items():
                w = m.intermediate_values[step]
                assert (math.isnan(v) and math.isnan(w)) or v == w
    finally:
        for n in (a, b):
            optuna.delete_study(study_name=n, storage=url)


def test_writes_refuse_what_optuna_refuses(url: str):
    name = f"lean-{uuid.uuid4().hex[:8]}"
    storage = open_storage(url)
    s = optuna.create_study(study_name=name, storage=storage)
    try:
        s.optimize(lambda t: t.suggest_categorical("c", ["a", "b"]) == "a", n_trials=1)
        done = trial_id(s.trials[0])
        for write in (lambda tid: storage.set_trial_user_attrs(tid, {"k": 1}),
                      lambda tid: storage.set_trial_user_attr(tid, "k", 1),
                      lambda tid: storage.set_trial_intermediate_value(tid, 0, 1.0),
                      lambda tid: storage.set_trial_param(tid, "y", 0.5, FloatDistribution(0, 1))):
            with pytest.raises(UpdateFinishedTrialError):
                write(done)
            with pytest.raises(KeyError):
                write(10**9)
        assert s.trials[0].user_attrs == {} and s.trials[0].intermediate_values == {}
        # A parameter whose distribution differs from the stored one: Optuna's ValueError,
        # from this process (distribution remembered) and from a fresh one (read from the table).
        for st in (storage, open_storage(url)):
            study = optuna.load_study(study_name=name, storage=st)
            t = study.ask()
            with pytest.raises(ValueError, match="dynamic value space"):
                t.suggest_categorical("c", ["x", "y"])
            assert t.params == {}
            study.tell(t, state=TrialState.FAIL)
        # A compatible one (same choices) is stored as it is.
        t = s.ask()
        assert t.suggest_categorical("c", ["a", "b"]) in ("a", "b")
        # a second write of a parameter is ignored, as Optuna ignores it (the first value stays)
        first = storage.get_trial(trial_id(t)).params["c"]
        storage.set_trial_param(trial_id(t), "c", 1.0 - ["a", "b"].index(first), CategoricalDistribution(["a", "b"]))
        assert storage.get_trial(trial_id(t)).params["c"] == first
        s.tell(t, 1.0)
        assert s.trials[-1].distributions == {"c": CategoricalDistribution(["a", "b"])}
    finally:
        optuna.delete_study(study_name=name, storage=url)


def test_trial_counts_match_the_trials(url: str):
    name = f"lean-{uuid.uuid4().hex[:8]}"
    storage = open_storage(url)
    s = optuna.create_study(study_name=name, storage=storage)
    d = {"n": IntDistribution(0, 9)}
    try:
        for i in range(9):
            t = s.ask(d)
            if i % 3 == 0:
                records.mark_skipped(t, "avoided")  # REASON and SKIPPED in one write
            if i < 6:
                s.tell(t, float(i)) if i % 2 else s.tell(t, state=TrialState.PRUNED)
        s.enqueue_trial({"n": 1})
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
        trials = s.get_trials(deepcopy=False)
        for below in (None, 4, 7, 0):
            want: dict[TrialState, tuple[int, int]] = {}
            for t in trials:
                if below is None or t.number < below:
                    n, f = want.get(t.state, (0, 0))
                    want[t.state] = (n + 1, f + records.was_skipped(t))
            assert trial_counts(s, states, records.SKIPPED, below=below) == want
        assert trial_counts(s, states, records.SKIPPED) == {
            TrialState.COMPLETE: (3, 1), TrialState.PRUNED: (3, 1), TrialState.RUNNING: (3, 1),
            TrialState.WAITING: (1, 0)}
        assert trial_counts(s, (TrialState.FAIL,), records.SKIPPED) == {}
        # the same figures from a study on a storage without the database path
        plain = optuna.load_study(study_name=name, storage=RDBStorage(url))
        assert trial_counts(plain, states, records.SKIPPED, below=7) == trial_counts(s, states, records.SKIPPED,
                                                                                     below=7)
    finally:
        optuna.delete_study(study_name=name, storage=url)


def test_study_user_attrs_reads_the_keys_asked_for(url: str):
    name = f"lean-{uuid.uuid4().hex[:8]}"
    s = optuna.create_study(study_name=name, storage=open_storage(url))
    try:
        s.set_user_attr(records.STOP, "n_trials reached (3)")
        s.set_user_attr(records.DEADLINE, 1.5e9)
        s.set_user_attr("atml.avoid.3", {"big": list(range(50))})
        got = study_user_attrs(s, (records.STOP, records.DEADLINE, "missing"))
        assert got == {records.STOP: "n_trials reached (3)", records.DEADLINE: 1.5e9}
        assert study_id(s) is not None and records.read_stop_reason(s) == "n_trials reached (3)"
    finally:
        optuna.delete_study(study_name=name, storage=url)


def test_get_trial_is_what_optuna_reads(url: str):
    """Every kind of trial (complete, infinite value, pruned, failed, waiting with fixed
    parameters, running) read through atml's storage equals Optuna's own read of it."""
    name = f"lean-{uuid.uuid4().hex[:8]}"
    s = optuna.create_study(study_name=name, storage=open_storage(url), directions=["maximize", "minimize"])

    def obj(t: optuna.Trial) -> tuple[float, float]:
        t.suggest_float("x", 1e-3, 1.0, log=True)
        t.suggest_categorical("c", [None, "a", 2])
        t.set_user_attr("h", [1, {"a": None}])
        t.storage.set_trial_intermediate_value(trial_id(t), 3, 0.5)  # report() is single-objective only
        if t.number == 2:
            raise RuntimeError("crashed")
        return (math.inf if t.number == 1 else 0.5), -1.0

    try:
        s.optimize(obj, n_trials=4, catch=(RuntimeError,))
        s.enqueue_trial({"x": 0.1})
        s.ask()  # takes the queued one: RUNNING, fixed parameter in its system attributes
        s.enqueue_trial({"x": 0.2})
        raw = RDBStorage(url)
        trials = s.get_trials(deepcopy=False)
        assert {t.state for t in trials} == {TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING,
                                             TrialState.WAITING}
        mine = study_storage(s)
        for t in trials:
            assert mine.get_trial(trial_id(t)) == raw.get_trial(trial_id(t))
        with pytest.raises(KeyError):
            mine.get_trial(10**9)
    finally:
        optuna.delete_study(study_name=name, storage=url)

"""Trials that are not running, read incrementally (atml.storage.finished): the same trials
as Optuna's own read, through every state change another worker makes, and without loading
running trials. Real SQLite files and the PostgreSQL server."""

from __future__ import annotations

import time
import uuid

import optuna
import sqlalchemy as sa
from optuna.distributions import FloatDistribution
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from atml.storage import open_storage
from atml.storage.optuna_internals import study_id

optuna.logging.set_verbosity(optuna.logging.WARNING)

NOT_RUNNING = [(TrialState.COMPLETE,), (TrialState.COMPLETE, TrialState.PRUNED), (TrialState.FAIL,),
               (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL), (TrialState.WAITING,),
               (TrialState.COMPLETE, TrialState.WAITING)]
WITH_RUNNING = [(TrialState.RUNNING,), (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING),
                (TrialState.RUNNING, TrialState.WAITING)]
X = {"x": FloatDistribution(0, 1)}


def _same(mine: list[optuna.trial.FrozenTrial], raw: list[optuna.trial.FrozenTrial]) -> None:
    assert [t.number for t in mine] == [t.number for t in raw]
    assert mine == raw  # state, values, params, attributes, intermediate values


def test_finished_trials_follow_another_workers_changes(url: str):
    name = f"fin-{uuid.uuid4().hex[:8]}"
    me = open_storage(url)  # the reading worker
    other = optuna.create_study(storage=open_storage(url), study_name=name)  # another worker
    raw = RDBStorage(url)  # Optuna's own read, no cache
    mine = optuna.load_study(study_name=name, storage=me)
    sid = study_id(mine)

    def check() -> None:
        for states in NOT_RUNNING:
            _same(me.get_all_trials(sid, deepcopy=False, states=states), raw.get_all_trials(sid, states=states))
        # with running trials (TPE's constant liar): finished ones kept, unfinished ones read now
        assert me.get_all_trials(sid, states=None) == raw.get_all_trials(sid)
        for states in WITH_RUNNING:
            _same(me.get_all_trials(sid, deepcopy=False, states=states), raw.get_all_trials(sid, states=states))
        assert mine.get_trials(states=(TrialState.COMPLETE,)) == raw.get_all_trials(sid, states=(TrialState.COMPLETE,))

    try:
        check()  # empty study
        running = [other.ask(X) for _ in range(3)]
        other.tell(other.ask(X), 0.5)
        check()
        running[1].report(0.1, 0)
        running[1].set_user_attr("history", [1, 2])
        other.tell(running[1], 0.9)  # an older running trial finishes
        check()
        other.enqueue_trial({"x": 0.25})
        check()
        assert [t.system_attrs["fixed_params"] for t in mine.get_trials(states=(TrialState.WAITING,))] == [{"x": 0.25}]
        waiting = other.ask()  # the queued trial starts ...
        other.tell(waiting, state=TrialState.PRUNED)  # ... and ends pruned
        other.tell(running[0], state=TrialState.FAIL)
        check()
        got = me.get_all_trials(sid, states=(TrialState.COMPLETE,))
        got[0].user_attrs["mutated"] = True  # a deep copy by default: the view is not changed
        assert "mutated" not in me.get_all_trials(sid, states=(TrialState.COMPLETE,))[0].user_attrs
        other.tell(running[2], 0.1)
        check()
    finally:
        optuna.delete_study(study_name=name, storage=raw)


def test_a_finished_only_read_does_not_load_running_trials(url: str):
    name = f"fin-{uuid.uuid4().hex[:8]}"
    other = optuna.create_study(storage=open_storage(url), study_name=name)
    for _ in range(2):
        other.tell(other.ask(X), 0.5)
    running = [other.ask(X) for _ in range(20)]
    for t in running:
        t.report(0.5, 0)
    me = open_storage(url)
    sid = me.get_study_id_from_name(name)
    me.get_all_trials(sid, states=(TrialState.COMPLETE,))  # the first read loads the study once
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:  # noqa: ANN001
        statements.append(statement)

    sa.event.listen(me.engine, "before_cursor_execute", record)
    try:
        assert len(me.get_all_trials(sid, states=(TrialState.COMPLETE,))) == 2
        probe = [s for s in statements if s.strip().upper().startswith("SELECT") and "trial_id" in s]
        assert len(probe) == 1 and "trial_params" not in probe[0] and "trial_intermediate_values" not in statements[-1], \
            statements
        statements.clear()
        other.tell(running[5], 0.7)
        assert [t.number for t in me.get_all_trials(sid, states=(TrialState.COMPLETE,))] == [0, 1, running[5].number]
        loaded = [s for s in statements if "trial_intermediate_values" in s]
        assert len(loaded) == 1, "only the newly finished trial is loaded in full"
        statements.clear()
        statements.clear()
        assert len(me.get_all_trials(sid, states=None)) == 22  # running trials asked for: read now ...
        loaded = [s for s in statements if "trial_intermediate_values" in s]
        assert len(loaded) == 1, "... all 19 running trials in one read"
    finally:
        sa.event.remove(me.engine, "before_cursor_execute", record)
        optuna.delete_study(study_name=name, storage=RDBStorage(url))


def test_a_worker_may_see_other_workers_trials_late_but_never_its_own(url: str):
    from atml.storage.resilient import ResilientStorage

    name = f"fin-{uuid.uuid4().hex[:8]}"
    other = optuna.create_study(storage=open_storage(url), study_name=name)
    worker_storage = open_storage(url, heartbeat=True)
    assert worker_storage.get_heartbeat_interval() is not None
    lagging = ResilientStorage(RDBStorage(url), retry_wait=0, finished_lag=60)
    me = optuna.load_study(study_name=name, storage=lagging)
    sid = study_id(me)
    done = (TrialState.COMPLETE,)
    try:
        assert me.get_trials(states=done) == []
        other.tell(other.ask(X), 0.5)
        assert me.get_trials(states=done) == [], "another worker's trial: up to finished_lag late"
        other.enqueue_trial({"x": 0.1})
        assert len(me.get_trials(states=(TrialState.WAITING,))) == 1, "queued trials are never late"
        mine = me.ask(X)
        me.tell(mine, 0.9)
        got = [t.number for t in me.get_trials(states=done)]
        assert got == [0, mine.number], "its own finished trial at once, and whatever the read brought"
        assert lagging.get_all_trials(sid, states=done) == RDBStorage(url).get_all_trials(sid, states=done)
        # a worker's storage lags by a second at most
        other.tell(other.ask(X), 0.4)
        w = optuna.load_study(study_name=name, storage=worker_storage)
        first = len(w.get_trials(states=done))
        other.tell(other.ask(X), 0.3)
        deadline = time.monotonic() + 5
        while len(w.get_trials(states=done)) == first and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(w.get_trials(states=done)) == first + 1 and time.monotonic() < deadline
    finally:
        optuna.delete_study(study_name=name, storage=RDBStorage(url))

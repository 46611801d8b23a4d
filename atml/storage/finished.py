"""The finished trials of a study, read incrementally from a database.

Pruners and samplers ask for the finished trials of a study every epoch and every trial
(``study.get_trials(states=(COMPLETE,))``), and every ``ask`` looks for WAITING trials.
Optuna's cache then re-reads every *unfinished* trial in full, with all its parameters,
attributes and intermediate values, to learn which of them finished: with W workers each
such call loads W running trials, and the storage work of a study grows with W² — at 32
workers it was most of the workers' CPU. Finished trials never change, so
:class:`FinishedTrials` keeps them and asks the database only for the ids and states of
the unfinished and the new trials (two small columns), then loads in full just the trials
that have finished since, and the WAITING ones when those are asked for.
"""

from __future__ import annotations

import threading
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from atml.storage.optuna_internals import rdb_models, rdb_trials, trial_id

__all__ = ["FinishedTrials", "asks_finished_only"]

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def asks_finished_only(states: Container[TrialState] | None) -> bool:
    """Whether a ``get_all_trials`` filter leaves out RUNNING trials (finished and WAITING ones only)."""
    return states is not None and TrialState.RUNNING not in states


@dataclass
class _Study:
    finished: dict[int, FrozenTrial] = field(default_factory=dict)  # by trial id
    pending: set[int] = field(default_factory=set)  # ids last seen RUNNING or WAITING
    waiting: list[int] = field(default_factory=list)  # ids seen WAITING by the last read
    last: int = -1  # highest trial id seen
    ordered: list[FrozenTrial] | None = None  # ``finished`` by number, rebuilt on change


class FinishedTrials:
    """Finished trials per study of the RDB storage ``backend`` (behind Optuna's cache ``store``)."""

    def __init__(self, store: BaseStorage, backend: Any) -> None:
        self.store = store
        self.backend = backend
        self._studies: dict[int, _Study] = {}
        self._lock = threading.Lock()

    def get_all_trials(self, study_id: int, states: Container[TrialState]) -> list[FrozenTrial]:
        """The study's trials in ``states`` (not RUNNING), by number, as the database holds them now."""
        with self._lock:
            s = self._studies.get(study_id)
            if s is None:
                s = self._studies[study_id] = self._first(study_id)
            else:
                self._refresh(study_id, s)
            if s.ordered is None:
                s.ordered = sorted(s.finished.values(), key=lambda t: t.number)
            out = [t for t in s.ordered if t.state in states]
            if TrialState.WAITING in states and s.waiting:  # queued trials: read fresh, in full
                out += rdb_trials(self.backend, study_id, s.waiting, (TrialState.WAITING,))
                out.sort(key=lambda t: t.number)
            return out

    def _first(self, study_id: int) -> _Study:
        # One bulk read through Optuna's cache (a worker joining a large study pays it once).
        s = _Study()
        for t in self.store.get_all_trials(study_id, deepcopy=False):
            tid = trial_id(t)
            s.last = max(s.last, tid)
            if t.state.is_finished():
                s.finished[tid] = t
            else:
                s.pending.add(tid)
                if t.state == TrialState.WAITING:
                    s.waiting.append(tid)
        return s

    def _refresh(self, study_id: int, s: _Study) -> None:
        import sqlalchemy as sa

        t = rdb_models().TrialModel.__table__
        cond = t.c.trial_id > s.last
        if s.pending:
            cond = sa.or_(cond, t.c.trial_id.in_(sorted(s.pending)))
        with self.backend.engine.connect() as con:
            rows = con.execute(sa.select(t.c.trial_id, t.c.state).where(t.c.study_id == study_id, cond)).all()
        # Nothing changes until every read went through: a read that fails half-way is retried
        # from the same view, so a trial that finished meanwhile cannot be skipped.
        last, pending, done, waiting = s.last, set(s.pending), [], []
        for tid, state in rows:
            last = max(last, tid)
            if not state.is_finished():
                pending.add(tid)
                if state == TrialState.WAITING:
                    waiting.append(tid)
            elif tid not in s.finished:
                done.append(tid)
        got = rdb_trials(self.backend, study_id, done, _FINISHED) if done else []
        for trial in got:
            tid = trial_id(trial)
            s.finished[tid] = trial
            pending.discard(tid)
            last = max(last, tid)
        s.last, s.pending, s.waiting = last, pending, waiting
        if got:
            s.ordered = None

    def __getstate__(self) -> dict[str, Any]:  # storages are pickled; the views are rebuilt
        return {"store": self.store, "backend": self.backend}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["store"], state["backend"])

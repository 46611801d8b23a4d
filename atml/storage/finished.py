"""The finished trials of a study, read incrementally from a database.

Pruners and samplers ask for the finished trials of a study every epoch and every trial
(``study.get_trials(states=(COMPLETE,))``), and every ``ask`` looks for WAITING trials.
Optuna's cache then re-reads every *unfinished* trial in full, with all its parameters,
attributes and intermediate values, to learn which of them finished: with W workers each
such call loads W running trials, and the storage work of a study grows with W² — at 32
workers it was most of the workers' CPU. Finished trials never change, so
:class:`FinishedTrials` keeps them and asks the database only for the ids and states of
the unfinished and the new trials (two small columns), then loads in full just the trials
that have finished since. WAITING trials, when the probe finds any, are read through
Optuna's cache (``ask`` pops them from it).

A worker's storage may also let other workers' finished trials lag (``refresh_every``
seconds): a pruner asking every epoch then reads the database at most that often. Its own
finished trials and WAITING ones are never late (:meth:`FinishedTrials.touch` after each
of its own writes that finish a trial), so one worker alone sees exactly what it wrote.
"""

from __future__ import annotations

import threading
import time
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
    checked: float = 0.0  # time.monotonic() of the last read
    stale: bool = False  # this process finished a trial since


class FinishedTrials:
    """Finished trials per study of the RDB storage ``backend`` (behind Optuna's cache ``store``),
    re-read at most every ``refresh_every`` seconds (0: at every call)."""

    def __init__(self, store: BaseStorage, backend: Any, refresh_every: float = 0.0, lean: Any = None) -> None:
        self.store = store
        self.backend = backend
        self.lean = lean  # a LeanSQL over ``backend``: trials read with six statements, not Optuna's ORM
        self.refresh_every = refresh_every
        self._studies: dict[int, _Study] = {}
        self._lock = threading.Lock()

    def forget(self, study_id: int) -> None:
        """Drop what is kept of a deleted study (SQLite may hand its id to the next one)."""
        with self._lock:
            self._studies.pop(study_id, None)

    def touch(self) -> None:
        """This process finished a trial (or added a finished one): the next read goes to the database."""
        with self._lock:
            for s in self._studies.values():
                s.stale = True

    def get_all_trials(self, study_id: int, states: Container[TrialState]) -> list[FrozenTrial]:
        """The study's trials in ``states`` (not RUNNING), by number, as the database holds them now."""
        with self._lock:
            s = self._studies.get(study_id)
            now = time.monotonic()
            if s is None:
                s = self._studies[study_id] = self._first(study_id)
                s.checked = now
            elif s.stale or now - s.checked >= self.refresh_every or TrialState.WAITING in states:
                self._refresh(study_id, s)
                s.checked, s.stale = now, False
            if s.ordered is None:
                s.ordered = sorted(s.finished.values(), key=lambda t: t.number)
            if TrialState.WAITING in states and s.waiting:
                # Queued trials: through Optuna's cache, which must know a trial that ``ask``
                # pops from the queue (the rare case; usually the queue is empty).
                return self.store.get_all_trials(study_id, deepcopy=False, states=states)
            return [t for t in s.ordered if t.state in states]

    def get_all_trials_live(self, study_id: int, states: Container[TrialState] | None) -> list[FrozenTrial]:
        """The study's trials in ``states`` (None: all) with the unfinished ones (RUNNING,
        WAITING) read now, by number: the finished ones as kept here, the unfinished ones
        (what changes) loaded in full by ``lean`` in one read, which is what Optuna's cache
        does on every such call, for a quarter of its CPU. Needs ``lean``."""
        with self._lock:
            s = self._studies.get(study_id)
            if s is None:
                s = self._studies[study_id] = self._first(study_id)
            else:
                self._refresh(study_id, s)  # the set of unfinished trials as it is now
            s.checked, s.stale = time.monotonic(), False
            if s.ordered is None:
                s.ordered = sorted(s.finished.values(), key=lambda t: t.number)
            done = [t for t in s.ordered if states is None or t.state in states]
            pending = sorted(s.pending)
        live = [t for t in self.lean.get_trials(pending) if states is None or t.state in states] if pending else []
        if not live:
            return done
        seen = {trial_id(t) for t in live}
        return sorted([*live, *(t for t in done if trial_id(t) not in seen)], key=lambda t: t.number)

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
        got = self._load(study_id, done) if done else []
        for trial in got:
            tid = trial_id(trial)
            s.finished[tid] = trial
            pending.discard(tid)
            last = max(last, tid)
        s.last, s.pending, s.waiting = last, pending, waiting
        if got:
            s.ordered = None

    def _load(self, study_id: int, ids: list[int]) -> list[FrozenTrial]:
        """The trials ``ids`` in full (finished ones: they are known to be)."""
        if self.lean is not None:
            return [t for t in self.lean.get_trials(ids) if t.state in _FINISHED]
        return rdb_trials(self.backend, study_id, ids, _FINISHED)

    def __getstate__(self) -> dict[str, Any]:  # storages are pickled; the views are rebuilt
        return {"store": self.store, "backend": self.backend, "refresh_every": self.refresh_every, "lean": self.lean}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["store"], state["backend"], state["refresh_every"], state.get("lean"))

"""Read side of the dashboard: studies and trials from an Optuna storage, cached.

Optuna never changes a finished trial (its attributes can no longer be set), so the
trials of a study are cached for the life of the process and a refresh fetches only
new trials, trials whose state changed, and unfinished ones. Refreshes are throttled
(``refresh_seconds``), so the half-dozen API calls of one page load share one.

On an RDB storage the refresh starts with one narrow query (id and state of newer and
unfinished trials) and loads the trials it needs with plain SELECTs over Optuna's own
tables through the storage's engine (:mod:`atml.dashboard.sql`: ``get_all_trials``
needs ~17 s for 10,000 trials here, the bulk read ~2-4 s, with equal results). Other
storages go through ``get_all_trials``. Study names and trial numbers from URLs are matched in Python and
never reach the database.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from atml import records
from atml.dashboard import sql
from atml.storage.optuna_internals import study_id, trial_id

__all__ = ["StudyNotFound", "TrialNotFound", "StudyRef", "Snapshot", "StudyOverview", "StudyReader"]

log = logging.getLogger(__name__)

FINISHED = frozenset({TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL})
_BULK_LIMIT = 400  # more trials to fetch than this: reload the study in one go


class StudyNotFound(LookupError):
    """No study of that name in the storage."""


class TrialNotFound(LookupError):
    """No trial of that number in the study."""


@dataclass(frozen=True)
class StudyRef:
    study_id: int
    name: str
    directions: tuple[str, ...]
    user_attrs: dict[str, Any]


@dataclass(frozen=True)
class StudyOverview:
    """One row of the studies list, from aggregates (no trial is loaded)."""

    ref: StudyRef
    counts: dict[str, int]
    best_value: float | None
    last_activity: dt.datetime | None


class Finished:
    """Aggregates over the finished trials of a study, folded in one trial at a time.

    Finished trials never change, so a refresh only adds the trials that finished since the
    last one: the page's polling costs O(changed trials), not O(all trials).
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.best_max: FrozenTrial | None = None
        self.best_min: FrozenTrial | None = None
        self.has_size = False
        self.last: dt.datetime | None = None  # naive local, as Optuna's datetimes
        self.workers: dict[str, dt.datetime] = {}  # worker -> end of its latest finished trial
        self.devices: dict[str, str] = {}  # worker -> the device its latest finished trial trained on
        self.complete: list[FrozenTrial] = []  # COMPLETE with a finite first value, by number

    def add(self, t: FrozenTrial) -> None:
        self.counts[t.state.name] = self.counts.get(t.state.name, 0) + 1
        ua = t.user_attrs
        if not self.has_size and isinstance(ua.get("onnx_kb"), int | float) and not isinstance(ua.get("onnx_kb"), bool):
            self.has_size = True
        end = t.datetime_complete or t.datetime_start
        if end is not None:
            if self.last is None or end > self.last:
                self.last = end
            w = ua.get(records.WORKER)
            if isinstance(w, str) and (w not in self.workers or end > self.workers[w]):
                self.workers[w] = end
                if (device := records.device(t)) is not None:
                    self.devices[w] = device
        if t.state == TrialState.COMPLETE and t.values and isinstance(t.values[0], float) and math.isfinite(t.values[0]):
            v = t.values[0]
            # ties: the lower trial number wins, whatever order the trials finished in
            if self.best_max is None or (v, -t.number) > (self.best_max.values[0], -self.best_max.number):
                self.best_max = t
            if self.best_min is None or (v, t.number) < (self.best_min.values[0], self.best_min.number):
                self.best_min = t
            if not self.complete or t.number > self.complete[-1].number:
                self.complete.append(t)
            else:
                bisect.insort(self.complete, t, key=lambda x: x.number)

    def copy(self) -> Finished:
        c = Finished()
        c.counts, c.workers, c.complete = dict(self.counts), dict(self.workers), list(self.complete)
        c.devices = dict(self.devices)
        c.best_max, c.best_min, c.has_size, c.last = self.best_max, self.best_min, self.has_size, self.last
        return c


@dataclass
class Snapshot:
    """The trials of one study at one moment; never mutated once published."""

    ref: StudyRef
    trials: list[FrozenTrial]
    version: str
    taken_at: float
    finished: Finished = field(default_factory=Finished, repr=False)
    shared: dict[Any, Any] = field(default_factory=dict, repr=False)  # the same dict for every snapshot of a study
    unfinished: list[FrozenTrial] = field(init=False, repr=False)
    counts: dict[str, int] = field(init=False)
    _memo: dict[Any, Any] = field(default_factory=dict, init=False, repr=False)
    _memo_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _key_locks: dict[Any, threading.Lock] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.unfinished = [t for t in self.trials if t.state not in FINISHED]
        counts = dict(self.finished.counts)
        for t in self.unfinished:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        self.counts = counts

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def by_number(self) -> dict[int, FrozenTrial]:
        return self.memo("by_number", lambda: {t.number: t for t in self.trials})

    def trial(self, number: int) -> FrozenTrial:
        try:
            return self.by_number[number]
        except KeyError:
            raise TrialNotFound(f"study {self.name!r} has no trial {number}") from None

    def memo(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per snapshot (figures, sort orders); callers share the result.

        One lock per key: a figure may use other memoized values while it is built.
        """
        try:
            return self._memo[key]
        except KeyError:
            pass
        with self._memo_lock:
            lock = self._key_locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._memo:
                self._memo[key] = compute()
            return self._memo[key]

    @property
    def best(self) -> FrozenTrial | None:
        """Best completed trial of a single-objective study (lowest number among ties)."""
        if len(self.ref.directions) != 1:
            return None
        return self.finished.best_max if self.ref.directions[0] == "maximize" else self.finished.best_min

    @property
    def complete(self) -> list[FrozenTrial]:
        """COMPLETE trials with a finite objective, by number."""
        return self.finished.complete

    @property
    def has_size(self) -> bool:
        return self.finished.has_size or any(isinstance(t.user_attrs.get("onnx_kb"), int | float) for t in self.unfinished)

    @property
    def last_activity(self) -> dt.datetime | None:
        stamps = [d for d in [self.finished.last, *(t.datetime_start for t in self.unfinished)] if d is not None]
        return max(stamps).astimezone() if stamps else None


def _signature(t: FrozenTrial) -> str:
    # repr, not ==: a NaN intermediate value would make every refresh look like a change.
    return repr((t.state, t.values, t.params, sorted(t.intermediate_values.items()),
                 sorted(t.user_attrs.items()), t.datetime_complete))


class _StudyCache:
    def __init__(self, study_id: int) -> None:
        self.study_id = study_id
        self.trials: dict[int, FrozenTrial] = {}  # trial_id -> trial
        self.signatures: dict[int, str] = {}
        self.counter = 0
        self.snapshot: Snapshot | None = None
        self.finished = Finished()
        self.shared: dict[Any, Any] = {}
        self.lock = threading.Lock()


class StudyReader:
    """Cached, read-mostly view of every study in ``storage``."""

    def __init__(self, storage: Any, *, refresh_seconds: float = 1.0) -> None:
        self.storage = storage
        self.refresh_seconds = refresh_seconds
        self._engine = getattr(storage, "engine", None)
        self._tables = sql.tables() if self._engine is not None else None
        self._nonce = os.urandom(4).hex()  # versions from an earlier process never match
        self._lock = threading.Lock()
        self._studies: tuple[float, list[StudyRef]] | None = None
        self._caches: dict[str, _StudyCache] = {}

    # -- studies -----------------------------------------------------------------------
    def studies(self, *, fresh: bool = False) -> list[StudyRef]:
        """Every study, re-read at most once per ``refresh_seconds``."""
        with self._lock:
            if not fresh and self._studies and time.monotonic() - self._studies[0] < self.refresh_seconds:
                return self._studies[1]
        refs = [
            StudyRef(
                study_id=study_id(s),
                name=s.study_name,
                directions=tuple(d.name.lower() for d in s.directions),
                user_attrs=dict(s.user_attrs),
            )
            for s in self.storage.get_all_studies()
        ]
        with self._lock:
            self._studies = (time.monotonic(), refs)
        return refs

    def study(self, name: str, *, fresh: bool = False) -> StudyRef:
        for ref in self.studies(fresh=fresh):
            if ref.name == name:
                return ref
        if not fresh:  # created a moment ago?
            return self.study(name, fresh=True)
        raise StudyNotFound(f"study {name!r} not found")

    def overview(self) -> list[StudyOverview]:
        """Counts by state, best value and last activity of every study."""
        refs = self.studies()
        if self._engine is None:
            out = []
            for ref in refs:
                snap = self.snapshot(ref.name)
                out.append(StudyOverview(ref, snap.counts, _best_value(snap), snap.last_activity))
            return out
        agg = sql.overview(self._engine, self._tables)
        out = []
        for ref in refs:
            counts, hi, lo, last = agg.get(ref.study_id, ({}, None, None, None))
            bv = (hi if ref.directions[0] == "maximize" else lo) if len(ref.directions) == 1 else None
            out.append(StudyOverview(ref, counts, bv, last.astimezone() if last else None))
        return out

    # -- trials ------------------------------------------------------------------------
    def snapshot(self, name: str, *, force: bool = False) -> Snapshot:
        """The study's trials, refreshed when the last refresh is older than ``refresh_seconds``."""
        ref = self.study(name)
        with self._lock:
            cache = self._caches.get(name)
            if cache is None or cache.study_id != ref.study_id:  # new, or deleted and re-created
                cache = self._caches[name] = _StudyCache(ref.study_id)
        with cache.lock:
            snap = cache.snapshot
            if not force and snap is not None and time.monotonic() - snap.taken_at < self.refresh_seconds:
                return snap
            if snap is not None:  # gate, avoid list, stop reason, notes live in the study's attrs
                try:
                    attrs = self.storage.get_study_user_attrs(ref.study_id)
                except KeyError:  # deleted a moment ago
                    raise StudyNotFound(f"study {name!r} not found") from None
                ref = dataclasses.replace(ref, user_attrs=attrs)
            changed = self._refresh(cache)
            attrs_key = json.dumps(ref.user_attrs, sort_keys=True, default=str)
            if changed or snap is None:
                cache.counter += 1
            version = hashlib.sha1(f"{self._nonce}:{ref.study_id}:{cache.counter}:{attrs_key}".encode()).hexdigest()[:16]
            same = snap is not None and not changed
            trials = snap.trials if same else sorted(cache.trials.values(), key=lambda t: t.number)
            new = Snapshot(ref=ref, trials=trials, version=version, taken_at=time.monotonic(),
                           finished=snap.finished if same else cache.finished.copy(), shared=cache.shared)
            if same and snap.version == version:
                new._memo, new._key_locks = snap._memo, snap._key_locks  # same trials, same figures
            cache.snapshot = new
            return new

    def invalidate(self, name: str) -> None:
        """Make the next read of ``name`` go to the storage (after a write)."""
        with self._lock:
            self._studies = None
            cache = self._caches.get(name)
        if cache is not None:
            with cache.lock:
                if cache.snapshot is not None:
                    cache.snapshot.taken_at = -1e9

    def _refresh(self, cache: _StudyCache) -> bool:
        if self._engine is None or self._tables is None:
            return self._replace_all(cache, self.storage.get_all_trials(cache.study_id, deepcopy=False))
        if not cache.trials:
            return self._replace_all(cache, sql.bulk_trials(self._engine, self._tables, cache.study_id))
        # Finished trials never change, so only newer trials and unfinished ones are asked for.
        unfinished = [tid for tid, t in cache.trials.items() if t.state not in FINISHED]
        rows = sql.trial_states(self._engine, self._tables, cache.study_id, after=max(cache.trials),
                           among=unfinished if len(unfinished) <= _BULK_LIMIT else None)
        need = [tid for tid, state in rows.items() if tid not in cache.trials or state not in FINISHED
                or cache.trials[tid].state != state]
        if len(need) > _BULK_LIMIT:
            return self._replace_all(cache, sql.bulk_trials(self._engine, self._tables, cache.study_id))
        if not need:
            return False
        changed = False
        for t in sql.bulk_trials(self._engine, self._tables, cache.study_id, trial_ids=need):
            old = cache.trials.get(trial_id(t))
            if old is not None and old.state in FINISHED:
                continue  # already folded in; finished trials do not change
            sig = t.state.name if t.state in FINISHED else _signature(t)
            if cache.signatures.get(trial_id(t)) != sig:
                cache.trials[trial_id(t)] = t
                cache.signatures[trial_id(t)] = sig
                if t.state in FINISHED:
                    cache.finished.add(t)
                changed = True
        return changed

    @staticmethod
    def _replace_all(cache: _StudyCache, trials: list[FrozenTrial]) -> bool:
        # Finished trials are immutable: their state identifies them; only unfinished ones need a signature.
        sigs = {trial_id(t): (t.state.name if t.state in FINISHED else _signature(t)) for t in trials}
        changed = sigs != cache.signatures
        cache.trials = {trial_id(t): t for t in trials}
        cache.signatures = sigs
        if changed:
            cache.finished = Finished()
            for t in sorted(trials, key=lambda t: t.number):
                if t.state in FINISHED:
                    cache.finished.add(t)
        return changed

    # -- heartbeats --------------------------------------------------------------------
    def heartbeat_ages(self, snap: Snapshot) -> dict[int, float]:
        """Seconds since the last heartbeat of each RUNNING trial (by number), where recorded."""
        running = {trial_id(t): t.number for t in snap.unfinished if t.state == TrialState.RUNNING}
        if not running or self._engine is None:
            return {}
        import sqlalchemy as sa

        hb = self._tables["heartbeats"]
        with self._engine.connect() as c:
            # Optuna writes heartbeats with the database's now(); compare with the same clock.
            now = c.execute(sa.select(sa.func.now())).scalar()
            rows = c.execute(sa.select(hb.c.trial_id, hb.c.heartbeat).where(hb.c.trial_id.in_(list(running)))).all()
        now = sql.naive(now)
        return {running[tid]: max(0.0, (now - sql.naive(beat)).total_seconds()) for tid, beat in rows if beat is not None}


def _best_value(snap: Snapshot) -> float | None:
    best = snap.best
    return best.values[0] if best is not None else None

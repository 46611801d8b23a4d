"""A storage that rides out outages: an Optuna ``BaseStorage`` wrapping another by composition.

Reads and idempotent writes (upserts) are retried with :func:`~atml.storage.retry.retrying`
for ``retry_wait`` seconds; finishing a trial is retried and a retry whose earlier attempt
did commit counts as a success; a heartbeat that cannot be written is logged instead of
killing Optuna's heartbeat thread. Every other ``BaseStorage`` method is passed through.

Heartbeats through Optuna's gRPC storage proxy: its protocol has no heartbeat call, so a
client wrapper (``relay_heartbeat``) sends each heartbeat as the reserved trial system
attribute :data:`HEARTBEAT_RELAY`, and the wrapper the proxy serves (one with heartbeats)
records that attribute in the database's heartbeat table instead of storing it. The
proxy then fails stale trials exactly as a worker on the database would
(:mod:`atml.storage.proxy`).

An RDB backend sits behind the cache Optuna itself puts in front of one: ``create_study``
and ``load_study`` add that cache only to an ``RDBStorage`` instance, which this wrapper
is not, and without it every sampler call would read the whole study.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Container, Sequence
from typing import Any, TypeVar

from optuna.distributions import BaseDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, Trial, TrialState

from atml.storage.finished import FinishedTrials, asks_finished_only
from atml.storage.lean import lean_sql
from atml.storage.optuna_internals import (
    BaseHeartbeat,
    FrozenStudy,
    cached,
    rdb_models,
    remember_user_attrs,
    study_storage,
)
from atml.storage.optuna_internals import study_id as storage_study_id
from atml.storage.optuna_internals import trial_id as storage_trial_id
from atml.storage.retry import first_line, is_transient, retrying

__all__ = ["ResilientStorage", "HEARTBEAT_RELAY", "study_user_attr", "study_user_attrs", "set_trial_user_attrs",
           "trial_counts"]

# The wire form of a heartbeat through a gRPC storage proxy: never stored as an attribute.
HEARTBEAT_RELAY = "atml.heartbeat"

log = logging.getLogger(__name__)

T = TypeVar("T")


class ResilientStorage(BaseStorage, BaseHeartbeat):
    """``backend`` (an ``RDBStorage`` or ``GrpcStorageProxy``) with retried reads and
    idempotent writes, a retried trial finish and a heartbeat that never raises.

    ``retry_wait`` is how long a call rides out an outage (0: no retries, errors reach
    the caller at once). Trial creation is not retried: it is not idempotent (a retried
    insert whose first commit went through would leave a RUNNING trial nobody owns);
    Optuna retries it itself and the worker loop retries the rest. Heartbeats are on
    when the backend has them (Optuna asks ``get_heartbeat_interval``), or with
    ``relay_heartbeat`` (seconds) for a backend without them: a gRPC proxy client, whose
    heartbeats the proxy records (see the module notes). ``finished_lag``: how late other
    processes' finished trials may be seen (:class:`~atml.storage.finished.FinishedTrials`)."""

    def __init__(self, backend: BaseStorage, *, retry_wait: float, relay_heartbeat: int | None = None,
                 finished_lag: float = 0.0) -> None:
        self.backend = backend
        self.retry_wait = retry_wait
        self._store = cached(backend)
        self._hb_logged: float | None = None
        self._relay = relay_heartbeat if not isinstance(self._store, BaseHeartbeat) else None
        self._lean = lean_sql(backend)  # one-statement writes, reads and counts (PostgreSQL, SQLite)
        self._finished = (FinishedTrials(self._store, backend, refresh_every=finished_lag, lean=self._lean)
                          if getattr(backend, "engine", None) is not None else None)

    @property
    def engine(self) -> Any:
        """The SQLAlchemy engine of an RDB backend, for bulk reads of Optuna's tables
        (AttributeError for a gRPC proxy, which has none)."""
        return self.backend.engine

    def _retry(self, fn: Callable[..., T], *args: Any) -> T:
        if self.retry_wait <= 0:
            return fn(*args)
        return retrying(fn, *args, what=f"storage.{fn.__name__}", max_wait=self.retry_wait)

    # -- studies --------------------------------------------------------------------------
    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        return self._store.create_new_study(directions, study_name)

    def delete_study(self, study_id: int) -> None:
        self._store.delete_study(study_id)
        if self._finished is not None:
            self._finished.forget(study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._retry(self._store.set_study_user_attr, study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._retry(self._store.set_study_system_attr, study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._retry(self._store.get_study_id_from_name, study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._retry(self._store.get_study_name_from_id, study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._retry(self._store.get_study_directions, study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._retry(self._store.get_study_user_attrs, study_id)

    def get_study_user_attr(self, study_id: int, key: str) -> Any:
        """One user attribute of a study (None when unset).

        On a database one row is read; ``get_study_user_attrs`` reads and parses every
        attribute, the stored space and the whole avoid list included, which a check
        made every epoch of every trial should not pay for. Other backends (the gRPC
        proxy) have no narrower call than that one."""
        return self.read_study_user_attrs(study_id, (key,)).get(key)

    def read_study_user_attrs(self, study_id: int, keys: Sequence[str]) -> dict[str, Any]:
        """The study's user attributes among ``keys`` (unset ones left out), in one read of
        those rows only where the storage is a database."""
        if getattr(self.backend, "engine", None) is None:
            attrs = self.get_study_user_attrs(study_id)
            return {k: attrs[k] for k in keys if k in attrs}
        return self._retry(self._read_study_user_attrs, study_id, tuple(keys))

    def _read_study_user_attrs(self, study_id: int, keys: tuple[str, ...]) -> dict[str, Any]:
        import sqlalchemy as sa

        t = rdb_models().StudyUserAttributeModel.__table__
        with self.backend.engine.connect() as con:
            rows = con.execute(sa.select(t.c.key, t.c.value_json).where(t.c.study_id == study_id,
                                                                        t.c.key.in_(keys))).all()
        return {k: json.loads(v) for k, v in rows}

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._retry(self._store.get_study_system_attrs, study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._retry(self._store.get_all_studies)

    # -- trials ---------------------------------------------------------------------------
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        tid = self._store.create_new_trial(study_id, template_trial)
        if self._lean is not None:
            self._lean.note_trial(tid, study_id)
        if self._finished is not None and template_trial is not None and template_trial.state.is_finished():
            self._finished.touch()
        return tid

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: BaseDistribution) -> None:
        if self._lean is not None:
            self._retry(self._lean.set_trial_param, trial_id, param_name, param_value_internal, distribution)
        else:
            self._retry(self._store.set_trial_param, trial_id, param_name, param_value_internal, distribution)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._retry(self._store.get_trial_id_from_study_id_trial_number, study_id, trial_number)

    def get_trial_number_from_id(self, trial_id: int) -> int:
        return self._retry(self._store.get_trial_number_from_id, trial_id)

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        return self._retry(self._store.get_trial_param, trial_id, param_name)

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        """Finish (or start) a trial; finishing is retried, and a retry whose earlier
        attempt did commit is a success."""
        try:
            return self._set_trial_state_values(trial_id, state, values)
        finally:
            if self._finished is not None and state.is_finished():
                self._finished.touch()  # this process's next read of finished trials sees it

    def _set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None) -> bool:
        # RUNNING (popping a WAITING trial) is left alone: a blind retry could hand the
        # same trial to two workers.
        if self.retry_wait <= 0 or not state.is_finished():
            return self._store.set_trial_state_values(trial_id, state, values)
        tries = 0

        def attempt() -> bool:
            nonlocal tries
            tries += 1
            if tries > 1:
                t = self.get_trial(trial_id)
                if t.state.is_finished():
                    # Ours if the values match. A FAIL cannot be told apart from another
                    # worker's stale-trial check: report it as taken, so no second retry.
                    if t.state == state and state.name != "FAIL" and (values is None or t.values == list(values)):
                        return True
                    raise UpdateFinishedTrialError(f"trial {t.number} already finished as {t.state.name}")
            return self._store.set_trial_state_values(trial_id, state, values)

        return retrying(attempt, what="storage.set_trial_state_values", max_wait=self.retry_wait)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        if self._lean is not None:
            self._retry(self._lean.set_trial_intermediate_value, trial_id, step, intermediate_value)
        else:
            self._retry(self._store.set_trial_intermediate_value, trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.set_trial_user_attrs(trial_id, {key: value})

    def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Set several user attributes of a running trial: one transaction on a database."""
        if self._lean is not None:
            self._retry(self._lean.set_trial_user_attrs, trial_id, attrs)
            return
        for key, value in attrs.items():
            self._retry(self._store.set_trial_user_attr, trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if key == HEARTBEAT_RELAY and self._heartbeat() is not None:
            self.record_heartbeat(trial_id)  # relayed by a gRPC proxy client: a heartbeat, not an attribute
            return
        self._retry(self._store.set_trial_system_attr, trial_id, key, value)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        # Optuna's cache reads a running trial (Trial(), tell, the callbacks) from the database
        # each time: on a database through LeanSQL, the same trial for a third of the CPU.
        if self._lean is not None:
            return self._retry(self._lean.get_trial, trial_id)
        return self._retry(self._store.get_trial, trial_id)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        """All trials (in ``states``), by number. Without RUNNING ones (what pruners and
        samplers ask for every epoch, and ``ask`` for WAITING trials) they come from
        :class:`~atml.storage.finished.FinishedTrials` on a database: Optuna's cache would
        re-read every running trial in full. With them, on PostgreSQL and SQLite, the
        finished ones come from there and the unfinished ones are read now in one read."""
        if self._finished is not None and asks_finished_only(states):
            trials = self._retry(self._finished.get_all_trials, study_id, states)
            return copy.deepcopy(trials) if deepcopy else trials
        if self._finished is not None and self._lean is not None:
            # With running trials (TPE's constant liar, every sample): those read now, in one read.
            trials = self._retry(self._finished.get_all_trials_live, study_id, states)
            return copy.deepcopy(trials) if deepcopy else trials
        return self._retry(self._store.get_all_trials, study_id, deepcopy, states)

    def trial_counts(self, study_id: int, states: Sequence[TrialState], flag: str,
                     below: int | None = None) -> dict[TrialState, tuple[int, int]]:
        """Per state in ``states``: the study's trials in it and how many of them have the user
        attribute ``flag`` true; ``below``: trials numbered lower only. Counted in the
        database where there is one: no trial is loaded."""
        if self._lean is not None:
            return self._retry(self._lean.trial_counts, study_id, states, flag, below)
        return _count(self.get_all_trials(study_id, deepcopy=False, states=tuple(states)), flag, below)

    def get_n_trials(self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None) -> int:
        return self._retry(self._store.get_n_trials, study_id, state)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._retry(self._store.get_best_trial, study_id)

    def get_trial_params(self, trial_id: int) -> dict[str, Any]:
        return self._retry(self._store.get_trial_params, trial_id)

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._retry(self._store.get_trial_user_attrs, trial_id)

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._retry(self._store.get_trial_system_attrs, trial_id)

    def remove_session(self) -> None:
        self._store.remove_session()

    def check_trial_is_updatable(self, trial_id: int, trial_state: TrialState) -> None:
        self._store.check_trial_is_updatable(trial_id, trial_state)

    # -- heartbeat ------------------------------------------------------------------------
    def _heartbeat(self) -> BaseHeartbeat | None:
        """The backend's heartbeat side; None for one without (the gRPC proxy)."""
        return self._store if isinstance(self._store, BaseHeartbeat) else None

    def record_heartbeat(self, trial_id: int) -> None:
        """Record a heartbeat (or relay it to a gRPC proxy); one that cannot be written is
        logged, never raised: Optuna's heartbeat thread would die, and the live trial be
        failed as stale by other workers."""
        hb = self._heartbeat()
        if hb is None and self._relay is None:
            return
        try:
            if hb is not None:
                hb.record_heartbeat(trial_id)
            else:
                self._store.set_trial_system_attr(trial_id, HEARTBEAT_RELAY, True)
        except Exception as e:
            now = time.monotonic()
            if self._hb_logged is None or now - self._hb_logged >= 30:
                self._hb_logged = now
                log.warning("heartbeat of trial id %d not recorded (%s); trying again in %s s",
                            trial_id, first_line(e), self.get_heartbeat_interval() or "?",
                            exc_info=not is_transient(e))

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        # Part of BaseHeartbeat's interface, private in Optuna: passed on as it is. A relaying
        # client finds none: the proxy holds the heartbeat table and fails stale trials itself.
        hb = self._heartbeat()
        return [] if hb is None else self._retry(hb._get_stale_trial_ids, study_id)

    def get_heartbeat_interval(self) -> int | None:
        hb = self._heartbeat()
        return self._relay if hb is None else hb.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self) -> Callable[[Study, FrozenTrial], None] | None:
        hb = self._heartbeat()
        return None if hb is None else hb.get_heartbeat_stale_trial_callback()


def study_user_attr(study: Study, key: str) -> Any:
    """One user attribute of ``study`` read from its storage now (None when unset): a
    single row where the storage is a :class:`ResilientStorage` over a database."""
    storage = study_storage(study)
    if isinstance(storage, ResilientStorage):
        return storage.get_study_user_attr(storage_study_id(study), key)
    return study.user_attrs.get(key)


def study_user_attrs(study: Study, keys: Sequence[str]) -> dict[str, Any]:
    """The user attributes of ``study`` among ``keys`` (unset ones left out), read from its
    storage now: only those rows where the storage is a :class:`ResilientStorage` over a database."""
    storage = study_storage(study)
    if isinstance(storage, ResilientStorage):
        return storage.read_study_user_attrs(storage_study_id(study), keys)
    attrs = study.user_attrs
    return {k: attrs[k] for k in keys if k in attrs}


def set_trial_user_attrs(trial: Any, attrs: dict[str, Any]) -> None:
    """Set several user attributes of a live ``trial`` at once: one transaction where its
    storage is a :class:`ResilientStorage` over a database, one call per attribute elsewhere
    (a fixed or frozen trial, another storage)."""
    storage = getattr(trial, "storage", None)
    if isinstance(storage, ResilientStorage) and isinstance(trial, Trial):
        storage.set_trial_user_attrs(storage_trial_id(trial), attrs)
        remember_user_attrs(trial, attrs)
        return
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def trial_counts(study: Study, states: Sequence[TrialState], flag: str,
                 below: int | None = None) -> dict[TrialState, tuple[int, int]]:
    """:meth:`ResilientStorage.trial_counts` of ``study`` (counted from its trials on any other storage)."""
    storage = study_storage(study)
    if isinstance(storage, ResilientStorage):
        return storage.trial_counts(storage_study_id(study), states, flag, below)
    return _count(study.get_trials(deepcopy=False, states=tuple(states)), flag, below)


def _count(trials: Sequence[FrozenTrial], flag: str, below: int | None) -> dict[TrialState, tuple[int, int]]:
    out: dict[TrialState, tuple[int, int]] = {}
    for t in trials:
        if below is None or t.number < below:
            n, f = out.get(t.state, (0, 0))
            out[t.state] = (n + 1, f + bool(t.user_attrs.get(flag)))
    return out

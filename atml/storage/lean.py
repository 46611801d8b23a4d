"""A trial's hot-path writes, its reads and the budget count, in short SQL statements.

Every epoch of every trial reports an intermediate value, and a trained trial records a
dozen attributes. Through Optuna's ``RDBStorage`` each such write is an ORM session of its
own: load the trial row, check it is still running, look the old row up, add or update it,
commit; 1.6-2 ms of the worker's CPU per write on PostgreSQL, and with a few dozen writes
per trial it was most of a trial's storage cost. Here an intermediate value or a parameter
is one ``INSERT ... SELECT ... WHERE`` the trial is still running (when nothing is written,
the trial's state is read to raise Optuna's own error), and the attributes a trial records
together are one upsert after the same state check. A parameter is checked against the
distribution the study first stored for it, as Optuna checks it, that distribution read
once per process. Trials are read with six statements for any number of them (the trial
rows, then values, parameters, user and system attributes, intermediate values) instead
of ORM objects and their lazy loads.

The budget checks (done, running, skipped trials) were reads of every running trial in
full through Optuna's cache, once per trial and per worker: with W workers that is W
trials loaded per check. :meth:`LeanSQL.trial_counts` counts them in the database instead.

Only PostgreSQL and SQLite (3.24+, for its upsert) take this path: :func:`lean_sql` gives
None for any other back-end, whose storage keeps Optuna's own calls. The tables, columns
and value encodings are Optuna's own (:func:`~atml.storage.optuna_internals.rdb_models`),
so Optuna reads what is written here exactly as if it had written it (tests/storage/test_lean.py
compares the two).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from optuna import distributions
from optuna.distributions import BaseDistribution
from optuna.exceptions import StorageInternalError
from optuna.trial import FrozenTrial, TrialState

from atml.storage.optuna_internals import rdb_models

__all__ = ["LeanSQL", "lean_sql"]


def lean_sql(backend: Any) -> LeanSQL | None:
    """A :class:`LeanSQL` over ``backend`` (an ``RDBStorage``); None where it does not apply
    (a gRPC proxy client, a back-end other than PostgreSQL and SQLite 3.24+)."""
    engine = getattr(backend, "engine", None)
    if engine is None:
        return None
    name = engine.dialect.name
    if name == "postgresql" or (name == "sqlite" and sqlite3.sqlite_version_info >= (3, 24, 0)):
        return LeanSQL(backend)
    return None


class LeanSQL:
    """Hot-path writes and counts on Optuna's tables of the ``RDBStorage`` ``backend``."""

    def __init__(self, backend: Any) -> None:
        import sqlalchemy as sa

        self.backend = backend
        m = rdb_models()
        self.trials = m.TrialModel.__table__
        self.user_attrs = m.TrialUserAttributeModel.__table__
        self.values = m.TrialIntermediateValueModel.__table__
        self.params = m.TrialParamModel.__table__
        self._m = m
        self._known: dict[tuple[int, str], BaseDistribution] = {}  # (study id, parameter): its distribution
        self._stored_repr = m.TrialIntermediateValueModel.intermediate_value_to_stored_repr
        # Built once with bound parameters: SQLAlchemy then compiles each statement once per
        # process (a statement built per call is compiled per call, most of its CPU).
        if backend.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        t, p = self.trials, self.params
        self._state = sa.select(t.c.state, t.c.study_id).where(t.c.trial_id == sa.bindparam("trial_id"))
        self._first_param = (sa.select(p.c.distribution_json).join(t, t.c.trial_id == p.c.trial_id)
                             .where(t.c.study_id == sa.bindparam("study_id"), p.c.param_name == sa.bindparam("name"))
                             .limit(1))
        ids = sa.bindparam("ids", expanding=True)
        v, u, y = m.TrialValueModel.__table__, self.user_attrs, m.TrialSystemAttributeModel.__table__
        iv = self.values
        self._read = (
            sa.select(t.c.trial_id, t.c.number, t.c.state, t.c.datetime_start, t.c.datetime_complete)
            .where(t.c.trial_id.in_(ids)).order_by(t.c.number),
            sa.select(v.c.trial_id, v.c.value, v.c.value_type).where(v.c.trial_id.in_(ids)).order_by(v.c.objective),
            sa.select(p.c.trial_id, p.c.param_name, p.c.param_value, p.c.distribution_json)
            .where(p.c.trial_id.in_(ids)).order_by(p.c.param_id),
            sa.select(u.c.trial_id, u.c.key, u.c.value_json).where(u.c.trial_id.in_(ids))
            .order_by(u.c.trial_user_attribute_id),
            sa.select(y.c.trial_id, y.c.key, y.c.value_json).where(y.c.trial_id.in_(ids))
            .order_by(y.c.trial_system_attribute_id),
            sa.select(iv.c.trial_id, iv.c.step, iv.c.intermediate_value, iv.c.intermediate_value_type)
            .where(iv.c.trial_id.in_(ids)).order_by(iv.c.step),
        )
        ins = insert(self.user_attrs)
        self._set_attrs = ins.on_conflict_do_update(index_elements=["trial_id", "key"],
                                                    set_={"value_json": ins.excluded.value_json})
        # A value and a parameter are inserted only if the trial is live, in the same statement
        # (INSERT ... SELECT ... FROM trials WHERE state is RUNNING or WAITING): one round trip
        # per epoch; when no row is written, the state is read to raise Optuna's error.
        ins = insert(self.values).from_select(
            ["trial_id", "step", "intermediate_value", "intermediate_value_type"],
            self._if_live(self.values, ["trial_id", "step", "intermediate_value", "intermediate_value_type"]))
        # (preserve_rowcount: SQLAlchemy reports an INSERT's row count only when asked)
        self._set_value = ins.on_conflict_do_update(
            index_elements=["trial_id", "step"],
            set_={"intermediate_value": ins.excluded.intermediate_value,
                  "intermediate_value_type": ins.excluded.intermediate_value_type},
        ).execution_options(preserve_rowcount=True)
        self._set_param = insert(p).from_select(
            ["trial_id", "param_name", "param_value", "distribution_json"],
            self._if_live(p, ["trial_id", "param_name", "param_value", "distribution_json"]),
        ).on_conflict_do_nothing(index_elements=["trial_id", "param_name"]).execution_options(preserve_rowcount=True)
        self._study_of: dict[int, int] = {}  # trial id -> study id, for the trials this process wrote

    def _if_live(self, table: Any, cols: list[str]) -> Any:
        """``SELECT :col, ... FROM trials WHERE trial_id = :trial_id AND state is live``."""
        import sqlalchemy as sa

        t = self.trials
        binds = {c: sa.bindparam(c, type_=table.c[c].type) for c in cols}
        return sa.select(*binds.values()).where(t.c.trial_id == binds["trial_id"],
                                                t.c.state.in_([TrialState.RUNNING, TrialState.WAITING]))

    def __getstate__(self) -> dict[str, Any]:  # storages are pickled; the statements are rebuilt
        return {"backend": self.backend}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["backend"])

    @contextmanager
    def _transaction(self, trial_id: int) -> Iterator[Any]:
        """One transaction writing to ``trial_id``; a database error comes out wrapped in
        StorageInternalError, as from Optuna (its cause kept, so a transient one is still retried)."""
        from sqlalchemy.exc import SQLAlchemyError

        try:
            with self.backend.engine.begin() as con:
                yield con
        except SQLAlchemyError as e:
            raise StorageInternalError(f"writing trial id {trial_id} failed: {type(e).__name__}") from e

    def set_trial_user_attrs(self, trial_id: int, attrs: Mapping[str, Any]) -> None:
        """Set several user attributes of a running trial in one transaction."""
        if not attrs:
            return
        rows = [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]
        with self._transaction(trial_id) as con:
            self._check(con, trial_id)
            con.execute(self._set_attrs, rows)

    def set_trial_intermediate_value(self, trial_id: int, step: int, value: float) -> None:
        """Report a running trial's value at ``step`` (a second report of a step replaces it)."""
        stored, kind = self._stored_repr(value)
        self._write_if_live(self._set_value, {"trial_id": trial_id, "step": step, "intermediate_value": stored,
                                              "intermediate_value_type": kind})

    def _write_if_live(self, stmt: Any, row: dict[str, Any]) -> None:
        """Run an insert that writes only to a live trial; if it wrote nothing, raise what
        Optuna raises (an unknown or finished trial), else it was a repeated write, ignored."""
        with self._transaction(row["trial_id"]) as con:
            if con.execute(stmt, row).rowcount < 1:
                self._check(con, row["trial_id"])

    def _check(self, con: Any, trial_id: int) -> int:
        """The trial's study id; KeyError / UpdateFinishedTrialError for an unknown / finished trial."""
        row = con.execute(self._state, {"trial_id": trial_id}).first()
        if row is None:
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        self.backend.check_trial_is_updatable(trial_id, row[0])
        self._study_of[trial_id] = row[1]
        return row[1]

    def note_trial(self, trial_id: int, study_id: int) -> None:
        """``trial_id`` (just created here) belongs to ``study_id``: its parameters need not look it up."""
        if len(self._study_of) > 10_000:
            self._study_of.clear()
        self._study_of[trial_id] = study_id

    def set_trial_param(self, trial_id: int, name: str, value: float, distribution: BaseDistribution) -> None:
        """Record a running trial's parameter, as Optuna does: its distribution must be
        compatible with the one the study's first trial with that parameter stored (read
        once per study and parameter in this process), and a second write of it is ignored."""
        row = {"trial_id": trial_id, "param_name": name, "param_value": value,
               "distribution_json": distributions.distribution_to_json(distribution)}
        with self._transaction(trial_id) as con:
            study_id = self._study_of.get(trial_id)
            if study_id is None:
                study_id = self._check(con, trial_id)
            known = self._known.get((study_id, name))
            if known is None:
                stored = con.execute(self._first_param, {"study_id": study_id, "name": name}).scalar()
                known = distributions.json_to_distribution(stored) if stored is not None else None
            if known is not None:
                distributions.check_distribution_compatibility(known, distribution)
            if con.execute(self._set_param, row).rowcount < 1:
                self._check(con, trial_id)  # finished (or gone): Optuna's error; else a repeat, ignored
        self._known.setdefault((study_id, name), known or distribution)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        """The trial as ``RDBStorage.get_trial`` builds it (KeyError when there is none)."""
        got = self.get_trials([trial_id])
        if not got:
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        return got[0]

    def get_trials(self, trial_ids: Iterable[int]) -> list[FrozenTrial]:
        """The trials with these ids that exist, by number, as Optuna's storage builds them:
        six statements on one connection for any number of trials (Optuna's ORM read loads
        each table through lazy relationship loads and builds an object per row)."""
        from sqlalchemy.exc import SQLAlchemyError

        ids = sorted(set(trial_ids))
        if not ids:
            return []
        m, arg = self._m, {"ids": ids}
        try:
            with self.backend.engine.connect() as con:
                heads = con.execute(self._read[0], arg).all()
                rows = [con.execute(q, arg).all() for q in self._read[1:]] if heads else [[]] * 5
        except SQLAlchemyError as e:
            raise StorageInternalError(f"reading trial ids {ids[:5]}... failed: {type(e).__name__}") from e
        parts: dict[int, dict[str, Any]] = {
            h.trial_id: {"values": [], "params": {}, "dists": {}, "user": {}, "system": {}, "inter": {}} for h in heads}
        values, params, user, system, inter = rows
        for tid, x, kind in values:
            parts[tid]["values"].append(m.TrialValueModel.stored_repr_to_value(x, kind))
        for tid, name, x, d in params:
            dist = parts[tid]["dists"][name] = distributions.json_to_distribution(d)
            parts[tid]["params"][name] = dist.to_external_repr(x)
        for key, table in (("user", user), ("system", system)):
            for tid, k, x in table:
                parts[tid][key][k] = json.loads(x)
        for tid, step, x, kind in inter:
            parts[tid]["inter"][step] = m.TrialIntermediateValueModel.stored_repr_to_intermediate_value(x, kind)
        out = []
        for h in heads:
            q = parts[h.trial_id]
            out.append(FrozenTrial(
                number=h.number, state=h.state, value=None, values=q["values"] or None,
                datetime_start=h.datetime_start, datetime_complete=h.datetime_complete,
                params=q["params"], distributions=q["dists"], user_attrs=q["user"], system_attrs=q["system"],
                intermediate_values=q["inter"], trial_id=h.trial_id))
        return out

    def trial_counts(self, study_id: int, states: Iterable[TrialState], flag: str,
                     below: int | None = None) -> dict[TrialState, tuple[int, int]]:
        """Per state: how many trials of the study are in it, and how many of those carry
        the user attribute ``flag`` set to true; ``below``: only trials numbered lower."""
        import sqlalchemy as sa

        t, a = self.trials, self.user_attrs
        flagged = sa.exists().where(a.c.trial_id == t.c.trial_id, a.c.key == flag, a.c.value_json == "true")
        cond = [t.c.study_id == study_id, t.c.state.in_(list(states))]
        if below is not None:
            cond.append(t.c.number < below)
        q = (sa.select(t.c.state, sa.func.count(), sa.func.sum(sa.case((flagged, 1), else_=0)))
             .where(*cond).group_by(t.c.state))
        with self.backend.engine.connect() as con:
            return {state: (int(n), int(f or 0)) for state, n, f in con.execute(q)}

"""Narrow SQL over Optuna's own RDB tables, through the storage's engine.

``RDBStorage.get_all_trials`` builds ORM objects: ~17 s for a 10,000-trial study on this
machine. :func:`bulk_trials` reads the same rows with six plain SELECTs and builds equal
``FrozenTrial`` objects (tests compare it with ``get_all_trials`` on SQLite and
PostgreSQL) in ~2-4 s; :func:`trial_states` is the cheap probe a refresh starts with;
:func:`overview` gives the studies list without loading any trial. The table objects are
Optuna's (``optuna.storages._rdb.models``), so column types and enums match; without that
module the dashboard falls back to the storage API.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.trial import FrozenTrial, TrialState

__all__ = ["tables", "trial_states", "bulk_trials", "overview", "naive"]


def naive(d: Any) -> dt.datetime:
    """A database timestamp as a naive datetime (SQLite may hand back text)."""
    if isinstance(d, str):  # SQLite without a typed column
        d = dt.datetime.fromisoformat(d)
    return d.replace(tzinfo=None)


def tables() -> dict[str, Any] | None:
    try:
        from atml.storage.optuna_internals import rdb_models

        m = rdb_models()
    except ImportError:  # a future optuna without this module: use the storage API only
        return None
    return {
        "trials": m.TrialModel.__table__,
        "params": m.TrialParamModel.__table__,
        "values": m.TrialValueModel.__table__,
        "user_attrs": m.TrialUserAttributeModel.__table__,
        "system_attrs": m.TrialSystemAttributeModel.__table__,
        "intermediate": m.TrialIntermediateValueModel.__table__,
        "heartbeats": m.TrialHeartbeatModel.__table__,
        "value_model": m.TrialValueModel,
        "intermediate_model": m.TrialIntermediateValueModel,
    }


def _utc_to_local(d: dt.datetime | None) -> dt.datetime | None:
    # Optuna stores naive UTC and hands out naive local time; do exactly the same.
    if d is None:
        return None
    return d.replace(tzinfo=dt.UTC).astimezone().replace(tzinfo=None)


def trial_states(engine: Any, tables: Any, study_id: int, *, after: int = -1,
                among: list[int] | None = None) -> dict[int, TrialState]:
    """State of the study's trials with id > ``after`` or in ``among`` (None: every unfinished one)."""
    import sqlalchemy as sa

    t = tables["trials"]
    if among is None:
        cond = sa.or_(t.c.trial_id > after, t.c.state.in_([TrialState.RUNNING, TrialState.WAITING]))
    elif among:
        cond = sa.or_(t.c.trial_id > after, t.c.trial_id.in_(among))
    else:
        cond = t.c.trial_id > after
    with engine.connect() as c:
        return dict(c.execute(sa.select(t.c.trial_id, t.c.state).where(t.c.study_id == study_id, cond)).all())


def bulk_trials(engine: Any, tables: Any, study_id: int, trial_ids: list[int] | None = None) -> list[FrozenTrial]:
    """FrozenTrials equal to ``RDBStorage.get_all_trials`` (or of ``trial_ids``), read in bulk."""
    import sqlalchemy as sa

    t, p, v, ua, sa_, iv = (tables[k] for k in ("trials", "params", "values", "user_attrs", "system_attrs", "intermediate"))
    value_of = tables["value_model"].stored_repr_to_value
    inter_of = tables["intermediate_model"].stored_repr_to_intermediate_value

    def where(q: Any, col: Any) -> Any:
        if trial_ids is not None:
            return q.where(col.in_(trial_ids))
        return q.join(t, t.c.trial_id == col).where(t.c.study_id == study_id)

    with engine.connect() as c:
        base = sa.select(t.c.trial_id, t.c.number, t.c.state, t.c.datetime_start, t.c.datetime_complete)
        base = base.where(t.c.trial_id.in_(trial_ids)) if trial_ids is not None else base.where(t.c.study_id == study_id)
        trials = c.execute(base.order_by(t.c.trial_id)).all()
        params = c.execute(where(sa.select(p.c.trial_id, p.c.param_name, p.c.param_value, p.c.distribution_json), p.c.trial_id)
                           .order_by(p.c.param_id)).all()
        values = c.execute(where(sa.select(v.c.trial_id, v.c.objective, v.c.value, v.c.value_type), v.c.trial_id)).all()
        uattrs = c.execute(where(sa.select(ua.c.trial_id, ua.c.key, ua.c.value_json), ua.c.trial_id)).all()
        sattrs = c.execute(where(sa.select(sa_.c.trial_id, sa_.c.key, sa_.c.value_json), sa_.c.trial_id)).all()
        inter = c.execute(where(sa.select(iv.c.trial_id, iv.c.step, iv.c.intermediate_value, iv.c.intermediate_value_type),
                                iv.c.trial_id)).all()
    dists: dict[str, BaseDistribution] = {}
    par: dict[int, dict[str, Any]] = {}
    pdist: dict[int, dict[str, BaseDistribution]] = {}
    for tid, name, value, djson in params:
        d = dists.get(djson)
        if d is None:
            d = dists[djson] = json_to_distribution(djson)
        par.setdefault(tid, {})[name] = d.to_external_repr(value)
        pdist.setdefault(tid, {})[name] = d
    vals: dict[int, dict[int, float]] = {}
    for tid, obj, value, vtype in values:
        vals.setdefault(tid, {})[obj] = value_of(value, vtype)
    ua_by: dict[int, dict[str, Any]] = {}
    for tid, key, vj in uattrs:
        ua_by.setdefault(tid, {})[key] = json.loads(vj)
    sa_by: dict[int, dict[str, Any]] = {}
    for tid, key, vj in sattrs:
        sa_by.setdefault(tid, {})[key] = json.loads(vj)
    iv_by: dict[int, dict[int, float]] = {}
    for tid, step, value, vtype in inter:
        iv_by.setdefault(tid, {})[step] = inter_of(value, vtype)
    out = []
    for tid, number, state, start, complete in trials:
        vs = vals.get(tid)
        out.append(FrozenTrial(
            number=number, state=state, value=None,
            values=[vs[i] for i in range(len(vs))] if vs else None,
            datetime_start=_utc_to_local(start), datetime_complete=_utc_to_local(complete),
            params=par.get(tid, {}), distributions=pdist.get(tid, {}), user_attrs=ua_by.get(tid, {}),
            system_attrs=sa_by.get(tid, {}), intermediate_values=iv_by.get(tid, {}), trial_id=tid,
        ))
    return out


def overview(engine: Any, tables: Any) -> dict[int, tuple[dict[str, int], float | None, float | None, dt.datetime | None]]:
    """study_id -> (counts by state, max and min finite first value of COMPLETE trials, last activity in UTC)."""
    import sqlalchemy as sa

    t, v = tables["trials"], tables["values"]
    finite = tables["value_model"].TrialValueType.FINITE
    with engine.connect() as c:
        counts = c.execute(sa.select(t.c.study_id, t.c.state, sa.func.count(), sa.func.max(t.c.datetime_start),
                                     sa.func.max(t.c.datetime_complete)).group_by(t.c.study_id, t.c.state)).all()
        best = c.execute(
            sa.select(t.c.study_id, sa.func.max(v.c.value), sa.func.min(v.c.value))
            .join(t, t.c.trial_id == v.c.trial_id)
            .where(t.c.state == TrialState.COMPLETE, v.c.objective == 0, v.c.value_type == finite)
            .group_by(t.c.study_id)).all()
    out: dict[int, Any] = {}
    for sid, state, n, start, complete in counts:
        cnt, hi, lo, last = out.get(sid, ({}, None, None, None))
        cnt[state.name] = n
        for d in (start, complete):
            if d is not None:
                d = naive(d).replace(tzinfo=dt.UTC)
                if last is None or d > last:
                    last = d
        out[sid] = (cnt, hi, lo, last)
    for sid, hi, lo in best:
        cnt, _, _, last = out.get(sid, ({}, None, None, None))
        out[sid] = (cnt, hi, lo, last)
    return out

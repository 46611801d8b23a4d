"""Snapshots -> plain JSON-safe dicts (what the API returns and the pages render).

No web framework here: the API wraps these dicts in pydantic models, the templates read
them directly. Non-finite floats become ``None`` (JSON has no NaN).
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from optuna.trial import FrozenTrial, TrialState

from atml import records
from atml.dashboard.reader import Snapshot, StudyOverview, StudyRef
from atml.metrics import subject_sort_key

__all__ = [
    "json_safe", "study_info", "overview_row", "trial_row", "trial_detail", "summary", "trial_page",
    "gate_folders", "avoid_entries", "notes", "SORT_KEYS",
]

RECENT_SECONDS = 600  # a worker that finished a trial this recently counts as seen
SORT_KEYS = ("number", "value", "state", "duration", "datetime_start", "datetime_complete", "n_params", "onnx_kb")


def json_safe(v: Any) -> Any:
    """Plain JSON: NaN/inf -> None, tuples -> lists, unknown objects -> str."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [json_safe(x) for x in v]
    if isinstance(v, dt.datetime):
        return _iso(v)
    return str(v)


def _iso(d: dt.datetime | None) -> str | None:
    if d is None:
        return None
    if d.tzinfo is None:  # Optuna hands out naive local time
        d = d.astimezone()
    return d.isoformat(timespec="seconds")


def study_info(ref: StudyRef) -> dict[str, Any]:
    """What the stored search space says: metric, direction(s), budget, data classes.

    Read as plain data, each field on its own: a page must show any study, also one
    whose space another version wrote (validating it would reject that one whole).
    """
    ua = ref.user_attrs
    space = records.stored_space(ua) or {}
    raw = space.get("raw", {})
    raw = raw if isinstance(raw, dict) else {}
    st = raw.get("study") if isinstance(raw.get("study"), dict) else {}
    budget = raw.get("budget") if isinstance(raw.get("budget"), dict) else {}
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    metric = ua.get(records.METRIC) or st.get("metric") or "objective"
    classes = data.get("classes") if isinstance(data.get("classes"), list) and len(data.get("classes")) == 2 else None
    n_trials = budget.get("n_trials")
    timeout = budget.get("timeout")
    return {
        "name": ref.name,
        "directions": list(ref.directions),
        "metric": str(metric),
        "source": space.get("source"),
        "n_trials": n_trials if isinstance(n_trials, int) and not isinstance(n_trials, bool) else None,
        "timeout": float(timeout) if isinstance(timeout, int | float) and not isinstance(timeout, bool) else None,
        "deadline": records.deadline(ua),
        "stop_reason": records.stop_reason(ua),
        "classes": [str(c) for c in classes] if classes else ["negative", "positive"],
        "sampler": st.get("sampler", {}).get("type") if isinstance(st.get("sampler"), dict) else None,
        "pruner": st.get("pruner", {}).get("type") if isinstance(st.get("pruner"), dict) else None,
        "atml": records.SPACE in ua,
    }


def overview_row(ov: StudyOverview) -> dict[str, Any]:
    info = study_info(ov.ref)
    return {
        "name": ov.ref.name, "directions": info["directions"], "metric": info["metric"],
        "counts": dict(ov.counts), "n_trials": sum(ov.counts.values()), "budget": info["n_trials"],
        "best_value": json_safe(ov.best_value), "last_activity": _iso(ov.last_activity),
        "stop_reason": info["stop_reason"],
    }


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def _duration(t: FrozenTrial) -> float | None:
    if t.datetime_start is None:
        return None
    end = t.datetime_complete or (dt.datetime.now() if t.state == TrialState.RUNNING else None)
    return None if end is None else round((end - t.datetime_start).total_seconds(), 3)


def trial_row(t: FrozenTrial) -> dict[str, Any]:
    """One line of the trials table."""
    ua = t.user_attrs
    metrics = ua.get("metrics") if isinstance(ua.get("metrics"), dict) else {}
    values = t.values
    return {
        "number": t.number,
        "state": t.state.name,
        "value": json_safe(values[0]) if values else None,
        "values": [json_safe(v) for v in values] if values else None,
        "params": json_safe(t.params),
        "metrics": {str(k): _num(v) for k, v in metrics.items()},
        "datetime_start": _iso(t.datetime_start),
        "datetime_complete": _iso(t.datetime_complete),
        "duration": _duration(t),
        "worker": ua.get(records.WORKER) if isinstance(ua.get(records.WORKER), str) else None,
        "n_params": ua.get("n_params") if isinstance(ua.get("n_params"), int) else None,
        "onnx_kb": _num(ua.get("onnx_kb")),
        "epochs": len(t.intermediate_values),
        "reason": records.reason(t),
    }


def _sort_key(field: str) -> Any:
    def get(t: FrozenTrial) -> Any:
        if field == "number":
            return t.number
        if field == "value":
            return t.values[0] if t.values else None
        if field == "state":
            return t.state.name
        if field == "duration":
            return _duration(t)
        if field in ("datetime_start", "datetime_complete"):
            return getattr(t, field)
        if field in ("n_params", "onnx_kb"):
            return t.user_attrs.get(field)
        if field.startswith("metric."):
            m = t.user_attrs.get("metrics")
            return m.get(field[7:]) if isinstance(m, dict) else None
        if field.startswith("param."):
            return t.params.get(field[6:])
        return None

    def key(t: FrozenTrial) -> tuple[int, Any]:
        v = get(t)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return (2, 0)
        if isinstance(v, bool | int | float):
            return (0, float(v))
        if isinstance(v, dt.datetime):
            return (0, v.timestamp())
        return (1, str(v))

    return key


def trial_page(snap: Snapshot, *, states: Iterable[str] | None = None, sort: str = "number", order: str = "asc",
               offset: int = 0, limit: int = 50) -> dict[str, Any]:
    """A sorted, filtered page of the trials table; the sorted order is kept per snapshot."""
    wanted = tuple(sorted(set(states))) if states else ()

    def ordered() -> list[FrozenTrial]:
        rows = [t for t in snap.trials if not wanted or t.state.name in wanted]
        if sort == "number":  # the snapshot is in number order already
            return rows[::-1] if order == "desc" else rows
        key = _sort_key(sort)
        keyed = [(key(t), t.number, t) for t in rows]
        present = [k for k in keyed if k[0][0] != 2]
        missing = [k for k in keyed if k[0][0] == 2]
        present.sort(key=lambda k: (k[0], k[1]), reverse=order == "desc")
        missing.sort(key=lambda k: k[1])
        return [k[2] for k in present + missing]

    # RUNNING durations change every second; never keep an order sorted on them.
    rows = ordered() if sort == "duration" else snap.memo(("order", wanted, sort, order), ordered)
    page = rows[offset:offset + limit]
    return {"total": len(rows), "offset": offset, "limit": limit, "sort": sort, "order": order,
            "states": list(wanted), "items": [trial_row(t) for t in page]}


def _file_url(study: str, rel: str) -> str:
    return f"/api/studies/{quote(study, safe='')}/files/{quote(rel)}"


def gate_folders(ref: StudyRef, artifacts: Path | None) -> list[dict[str, Any]]:
    """Gate folders recorded on the study, with a link for each file that is on disk here."""
    out = []
    for key, g in records.gate_records(ref.user_attrs):
        folder = str(g.get("folder") or key)
        files = []
        names = g.get("files") if isinstance(g.get("files"), list) else []
        for name in names:
            name = str(name)
            rel = f"gate/{folder}/{name}"
            path = artifacts / ref.name / rel if artifacts is not None else None
            ok = path is not None and path.is_file()
            files.append({"name": name, "url": _file_url(ref.name, rel) if ok else None,
                          "size": path.stat().st_size if ok else None})
        trial = g.get("trial")
        out.append({"key": key, "folder": folder, "trial": trial if isinstance(trial, int) else None,
                    "metrics": {str(k): _num(v) for k, v in (g.get("metrics") or {}).items()}
                    if isinstance(g.get("metrics"), dict) else {},
                    "files": files})
    out.sort(key=lambda g: g["folder"], reverse=True)
    return out


def avoid_entries(ref: StudyRef) -> list[dict[str, Any]]:
    """The avoid list, by trial; an entry written by hand may lack any field."""
    out = []
    for key, a in records.avoid_records(ref.user_attrs):
        trial = a.get("trial")
        out.append({"key": key, "trial": trial if isinstance(trial, int) and not isinstance(trial, bool) else None,
                    "params": json_safe(a.get("params")) if isinstance(a.get("params"), dict) else {},
                    "reason": str(a.get("reason")) if a.get("reason") is not None else None,
                    "metrics": {str(k): _num(v) for k, v in (a.get("metrics") or {}).items()}
                    if isinstance(a.get("metrics"), dict) else {}})
    out.sort(key=lambda a: (a["trial"] is None, a["trial"] or 0, a["key"]))
    return out


def notes(ref: StudyRef, trial: int | None = None, *, all_trials: bool = True) -> list[dict[str, Any]]:
    """Notes on the study (``trial`` None: every note when ``all_trials``) or on one trial."""
    out = []
    for key, n in records.note_records(ref.user_attrs):
        t = n.get("trial") if isinstance(n.get("trial"), int) else None
        if trial is not None and t != trial:
            continue
        if trial is None and not all_trials and t is not None:
            continue
        out.append({"id": key, "text": str(n.get("text", "")), "trial": t, "time": n.get("time")
                    if isinstance(n.get("time"), str) else None})
    out.sort(key=lambda n: n["time"] or "")
    return out


def _workers(snap: Snapshot, ages: dict[int, float]) -> list[dict[str, Any]]:
    """Workers running a trial now, or that finished one in the last ``RECENT_SECONDS``."""
    now = dt.datetime.now()
    seen: dict[str, dict[str, Any]] = {}

    def entry(w: str) -> dict[str, Any]:
        return seen.setdefault(w, {"worker": w, "device": snap.finished.devices.get(w), "running": [],
                                   "heartbeat_age": None, "last_seen": None})

    for w, end in snap.finished.workers.items():
        if (now - end).total_seconds() < RECENT_SECONDS:
            entry(w)["last_seen"] = end
    for t in snap.unfinished:
        w = t.user_attrs.get(records.WORKER)
        if t.state != TrialState.RUNNING or not isinstance(w, str):
            continue
        cur = entry(w)
        cur["running"].append(t.number)
        cur["device"] = records.device(t) or cur["device"]
        age = ages.get(t.number)
        if age is not None and (cur["heartbeat_age"] is None or age < cur["heartbeat_age"]):
            cur["heartbeat_age"] = round(age, 1)
        last = now - dt.timedelta(seconds=age) if age is not None else t.datetime_start
        if last is not None and (cur["last_seen"] is None or last > cur["last_seen"]):
            cur["last_seen"] = last
    out = []
    for w in seen.values():
        w["last_seen"] = _iso(w["last_seen"])
        out.append(w)
    out.sort(key=lambda w: (not w["running"], w["worker"]))
    return out


def end_reason(stop_reason: str | None, n_trials: int | None, done: int, running: int,
               deadline: float | None) -> str | None:
    """Why a study has ended (None while it has budget left or trials running)."""
    if stop_reason:
        return stop_reason
    if running:
        return None
    if n_trials and done >= n_trials:
        return f"n_trials reached ({n_trials})"
    if deadline is not None and deadline <= time.time():
        return "timeout reached"
    return None


def summary(snap: Snapshot, *, ages: dict[int, float], artifacts: Path | None, since: str | None) -> dict[str, Any]:
    """Everything the study page header shows; cheap enough to poll every two seconds."""
    info = study_info(snap.ref)
    ua = snap.ref.user_attrs
    c = snap.counts
    done = c.get("COMPLETE", 0) + c.get("PRUNED", 0)
    n = info["n_trials"]
    deadline = info["deadline"]
    ended = end_reason(info["stop_reason"], n, done, c.get("RUNNING", 0), deadline)
    # Time left only means something while the run that set the deadline is going on.
    left = None if deadline is None or ended or not c.get("RUNNING", 0) else max(0.0, round(deadline - time.time(), 1))
    bt = snap.best
    has_size = snap.has_size
    return {
        **info,
        "version": snap.version,
        "changed": since != snap.version,
        "counts": dict(c),
        "total": len(snap.trials),
        "end_reason": ended,
        "budget": {"n_trials": n, "done": done, "fraction": (min(1.0, done / n) if n else None),
                   "timeout": info["timeout"], "seconds_left": left},
        "best": trial_row(bt) if bt is not None else None,
        "workers": _workers(snap, ages),
        "last_activity": _iso(snap.last_activity),
        "n_gate": len(records.gate_records(ua)),
        "n_avoid": len(records.avoid_records(ua)),
        "n_notes": len(records.note_records(ua)),
        "has_size": bool(has_size),
        "multi_objective": len(snap.ref.directions) > 1,
        "plots": plot_kinds(snap, has_size=bool(has_size)),
    }


def plot_kinds(snap: Snapshot, *, has_size: bool) -> list[str]:
    kinds = ["history", "intermediate", "parallel", "importance"]
    if has_size or len(snap.ref.directions) == 2:
        kinds.append("pareto")
    return kinds


def describe_distribution(d: Any) -> str:
    """A parameter's search range as a person reads it (not Optuna's repr)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(d, CategoricalDistribution):
        return "one of " + ", ".join(str(c) for c in d.choices)
    if isinstance(d, FloatDistribution | IntDistribution):
        kind = "int" if isinstance(d, IntDistribution) else "float"
        extra = " (log)" if d.log else (f" step {d.step:g}" if d.step not in (None, 1) else "")
        return f"{kind} in [{d.low:g}, {d.high:g}]{extra}"
    return str(d)


def subject_rows(table: Any) -> list[dict[str, Any]]:
    """The per-subject figures a trial stores, one row per subject, in natural order (S2 before S10)."""
    if not isinstance(table, dict):
        return []
    rows = [{"subject": str(s), **json_safe(v)} for s, v in table.items() if isinstance(v, dict)]
    return sorted(rows, key=lambda r: subject_sort_key(r["subject"]))


def trial_detail(snap: Snapshot, t: FrozenTrial, artifacts: Path | None) -> dict[str, Any]:
    """Everything the trial page shows."""
    ua = t.user_attrs
    m = ua.get("metrics") if isinstance(ua.get("metrics"), dict) else {}
    conf = None
    if all(isinstance(m.get(k), int | float) and not isinstance(m.get(k), bool) and math.isfinite(m[k])
           for k in ("tn", "fp", "fn", "tp")):
        conf = {k: int(m[k]) for k in ("tn", "fp", "fn", "tp")}
    ck = ua.get("checkpoint") if isinstance(ua.get("checkpoint"), str) else None
    ck_url = None
    if ck and artifacts is not None and (artifacts / snap.name / ck).is_file():
        ck_url = _file_url(snap.name, ck)
    avoided = [a for a in avoid_entries(snap.ref) if a["trial"] == t.number]
    gate = [g for g in gate_folders(snap.ref, artifacts) if g["trial"] == t.number]
    reason = records.reason(t)
    if avoided and avoided[0]["reason"]:
        reason = (reason + "; " if reason else "") + "avoid list: " + avoided[0]["reason"]
    history = ua.get("history") if isinstance(ua.get("history"), list) else []
    info = study_info(snap.ref)
    return {
        **trial_row(t),
        "study": snap.name,
        "metric": info["metric"],
        "classes": info["classes"],
        "reason": reason,
        "distributions": {k: describe_distribution(d) for k, d in t.distributions.items()},
        "folds": json_safe([f for f in (ua.get("folds") or []) if isinstance(f, dict)]),
        "subjects": subject_rows(ua.get("subjects")),
        "intermediate_values": [[int(s), json_safe(v)] for s, v in sorted(t.intermediate_values.items())],
        "history": json_safe([h for h in history if isinstance(h, dict)]),
        "user_attrs": json_safe({k: v for k, v in ua.items() if k not in ("history", "metrics", "folds", "subjects")}),
        "best_epoch": ua.get("best_epoch") if isinstance(ua.get("best_epoch"), int) else None,
        "confusion": conf,
        "checkpoint": ck,
        "checkpoint_url": ck_url,
        "avoided": bool(avoided),
        "gate_folders": [g["folder"] for g in gate],
        "notes": notes(snap.ref, t.number),
    }

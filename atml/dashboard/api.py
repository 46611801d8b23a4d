"""JSON API under ``/api``: read endpoints for the pages, token-guarded writing endpoints."""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import optuna
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from optuna.trial import TrialState

from atml import __version__, records
from atml.config import SearchSpace, space_from_stored
from atml.dashboard import figures, serializers
from atml.dashboard.reader import Snapshot, StudyNotFound, StudyReader, StudyRef
from atml.dashboard.schemas import (
    AvoidEntry,
    ClearOut,
    EnqueueIn,
    EnqueueOut,
    Figure,
    GateFolder,
    Health,
    Note,
    NoteIn,
    Problem,
    SortOrder,
    StopOut,
    StudyItem,
    StudyPlot,
    Summary,
    TrialDetail,
    TrialPage,
    TrialPlot,
    TrialStateName,
)
from atml.errors import AtmlError

__all__ = ["Context", "router", "STOPPED_FROM_DASHBOARD", "default_artifacts", "url_of", "env_token"]

log = logging.getLogger(__name__)

STOPPED_FROM_DASHBOARD = "stopped from dashboard"
SORT_PATTERN = r"^(number|value|state|duration|datetime_start|datetime_complete|n_params|onnx_kb|metric\.[\w.-]{1,64}|param\.[\w.-]{1,128})$"
FILE_FOLDERS = ("gate", "trials")  # the only parts of <artifacts>/<study>/ that can be downloaded


@dataclass
class Context:
    """What every request needs; one per app, on ``app.state.ctx``."""

    reader: StudyReader
    storage_url: str | None  # None: given a storage object without a URL (in memory, say)
    artifacts: Path | None
    token: str | None

    @property
    def read_only(self) -> bool:
        return not self.token


def get_ctx(request: Request) -> Context:
    return request.app.state.ctx


Ctx = Annotated[Context, Depends(get_ctx)]
_bearer = HTTPBearer(auto_error=False, description="the dashboard token (--token or ATML_DASHBOARD_TOKEN)")


def require_writer(ctx: Ctx, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """403 without a configured token; 401 without a Bearer header; 403 for a wrong token."""
    if ctx.read_only:
        raise HTTPException(403, "the dashboard is read-only: start it with --token or ATML_DASHBOARD_TOKEN to allow changes")
    if cred is None or not cred.credentials:
        raise HTTPException(401, "missing header Authorization: Bearer <token>", headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(cred.credentials.encode(), ctx.token.encode()):  # type: ignore[union-attr]
        raise HTTPException(403, "wrong token")


Writer = Depends(require_writer)
R404 = {404: {"model": Problem, "description": "unknown study or trial"}}
RW = {**R404, 400: {"model": Problem, "description": "the body is not JSON"},
      401: {"model": Problem, "description": "no bearer token"},
      403: {"model": Problem, "description": "read-only dashboard, or wrong token"}}

router = APIRouter(prefix="/api")


def _snap(ctx: Context, name: str, force: bool = False) -> Snapshot:
    return ctx.reader.snapshot(name, force=force)


@router.get("/health", response_model=Health, tags=["meta"])
def health(ctx: Ctx) -> dict[str, Any]:
    """Liveness, version, and whether writing endpoints are enabled."""
    from atml.storage import redact

    shown = redact(ctx.storage_url) if ctx.storage_url else type(ctx.reader.storage).__name__
    return {"status": "ok", "version": __version__, "read_only": ctx.read_only, "storage": shown}


@router.get("/studies", response_model=list[StudyItem], tags=["studies"])
def list_studies(ctx: Ctx) -> list[dict[str, Any]]:
    """Every study: objective and direction, trials by state, best value, last activity."""
    return [serializers.overview_row(o) for o in ctx.reader.overview()]


@router.get("/studies/{name}/summary", response_model=Summary, responses=R404, tags=["studies"])
def summary(ctx: Ctx, name: str,
            since: Annotated[str | None, Query(max_length=64, description="version from the previous call")] = None,
            ) -> dict[str, Any]:
    """Status counts, budget progress, best trial, workers seen recently. Poll it: `changed`
    says whether anything moved since the version passed as `since`."""
    snap = _snap(ctx, name)
    return serializers.summary(snap, ages=ctx.reader.heartbeat_ages(snap), artifacts=ctx.artifacts, since=since)


@router.get("/studies/{name}/trials", response_model=TrialPage, responses=R404, tags=["trials"])
def trials(
    ctx: Ctx,
    name: str,
    state: Annotated[list[TrialStateName] | None, Query(description="keep only these states (repeatable)")] = None,
    sort: Annotated[str, Query(pattern=SORT_PATTERN, description="number, value, state, duration, datetime_start, "
                               "datetime_complete, n_params, onnx_kb, metric.<name> or param.<name>")] = "number",
    order: SortOrder = SortOrder.asc,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """One page of the trials table, sorted and filtered on the server."""
    return serializers.trial_page(_snap(ctx, name), states=[s.value for s in state or []], sort=sort,
                                  order=order.value, offset=offset, limit=limit)


@router.get("/studies/{name}/trials/{number}", response_model=TrialDetail, responses=R404, tags=["trials"])
def trial(ctx: Ctx, name: str, number: int) -> dict[str, Any]:
    """Params, metrics, learning curves, confusion matrix, and why it was pruned/avoided/failed."""
    snap = _snap(ctx, name)
    return serializers.trial_detail(snap, snap.trial(number), ctx.artifacts)


def _figure(body: bytes) -> Response:
    return Response(content=body, media_type="application/json")


@router.get("/studies/{name}/plots/{kind}", response_model=Figure, responses=R404, tags=["plots"])
def study_plot(ctx: Ctx, name: str, kind: StudyPlot) -> Response:
    """A plotly figure of the study (built once per study version)."""
    return _figure(figures.study_figure(_snap(ctx, name), kind.value))


@router.get("/studies/{name}/trials/{number}/plots/{kind}", response_model=Figure, responses=R404, tags=["plots"])
def trial_plot(ctx: Ctx, name: str, number: int, kind: TrialPlot) -> Response:
    """A plotly figure of one trial: learning curves or confusion matrix."""
    snap = _snap(ctx, name)
    return _figure(figures.trial_figure(snap, snap.trial(number), kind.value))


@router.get("/studies/{name}/gate", response_model=list[GateFolder], responses=R404, tags=["gate"])
def gate(ctx: Ctx, name: str) -> list[dict[str, Any]]:
    """Gate folders (metric-named) with download links to their files."""
    return serializers.gate_folders(ctx.reader.study(name), ctx.artifacts)


@router.get("/studies/{name}/avoid", response_model=list[AvoidEntry], responses=R404, tags=["gate"])
def avoid(ctx: Ctx, name: str) -> list[dict[str, Any]]:
    """The avoid list: parameter regions the sampler is kept away from, and why."""
    return serializers.avoid_entries(ctx.reader.study(name))


@router.get("/studies/{name}/notes", response_model=list[Note], responses=R404, tags=["notes"])
def list_notes(ctx: Ctx, name: str, trial: int | None = None) -> list[dict[str, Any]]:
    """Notes on the study and its trials (or on one trial)."""
    return serializers.notes(ctx.reader.study(name), trial)


@router.get("/studies/{name}/files/{path:path}", response_class=FileResponse, tags=["files"],
            responses={**R404, 200: {"content": {"application/octet-stream": {}}, "description": "the file"}})
def download(ctx: Ctx, name: str, path: str) -> FileResponse:
    """A file of the study's gate folders or trial folders; nothing else of the artifact store."""
    ref = ctx.reader.study(name)
    target = _inside_artifacts(ctx.artifacts, ref.name, path)
    return FileResponse(target, filename=target.name, media_type="application/octet-stream")


def _inside_artifacts(artifacts: Path | None, study: str, rel: str) -> Path:
    missing = HTTPException(404, "no such file in the artifact store")
    if artifacts is None or "\x00" in rel or "\x00" in study:
        raise missing
    try:
        root = artifacts.resolve()
        base = (root / study).resolve()
        target = (base / rel).resolve()
        if base == root or not base.is_relative_to(root):
            raise missing
        if not any(target.is_relative_to(base / d) for d in FILE_FOLDERS) or not target.is_file():
            raise missing
    except (OSError, ValueError, RuntimeError):  # name too long, symlink loop, ...
        raise missing from None
    return target


# -- writing endpoints ---------------------------------------------------------------------
def _set_attr(ctx: Context, ref: StudyRef, key: str, value: Any) -> None:
    try:
        ctx.reader.storage.set_study_user_attr(ref.study_id, key, value)
    except KeyError:  # the study was deleted meanwhile
        raise StudyNotFound(f"study {ref.name!r} not found") from None


def _new_note(ctx: Context, ref: StudyRef, text: str, trial: int | None) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    key = f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    value = {"text": text, "trial": trial, "time": now.isoformat(timespec="seconds")}
    _set_attr(ctx, ref, records.NOTE_PREFIX + key, json.dumps(value))
    ctx.reader.invalidate(ref.name)
    return {"id": key, **value}


@router.post("/studies/{name}/notes", response_model=Note, status_code=201, responses=RW, tags=["notes"],
             dependencies=[Writer])
def add_study_note(ctx: Ctx, name: str, body: NoteIn) -> dict[str, Any]:
    """Add a note to the study (needs the token)."""
    return _new_note(ctx, ctx.reader.study(name), body.text, None)


@router.post("/studies/{name}/trials/{number}/notes", response_model=Note, status_code=201, responses=RW,
             tags=["notes"], dependencies=[Writer])
def add_trial_note(ctx: Ctx, name: str, number: int, body: NoteIn) -> dict[str, Any]:
    """Add a note to one trial (kept on the study: Optuna freezes finished trials)."""
    snap = _snap(ctx, name)
    snap.trial(number)
    return _new_note(ctx, snap.ref, body.text, number)


@router.post("/studies/{name}/stop", response_model=StopOut, responses=RW, tags=["control"], dependencies=[Writer])
def stop(ctx: Ctx, name: str) -> dict[str, Any]:
    """Ask every worker to stop after its current trial (sets atml.stop_reason)."""
    ref = ctx.reader.study(name)
    _set_attr(ctx, ref, records.STOP, STOPPED_FROM_DASHBOARD)
    ctx.reader.invalidate(ref.name)
    return {"study": ref.name, "stop_reason": STOPPED_FROM_DASHBOARD}


@router.delete("/studies/{name}/avoid", response_model=ClearOut, responses=RW, tags=["gate"], dependencies=[Writer])
def clear_avoid(ctx: Ctx, name: str) -> dict[str, Any]:
    """Clear the avoid list (every atml.avoid.* attribute becomes null)."""
    ref = ctx.reader.study(name, fresh=True)
    n = records.clear_prefix(ref.user_attrs, records.AVOID_PREFIX, lambda k, v: _set_attr(ctx, ref, k, v))
    ctx.reader.invalidate(ref.name)
    return {"study": ref.name, "cleared": n}


@router.post("/studies/{name}/enqueue", response_model=EnqueueOut, status_code=201, responses={
    **RW, 422: {"description": "unknown parameter or value outside its range"}}, tags=["control"],
    dependencies=[Writer])
def enqueue(ctx: Ctx, name: str, body: EnqueueIn) -> dict[str, Any]:
    """Queue a trial with these parameters (optuna ``enqueue_trial``); the rest are sampled."""
    snap = _snap(ctx, name)
    _check_params(snap, body.params)
    tag = uuid.uuid4().hex
    try:
        study = optuna.load_study(study_name=snap.name, storage=ctx.reader.storage,
                                  sampler=optuna.samplers.RandomSampler())
        study.enqueue_trial(dict(body.params), user_attrs={"enqueued_by": "dashboard", "enqueue_id": tag})
    except KeyError:
        raise StudyNotFound(f"study {snap.name!r} not found") from None
    number = None
    for t in ctx.reader.storage.get_all_trials(snap.ref.study_id, deepcopy=False, states=(TrialState.WAITING,)):
        if t.user_attrs.get("enqueue_id") == tag:
            number = t.number
    if body.note and number is not None:
        _new_note(ctx, snap.ref, body.note, number)
    ctx.reader.invalidate(snap.name)
    return {"study": snap.name, "number": number, "params": dict(body.params)}


def _bad(msg: str) -> HTTPException:
    return HTTPException(422, msg)


def _stored_space(snap: Snapshot) -> SearchSpace | None:
    """The study's stored space, validated without the model registry (no torch), or None."""
    stored = records.stored_space(snap.ref.user_attrs)
    if stored is None:
        return None
    try:
        return space_from_stored(stored)
    except AtmlError as e:  # written by another version: fall back to the trials
        log.info("study %s: stored space not readable here (%s)", snap.name, e)
        return None


def _known_params(snap: Snapshot) -> dict[str, Any]:
    """name -> (kind, low, high, choices, family) from the stored space, else from the trials."""
    space = _stored_space(snap)
    if space is not None:
        family_of = {p.name: fam for fam, (_, params) in space.families.items() for p in params}
        return {p.name: (p.kind, p.low, p.high, p.choices, family_of.get(p.name)) for p in space.params}
    from optuna.distributions import CategoricalDistribution, IntDistribution

    out: dict[str, Any] = {}
    for t in snap.trials:
        for k, d in t.distributions.items():
            if k in out:
                continue
            if isinstance(d, CategoricalDistribution):
                out[k] = ("categorical", None, None, tuple(d.choices), None)
            else:
                out[k] = ("int" if isinstance(d, IntDistribution) else "float", d.low, d.high, (), None)
    return out


def _check_params(snap: Snapshot, params: dict[str, Any]) -> None:
    known = _known_params(snap)
    if not params:
        raise _bad("params: give at least one parameter")
    family = params.get("model.family")
    for k, v in params.items():
        if k not in known:
            raise _bad(f"params.{k}: unknown parameter (known: {', '.join(sorted(known)) or 'none yet'})")
        kind, low, high, choices, fam = known[k]
        if fam is not None and family is not None and fam != family:
            raise _bad(f"params.{k}: belongs to family {fam!r}, but model.family is {family!r}")
        if kind == "categorical":
            if not any(type(v) is type(c) and v == c for c in choices):
                raise _bad(f"params.{k}: must be one of {list(choices)}, got {v!r}")
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise _bad(f"params.{k}: must be a number, got {v!r}")
        if kind == "int" and not float(v).is_integer():
            raise _bad(f"params.{k}: must be an integer, got {v!r}")
        if low is not None and high is not None and not low <= v <= high:
            raise _bad(f"params.{k}: must be in [{low}, {high}], got {v!r}")
    if family is None and len({known[k][4] for k in params if known[k][4] is not None}) > 1:
        raise _bad("params: parameters of two model families; set model.family")


def default_artifacts(storage_url: str | None) -> Path | None:
    """Beside a SQLite file, else ./studies (as atml search does), when that folder exists."""
    from atml.storage import default_artifacts as beside_storage

    path = Path(beside_storage(storage_url or ""))
    return path if path.is_dir() else None


def url_of(storage: Any) -> str | None:
    """The URL of a storage object: an ``RDBStorage``'s, also behind atml's resilient wrapper."""
    url = getattr(getattr(storage, "backend", storage), "url", None)
    return url if isinstance(url, str) else None


def env_token() -> str | None:
    return os.environ.get("ATML_DASHBOARD_TOKEN") or None

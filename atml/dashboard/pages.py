"""HTML pages: server-rendered from the same dicts the API returns; JS keeps them live."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.templating import Jinja2Templates

from atml import __version__
from atml.dashboard import serializers
from atml.dashboard.api import get_ctx

__all__ = ["router", "not_found"]

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


templates.env.filters["fmt"] = _fmt
templates.env.filters["tojson_attr"] = lambda v: json.dumps(v)


@functools.cache
def _plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


@router.get("/vendor/plotly.min.js")
def plotly_js() -> FileResponse:
    """plotly.js from the plotly Python package: the dashboard works without internet."""
    return FileResponse(_plotly_js(), media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})


def _page(request: Request, template: str, status_code: int = 200, **ctx: Any) -> HTMLResponse:
    c = get_ctx(request)
    return templates.TemplateResponse(request, template, {"version": __version__, "read_only": c.read_only, **ctx},
                                      status_code=status_code)


def not_found(request: Request, message: str) -> HTMLResponse:
    return _page(request, "not_found.html", status_code=404, message=message, title="not found")


@router.get("/", response_class=HTMLResponse)
def studies_page(request: Request) -> HTMLResponse:
    rows = [serializers.overview_row(o) for o in get_ctx(request).reader.overview()]
    return _page(request, "studies.html", rows=rows, title="studies")


@router.get("/studies/{name}", response_class=HTMLResponse)
def study_page(request: Request, name: str) -> HTMLResponse:
    ctx = get_ctx(request)
    snap = ctx.reader.snapshot(name)
    summ = serializers.summary(snap, ages=ctx.reader.heartbeat_ages(snap), artifacts=ctx.artifacts, since=None)
    page = serializers.trial_page(snap, sort="number", order="desc", limit=25)
    return _page(request, "study.html", s=summ, page=page, gate=serializers.gate_folders(snap.ref, ctx.artifacts),
                 avoid=serializers.avoid_entries(snap.ref), notes=serializers.notes(snap.ref),
                 states=["RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING"], title=snap.name)


@router.get("/studies/{name}/trials/{number}", response_class=HTMLResponse)
def trial_page(request: Request, name: str, number: str) -> HTMLResponse:
    ctx = get_ctx(request)
    snap = ctx.reader.snapshot(name)
    try:
        n = int(number)
    except ValueError:
        return not_found(request, f"study {name!r} has no trial {number!r}")
    t = snap.trial(n)
    d = serializers.trial_detail(snap, t, ctx.artifacts)
    return _page(request, "trial.html", t=d, study=snap.name, title=f"{snap.name} #{n}")

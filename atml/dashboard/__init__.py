"""The ATML dashboard: a FastAPI app over a study storage.

``create_app(storage)`` reads a storage (an Optuna storage, or a URL that it opens
read-side: no heartbeat) and serves HTML
pages (server-rendered, plotly.js from the plotly package, live updates by polling) and
a JSON API under ``/api`` described by the OpenAPI schema at ``/openapi.json``. It reads
studies through Optuna's storage (see :mod:`atml.dashboard.reader` for the one narrow
bulk read) and never imports torch. Writing endpoints need a configured token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["create_app"]


def create_app(storage: Any, *, artifacts: str | Path | None = None, token: str | None = None,
               refresh_seconds: float = 1.0, allowed_hosts: list[str] | None = None) -> Any:
    """Build the dashboard app over ``storage``: an Optuna ``BaseStorage`` or a storage URL.

    ``artifacts`` is the folder holding ``<study>/gate`` and ``<study>/trials`` (default:
    beside a SQLite file, else ./studies). ``token`` (default: env ATML_DASHBOARD_TOKEN)
    enables the writing endpoints for requests with ``Authorization: Bearer <token>``;
    without one the dashboard is read-only. ``allowed_hosts`` limits the Host header
    (``atml dashboard`` sets it to the loopback names when bound to 127.0.0.1, so a web
    page cannot reach the dashboard through DNS rebinding). Raises
    :class:`atml.errors.StorageError` when a URL's storage cannot be opened.
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from fastapi.staticfiles import StaticFiles
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import SQLAlchemyError

    from atml import __version__
    from atml.dashboard import api, pages
    from atml.dashboard.reader import StudyNotFound, StudyReader, TrialNotFound
    from atml.storage import open_storage

    if isinstance(storage, str):
        storage_url: str | None = storage
        storage = open_storage(storage)
    else:
        storage_url = api.url_of(storage)
    art = Path(artifacts) if artifacts is not None else api.default_artifacts(storage_url)
    ctx = api.Context(reader=StudyReader(storage, refresh_seconds=refresh_seconds), storage_url=storage_url,
                      artifacts=art.resolve() if art is not None else None,
                      token=token if token is not None else api.env_token())
    app = FastAPI(title="atml dashboard", version=__version__,
                  description="Studies of an ATML search: trials, charts, gate folders, avoid list. "
                              "Writing endpoints need `Authorization: Bearer <token>`.")
    app.state.ctx = ctx

    def _not_found(request: Request, exc: Exception) -> Any:
        if request.url.path.startswith("/api"):
            return JSONResponse({"detail": str(exc.args[0]) if exc.args else "not found"}, status_code=404)
        return pages.not_found(request, str(exc.args[0]) if exc.args else "not found")

    def _storage_down(request: Request, exc: Exception) -> Any:
        # A database restart or a dropped connection: say so (the pages retry), never a 500.
        cause = getattr(exc, "orig", None) or exc.__cause__ or exc
        msg = (str(cause).strip().splitlines() or ["unknown error"])[0][:300]
        return JSONResponse({"detail": f"storage unavailable: {msg}"}, status_code=503,
                            headers={"Retry-After": "2"})

    async def _method_not_allowed(request: Request, exc: Exception) -> Any:
        # Starlette's Allow names only the first route of the path; list every method.
        from starlette.routing import Match

        allowed = [m for m in ("GET", "POST", "PUT", "PATCH", "DELETE")
                   if any(r.matches({**request.scope, "method": m})[0] == Match.FULL for r in app.router.routes)]
        return JSONResponse({"detail": "Method Not Allowed"}, status_code=405,
                            headers={"Allow": ", ".join(allowed)} if allowed else None)

    app.add_exception_handler(405, _method_not_allowed)
    app.add_exception_handler(StudyNotFound, _not_found)
    app.add_exception_handler(TrialNotFound, _not_found)
    app.add_exception_handler(SQLAlchemyError, _storage_down)
    app.add_exception_handler(StorageInternalError, _storage_down)  # optuna's wrapper of the same
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    if allowed_hosts:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    return app

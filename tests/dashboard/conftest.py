"""Fixtures for the dashboard tests: studies made by real ``atml search`` runs on SQLite
and PostgreSQL (started together, once per session), studies made with optuna directly,
and in-process clients of the app."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from dash_helpers import (
    PG_SERVER,
    TOKEN,
    Searched,
    TestClient,
    admin_sql,
    decorate,
    finish_search,
    make_study,
    need_pg,
    pg_available,
    start_search,
)


@pytest.fixture(scope="session")
def pg_url_factory():
    """Create uniquely named PostgreSQL databases; all are dropped at the end of the session."""
    made: list[str] = []

    def make(tag: str) -> str:
        need_pg()
        name = f"atml_dash_{tag}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        admin_sql(f'CREATE DATABASE "{name}"')
        made.append(name)
        return f"{PG_SERVER}/{name}"

    yield make
    for name in made:
        try:
            admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception as e:  # leave the session result alone; say what is left behind
            print(f"could not drop test database {name}: {e}", file=sys.stderr)


@pytest.fixture(scope="session")
def _searches(tmp_path_factory, request, pg_url_factory):
    """Start the SQLite search and (when postgres tests are collected) the PostgreSQL one together."""
    base = tmp_path_factory.mktemp("searches")
    want_pg = any(item.get_closest_marker("postgres") for item in request.session.items) and pg_available()
    runs: dict[str, tuple[subprocess.Popen, Searched, Path]] = {}
    sq = base / "sqlite"
    sq_url = f"sqlite:///{sq / 'studies' / 'atml.db'}"
    runs["sqlite"] = (start_search(sq, sq_url, "dash"), Searched("sqlite", sq_url, sq / "studies", "dash"), sq)
    if want_pg:
        pg = base / "postgres"
        pg_url = pg_url_factory("search")
        runs["postgres"] = (start_search(pg, pg_url, "dash", artifacts=pg / "artifacts"),
                            Searched("postgres", pg_url, pg / "artifacts", "dash"), pg)
    out = {}
    for key, (proc, found, folder) in runs.items():
        finish_search(proc, folder, found.study)
        decorate(found.url, found.study, found.artifacts)
        out[key] = found
    return out


@pytest.fixture(scope="session")
def sqlite_search(_searches) -> Searched:
    return _searches["sqlite"]


@pytest.fixture(scope="session")
def postgres_search(_searches) -> Searched:
    if "postgres" not in _searches:
        need_pg()
    return _searches["postgres"]


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def searched(request) -> Searched:
    """The real search study, once per storage back-end."""
    return request.getfixturevalue(f"{request.param}_search")


@pytest.fixture(scope="session")
def api(searched):
    """Read-only in-process client of the dashboard over the searched study."""
    from atml.dashboard import create_app

    with TestClient(create_app(searched.url, artifacts=searched.artifacts, token="")) as client:
        yield client


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'studies' / 'atml.db'}"


@pytest.fixture
def writer(sqlite_url, tmp_path):
    """A client with the token configured, over a fresh SQLite study 'w' made with optuna."""
    from atml.dashboard import create_app

    make_study(sqlite_url, "w")
    with TestClient(create_app(sqlite_url, artifacts=tmp_path / "studies", token=TOKEN)) as client:
        yield client

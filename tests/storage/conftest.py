"""Fixtures of the storage tests: one study database of each kind the lean paths serve."""

from __future__ import annotations

from pathlib import Path

import pytest

from atml.storage import open_storage


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A real SQLite file (tables created) and the PostgreSQL test database, in turn.
    A test module with a ``url`` fixture of its own (the proxy's) uses that one."""
    if request.param == "sqlite":
        u = f"sqlite:///{tmp_path / 'atml.db'}"
        open_storage(u, create=True)
        return u
    return request.getfixturevalue("pg_url")

"""Shared fixtures: the real ECG data beside the repository, small spaces, storages."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from atml.data import shared_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (or $ATML_SHARED_DATA); absent -> skip, except in CI where it must exist."""
    p = shared_data_dir()
    if not p.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"shared data folder {p} is missing in CI")
        pytest.skip(f"shared data folder {p} not found (set ATML_SHARED_DATA)")
    return p


@pytest.fixture(scope="session")
def txt_sample(shared_data: Path) -> Path:
    return shared_data / "iesd2024" / "txt_sample"


@pytest.fixture(scope="session")
def train_npz(shared_data: Path) -> Path:
    return shared_data / "iesd2024" / "train.npz"


@pytest.fixture
def write_space(tmp_path: Path):
    """Write a space mapping to tmp_path/<file> and return its path."""

    def _write(space: dict, file: str = "space.yaml") -> Path:
        p = tmp_path / file
        p.write_text(yaml.safe_dump(space, sort_keys=False))
        return p

    return _write


@pytest.fixture
def atml_cmd() -> list[str]:
    return [sys.executable, "-m", "atml"]


# The PostgreSQL the postgres-marked tests use: a passwordless `postgres` user on
# 127.0.0.1:5432 unless ATML_TEST_POSTGRES points elsewhere (a database URL atml accepts).
PG_TEST_URL = os.environ.get("ATML_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def pg_url() -> str:
    """An existing PostgreSQL database for tests that make uniquely named studies in it."""
    import psycopg

    try:
        psycopg.connect(PG_TEST_URL.replace("+psycopg", ""), connect_timeout=3).close()
    except psycopg.OperationalError as e:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {PG_TEST_URL} is unreachable in CI: {e}")
        pytest.skip(f"PostgreSQL at {PG_TEST_URL} is not reachable (set ATML_TEST_POSTGRES)")
    return PG_TEST_URL

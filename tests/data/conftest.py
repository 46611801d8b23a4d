"""Fixtures for atml.data tests: the shared real ECG data and a session-wide cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from atml.data import DataSpec, load_dataset


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Cache folder shared by the session so the big npz is converted only once."""
    return tmp_path_factory.mktemp("atml-data-cache")


@pytest.fixture(scope="session")
def npz_dataset(train_npz: Path, session_cache: Path):
    """train.npz loaded through the cache with default preprocessing."""
    return load_dataset(DataSpec(path=str(train_npz)), session_cache)


@pytest.fixture()
def copy_sample(txt_sample: Path, tmp_path: Path):
    """Copy the named real files (or the first n) into a fresh folder and return it."""

    def make(names: list[str] | None = None, n: int = 6, folder: str = "seg") -> Path:
        dst = tmp_path / folder
        dst.mkdir()
        chosen = names if names is not None else sorted(p.name for p in txt_sample.iterdir())[:n]
        for name in chosen:
            (dst / name).write_bytes((txt_sample / name).read_bytes())
        return dst

    return make

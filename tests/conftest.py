"""Shared fixtures: the real ECG data beside the repository, small spaces, storages."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("ATML_SHARED_DATA", REPO.parent / "shared" / "data"))


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


def small_space(name: str = "t", n_trials: int = 3, epochs: int = 2, **overrides: object) -> dict:
    """A tiny but complete search space: two families, a few searchable parameters."""
    space = {
        "study": {"name": name, "metric": "f1", "direction": "maximize",
                  "sampler": {"type": "tpe", "seed": 7, "n_startup_trials": 2},
                  "pruner": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 1}},
        "budget": {"n_trials": n_trials},
        "data": {"synthetic": {"subjects": 8, "per_subject": 16, "seed": 1}, "drop_labels": ["UNK"]},
        "train": {"epochs": epochs, "batch_size": 32,
                  "lr": {"type": "float", "low": 1e-3, "high": 5e-3, "log": True}, "patience": 2},
        "model": {"families": {
            "afnet": {"width": {"type": "int", "low": 4, "high": 6}, "depth": 2},
            "sepnet": {"width": 8, "depth": {"type": "int", "low": 2, "high": 3}},
        }},
    }
    for k, v in overrides.items():
        space[k] = v
    return space


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

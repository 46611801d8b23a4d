"""Fixtures for atml.trial tests: prepared synthetic data shared by a module."""

from __future__ import annotations

import pytest

from atml.data import DataSpec
from atml.trial import PreparedData, prepare_data


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    """10 synthetic subjects of 30 segments, split by subject, as a worker holds them."""
    spec = DataSpec(synthetic_subjects=10, synthetic_per_subject=30, synthetic_seed=3)
    return prepare_data(spec, tmp_path_factory.mktemp("cache"))

"""Tests for atml.models.hparams: one frozen dataclass per family, validated once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import pytest

from atml.errors import SpaceError
from atml.models import AFNetHparams, Hparams, SepNetHparams, family_names, family_params
from atml.models.hparams import COMMON_RULES, Float, Int, validate


def test_construction_validates_and_stores_plain_types() -> None:
    np = pytest.importorskip("numpy")
    hp = SepNetHparams(in_channels=np.int64(1), n_classes=2, width=np.int64(10), growth=np.float32(1.2))
    assert type(hp.in_channels) is int and type(hp.width) is int and type(hp.growth) is float
    assert hp.as_dict() == {"in_channels": 1, "n_classes": 2, **family_params("sepnet"), "width": 10,
                            "growth": pytest.approx(1.2)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        hp.width = 3  # type: ignore[misc]


def test_first_bad_value_in_rule_order_is_reported() -> None:
    # Common rules come first: width is reported although se_reduction is bad too.
    with pytest.raises(SpaceError, match=r"^invalid value for 'width' in model family 'afnet': 0 \(must be >= 1\)$"):
        AFNetHparams(in_channels=1, n_classes=2, width=0, se_reduction=-1)
    with pytest.raises(SpaceError, match=r"'kernel_size' .* 4 \(must be odd\)$"):
        AFNetHparams(in_channels=1, n_classes=2, kernel_size=4)
    with pytest.raises(SpaceError, match=r"'dropout' .* 1\.0 \(must be in \[0\.0, 1\.0\)\)$"):
        AFNetHparams(in_channels=1, n_classes=2, dropout=1.0)
    with pytest.raises(SpaceError, match=r"'growth' .* 5\.0 \(must be in \[1\.0, 4\.0\]\)$"):
        AFNetHparams(in_channels=1, n_classes=2, growth=5.0)


def test_rules() -> None:
    assert Int(low=1, high=3).check("f", "n", 3) == 3
    with pytest.raises(SpaceError, match=r"must be in \[1, 3\]"):
        Int(low=1, high=3).check("f", "n", 4)
    with pytest.raises(SpaceError, match="must be an integer"):
        Int(low=1).check("f", "n", 8.0)
    with pytest.raises(SpaceError, match="must be a number"):
        Float(low=0.0, high=1.0).check("f", "n", True)
    with pytest.raises(SpaceError, match="must be in"):
        Float(low=0.0, high=1.0).check("f", "n", float("nan"))


@pytest.mark.parametrize("family", family_names())
def test_every_family_field_has_a_rule(family: str) -> None:
    params = family_params(family)
    assert set(COMMON_RULES) - {"in_channels", "n_classes"} <= set(params)


def test_a_field_without_a_rule_is_a_programming_error() -> None:
    @dataclass(frozen=True, kw_only=True)
    class Broken(Hparams):
        FAMILY: ClassVar[str] = "broken"
        extra: int = 1

    with pytest.raises(TypeError, match="extra"):
        Broken(in_channels=1, n_classes=2)
    ok = AFNetHparams(in_channels=1, n_classes=2)
    validate(ok)  # validating twice changes nothing
    assert ok == AFNetHparams(in_channels=1, n_classes=2)

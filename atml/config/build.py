"""The one place that checks a space can be built: its models by the model registry (torch),
every combination of its searched preprocessing settings by :class:`atml.data.DataSpec`.

Load-time checks catch a value a model or the data rejects (e.g. width 0) before trial 37.
The section rules call it only when asked to (``check_build``); a space read back from a
study, which was checked when the study was created, can skip it and stay free of torch.
"""

from __future__ import annotations

from typing import Any

from atml.config.schema import Param
from atml.config.validator import Validator
from atml.data import spec_from_section
from atml.errors import DataError, SpaceError
from atml.models import build_model, family_names, family_params

__all__ = ["family_names", "family_params", "check_models", "check_data"]


def check_data(v: Validator, section: dict[str, Any], combos: list[dict[str, Any]]) -> None:
    """Every combination of searched settings (``combos``) over ``section`` makes a valid DataSpec."""
    for combo in combos:
        try:
            spec_from_section({**section, **combo})
        except DataError as e:
            msg = str(e)
            field = msg.split(" = ", 1)[0].removeprefix("DataSpec.") if msg.startswith("DataSpec.") else ""
            where = f"data.{field}" if field and " " not in field else "data"
            detail = msg.split(": ", 1)[-1] if field else msg
            if combo:
                detail += " (with " + ", ".join(f"{n}={c!r}" for n, c in combo.items()) + ")"
            v.fail(where, detail)


def _build(fam: str, hp: dict[str, Any]) -> None:
    build_model(fam, in_channels=1, n_classes=2, **hp)


def check_models(v: Validator, families: dict[str, tuple[dict[str, Any], tuple[Param, ...]]],
                 shared_fixed: dict[str, Any], shared: list[Param]) -> None:
    """Every family builds with its fixed values and with each end of every searched range."""
    for fam, (fixed, params) in families.items():
        for p in [*shared, *params]:
            vals = list(p.choices) if p.kind == "categorical" else [p.low, p.high]
            for val in vals:
                try:
                    _build(fam, {**shared_fixed, **fixed, p.key: val})
                except SpaceError as e:
                    where = f"model.{p.key}" if p.name.startswith("model.") else f"model.families.{p.name}"
                    v.fail(where, str(e))
        try:
            _build(fam, {**shared_fixed, **fixed})
        except SpaceError as e:
            v.fail(f"model.families.{fam}", str(e))

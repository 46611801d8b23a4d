"""Rules of the ``model`` section: families, their hyperparameters, shared hyperparameters.

The model registry (which families exist, their hyperparameters and types) loads torch, so
it is asked only when ``build`` is set (see :mod:`atml.config.build`). A space read back
from a study without it keeps its hyperparameter values as stored: they were checked
against the registry when the study was created.
"""

from __future__ import annotations

from typing import Any

from atml.config.schema import Param
from atml.config.validator import Validator

__all__ = ["Families", "model_section"]

Families = dict[str, tuple[dict[str, Any], tuple[Param, ...]]]  # family -> (fixed, searched)


def _hparam_type(default: Any) -> type:
    """The YAML type of a hyperparameter, from its default (object: any value)."""
    for typ in (bool, int, float, str):  # bool first: a bool is an int
        if isinstance(default, typ):
            return typ
    return object


def model_section(v: Validator, d: Any, build: bool = True) -> tuple[Families, dict[str, Any], tuple[Param, ...]]:
    """The ``model`` section as (families, shared fixed hyperparameters, shared searched ones)."""
    if not isinstance(d, dict):
        v.fail("model", f"expected a mapping, got {type(d).__name__}")
    if "families" not in d:
        v.fail("model.families", "missing required key")
    fams = d["families"]
    if not isinstance(fams, dict) or not fams:
        v.fail("model.families", "must map at least one family name to its parameters")
    if build:
        from atml.config.build import check_models, family_names, family_params

        known: tuple[str, ...] | None = family_names()
    else:
        known = None
    families: Families = {}
    types: dict[str, dict[str, type]] = {}  # family -> hyperparameter -> type (build only)
    for fam, spec in fams.items():
        if known is not None and fam not in known:
            v.fail(f"model.families.{fam}", f"unknown model family (known: {', '.join(known)})")
        spec = spec or {}
        if known is not None:
            types[fam] = {k: _hparam_type(default) for k, default in family_params(fam).items()}
            v.keys(f"model.families.{fam}", spec, set(types[fam]))
        else:
            v.keys(f"model.families.{fam}", spec, set(spec) if isinstance(spec, dict) else set())
        fixed: dict[str, Any] = {}
        params: list[Param] = []
        for k, s in spec.items():
            res = v.param(f"model.families.{fam}.{k}", s, types.get(fam, {}).get(k, object), f"{fam}.{k}")
            (params.append(res) if isinstance(res, Param) else fixed.__setitem__(k, res))
        families[fam] = (fixed, tuple(params))
    shared_fixed: dict[str, Any] = {}
    shared: list[Param] = []
    first = next(iter(families))
    for k, s in d.items():
        if k == "families":
            continue
        for fam in types:
            if k not in types[fam]:
                v.fail(f"model.{k}", f"unknown key: not a parameter of family {fam} (shared model "
                       "parameters must exist in every family)")
        res = v.param(f"model.{k}", s, types.get(first, {}).get(k, object), f"model.{k}")
        (shared.append(res) if isinstance(res, Param) else shared_fixed.__setitem__(k, res))
    if build:
        check_models(v, families, shared_fixed, shared)
    return families, shared_fixed, tuple(shared)

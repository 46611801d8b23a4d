"""Rules of the ``model`` section: families, their hyperparameters, shared hyperparameters.

The model registry (which families exist, their hyperparameters and types) loads torch, so
it is asked only when ``build`` is set (see :mod:`atml.config.build`). A space read back
from a study without it keeps its hyperparameter values as stored: they were checked
against the registry when the study was created.

A family with presets (resnet1d: ``custom``, ``resnet18``) says which hyperparameters each
preset does not read; a space that sets one that no preset it allows reads is rejected.
"""

from __future__ import annotations

from typing import Any

from atml.config.schema import Param
from atml.config.validator import Validator
from atml.errors import SpaceError

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
        if k in ("families", "init"):  # init: the warm start (atml.config.init_rules)
            continue
        for fam in types:
            if k not in types[fam]:
                v.fail(f"model.{k}", f"unknown key: not a parameter of family {fam} (shared model "
                       "parameters must exist in every family)")
        res = v.param(f"model.{k}", s, types.get(first, {}).get(k, object), f"model.{k}")
        (shared.append(res) if isinstance(res, Param) else shared_fixed.__setitem__(k, res))
    if build:
        from atml.models import build_model

        for fam, (fixed, _) in families.items():
            try:  # a bad fixed value is named at its family, not at the first searched range
                build_model(fam, in_channels=1, n_classes=2, **{**shared_fixed, **fixed})
            except SpaceError as e:
                v.fail(f"model.families.{fam}", str(e))
        check_models(v, families, shared_fixed, shared)
        shared_keys = set(shared_fixed) | {p.key for p in shared}
        for fam, (fixed, params) in families.items():
            _check_preset_keys(v, fam, {**shared_fixed, **fixed}, [*shared, *params], shared_keys)
    return families, shared_fixed, tuple(shared)


def _check_preset_keys(v: Validator, fam: str, fixed: dict[str, Any], params: list[Param],
                       shared_keys: set[str]) -> None:
    """Fail on a hyperparameter that no preset the space allows reads (``depth`` under a fixed
    ``preset: resnet18``). With a searched preset, a key some of its presets read is fine:
    the trials of the others ignore it."""
    from atml.models import family_params, family_presets

    presets = family_presets(fam)
    if not presets:
        return
    default = family_params(fam)["preset"]
    searched = next((p for p in params if p.key == "preset"), None)
    values = list(searched.choices) if searched is not None else [fixed.get("preset", default)]
    for key in [*fixed, *(p.key for p in params)]:
        if key == "preset" or not all(key in presets.get(str(pv), ()) for pv in values):
            continue
        where = f"model.{key}" if key in shared_keys else f"model.families.{fam}.{key}"
        which = ", ".join(repr(pv) for pv in values)
        implicit = " (the default)" if searched is None and "preset" not in fixed else ""
        ignored = sorted({k for pv in values for k in presets.get(str(pv), ())})
        v.fail(where, f"not used by {fam} preset {which}{implicit}, which ignores {', '.join(ignored)}; "
                      "remove it or choose a preset that uses it")

"""Read a search space: a YAML file, a parsed mapping, or the copy stored on a study."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from atml.config.data_rules import data_section
from atml.config.distill_rules import distill_section
from atml.config.gate_rules import gate_settings
from atml.config.init_rules import init_section
from atml.config.mode_rules import mode_rules
from atml.config.model_rules import model_section
from atml.config.schema import SearchSpace
from atml.config.study_rules import budget, study_settings
from atml.config.train_rules import train_section
from atml.config.validation_rules import validation_settings
from atml.config.validator import Validator
from atml.errors import SpaceError

__all__ = ["load_space", "space_from_dict", "space_from_stored"]

_SECTIONS = {"study", "budget", "data", "train", "model", "gate", "validation"}


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a YAML search space file."""
    p = Path(path)
    if not p.is_file():
        raise SpaceError(f"{p}: no such search space file")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise SpaceError(f"{p.name}:{where} invalid YAML ({getattr(e, 'problem', e)})") from None
    return space_from_dict(raw, source=p.name, base_dir=p.resolve().parent)


def space_from_dict(
    raw: Any, *, source: str = "<space>", base_dir: Path | None = None, check_paths: bool = True,
    check_build: bool = True,
) -> SearchSpace:
    """Validate an already parsed mapping (``base_dir`` resolves relative data paths).

    ``check_paths=False`` is for a space loaded back from a study on another machine,
    whose data paths need not exist there (the worker passes its own ``--data``).
    ``check_build=False`` skips the checks that the models and the data can be built
    (:mod:`atml.config.build`), and with them torch.
    """
    v = Validator(source)
    if not isinstance(raw, dict):
        v.fail("", f"expected a mapping at the top level, got {type(raw).__name__}")
    v.keys("", raw, _SECTIONS, required={"study", "model"})
    study = study_settings(v, raw["study"])
    budget_ = budget(v, raw.get("budget") or {})
    data, data_params = data_section(v, raw.get("data") or {}, base_dir, check_paths, build=check_build)
    train_fixed, train_params = train_section(v, raw.get("train") or {})
    families, model_fixed, model_params = model_section(v, raw["model"], build=check_build)
    init, data = init_section(v, raw["model"], data, data_params, families, model_fixed, model_params, base_dir,
                              check_paths, check_build)
    distill = distill_section(v, raw.get("train") or {}, data, data_params, base_dir, check_paths, check_build)
    mode_rules(v, train_fixed, train_params, data, distill)
    gate = gate_settings(v, raw.get("gate") or {})
    validation = validation_settings(v, raw.get("validation") or {})
    stored = dict(raw)
    # The searched settings are stored as written (their specs), the rest as validated.
    stored["data"] = {**data, **{p.key: raw["data"][p.key] for p in data_params}}
    if init is not None:  # the source as resolved here: workers elsewhere read the same checkpoint path
        stored["model"] = {**raw["model"], "init": {**raw["model"]["init"], "from": init.checkpoint}}
    if distill is not None:  # the teacher as resolved here, as for model.init
        stored["train"] = {**raw["train"], "distill": {**raw["train"]["distill"], "teacher": distill.teacher}}
    return SearchSpace(
        source=source,
        study=study,
        budget=budget_,
        data=data,
        train_fixed=train_fixed,
        train_params=train_params,
        families=families,
        model_fixed=model_fixed,
        model_params=model_params,
        gate=gate,
        raw=stored,
        data_params=data_params,
        validation=validation,
        init=init,
        distill=distill,
    )


def space_from_stored(stored: dict[str, Any], *, check_build: bool = False) -> SearchSpace:
    """The space stored on a study, as :func:`atml.records.stored_space` returns it
    (``{"source", "raw"}``, written by :meth:`SearchSpace.to_json`).

    Data paths need not exist on this machine. Without ``check_build`` no model or data
    build is tried and torch is not imported: the space was checked when the study was
    created, and its model hyperparameters are taken as stored. A worker, which builds
    the models anyway, passes ``check_build=True`` for the registry's typing and checks.
    """
    if not isinstance(stored, dict) or "raw" not in stored:
        raise SpaceError(f"stored search space: expected a mapping with 'source' and 'raw', got {stored!r:.80}")
    return space_from_dict(stored["raw"], source=str(stored.get("source", "<stored>")), check_paths=False,
                           check_build=check_build)

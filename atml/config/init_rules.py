"""Rules of ``model.init``: a warm start from a trained model (see :mod:`atml.trial.warmstart`).

``from`` names the source model in one of three ways, each resolved to its ``model.pt``
when the space is loaded (a missing file, study or trial fails here, before any study
exists):

- ``path/to/model.pt``: a trial checkpoint (relative to the space file's folder);
- ``path/to/best.onnx``: an exported model, whose sidecar (``best.onnx.json``) names its
  study and trial, looked up as below;
- ``study:trial`` (``afib_small:3``): a completed trial of a study in ``storage`` (default
  the default ``atml search`` storage), its checkpoint under ``artifacts`` (default: beside
  that storage, where ``atml search`` writes it).

With the model registry at hand (``build``) the source is read and the space checked
against it: the same family; no hyperparameter that shapes a weight (the architecture is
the source's, only ``dropout`` may be set or searched); ``head: keep`` only with the
source's classes and task; ``freeze`` at most the model's blocks; the data resampled to the
source's rate (``data.target_fs`` is set to it; a different fixed or searched one fails);
named target leads that the source's first layer can be mapped onto.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from atml.config.schema import Param, WarmStart
from atml.config.validator import Validator
from atml.errors import AtmlError

__all__ = ["INIT_KEYS", "HEADS", "WEIGHT_FREE", "init_section", "resolve_checkpoint"]

INIT_KEYS = {"from", "freeze", "lr_scale", "head", "leads", "storage", "artifacts"}
HEADS = ("new", "keep")
LEADS = ("pick", "sum")
WEIGHT_FREE = ("dropout",)  # hyperparameters that shape no weight: a warm start may set or search them
_DEFAULTS: dict[str, Any] = {"freeze": 0, "lr_scale": 1.0, "head": "new", "leads": "pick"}
_REF = re.compile(r"^(?P<study>[^:/\\]+):(?P<trial>\d+)$")
_CHECKPOINT_ATTR = "checkpoint"  # the trial attribute atml.trial.attributes.CHECKPOINT (relative path)


def init_section(v: Validator, model: dict[str, Any], data: dict[str, Any], data_params: tuple[Param, ...],
                 families: dict[str, tuple[dict[str, Any], tuple[Param, ...]]], shared: dict[str, Any],
                 shared_params: tuple[Param, ...], base_dir: Path | None, check_paths: bool,
                 build: bool) -> tuple[WarmStart | None, dict[str, Any]]:
    """``model.init`` as a :class:`WarmStart` (None when absent) and the data section (with
    ``target_fs`` set to the source's rate when the source was read)."""
    d = model.get("init")
    if d is None:
        return None, data
    v.keys("model.init", d, INIT_KEYS, required={"from"})
    fixed = dict(_DEFAULTS)
    params: list[Param] = []
    for key in ("freeze", "lr_scale"):
        if key in d:
            res = v.param(f"model.init.{key}", d[key], object if key == "freeze" else float, f"init.{key}")
            values = _values(res) if isinstance(res, Param) else [res]
            for val in values:
                (_check_freeze if key == "freeze" else _check_lr_scale)(v, val)
            if isinstance(res, Param):
                params.append(res)
                fixed.pop(key)
            else:
                fixed[key] = res
    for key, allowed in (("head", HEADS), ("leads", LEADS)):
        if key in d:
            if d[key] not in allowed:
                v.fail(f"model.init.{key}", f"must be one of {', '.join(allowed)} (got {d[key]!r})")
            fixed[key] = d[key]
    src = d["from"]
    if not isinstance(src, str) or not src.strip():
        v.fail("model.init.from", f"expected a checkpoint (.pt), an exported model (.onnx) or study:trial, got {src!r}")
    checkpoint = resolve_checkpoint(v, src, d, base_dir) if check_paths else src
    init = WarmStart(source=src, checkpoint=checkpoint, fixed=fixed, params=tuple(params))
    if build and check_paths:
        data = _check_source(v, init, data, data_params, families, shared, shared_params)
    return init, data


def _values(p: Param) -> list[Any]:
    return list(p.choices) if p.kind == "categorical" else [p.low, p.high]


def _check_freeze(v: Validator, val: Any) -> None:
    if isinstance(val, bool) or not isinstance(val, int | float):
        v.fail("model.init.freeze", f"expected a number of leading blocks or a fraction in [0, 1), got {val!r}")
    if isinstance(val, int) and val < 0:
        v.fail("model.init.freeze", f"must be >= 0 blocks (got {val})")
    if isinstance(val, float) and not 0 <= val < 1:
        v.fail("model.init.freeze", f"a fraction of the blocks must be in [0, 1) (got {val}); a count is an int")


def _check_lr_scale(v: Validator, val: Any) -> None:
    if not val > 0:
        v.fail("model.init.lr_scale", f"must be > 0 (got {val})")


def resolve_checkpoint(v: Validator, src: str, d: dict[str, Any], base_dir: Path | None,
                       where: str = "model.init.from") -> str:
    """The absolute path of the ``model.pt`` that ``src`` names (a ``.pt`` file, an ``.onnx`` export
    with its sidecar, or ``study:trial`` looked up in ``d``'s ``storage``/``artifacts``); errors
    name ``where`` (its section's ``storage``/``artifacts`` beside it)."""
    if src.endswith((".pt", ".onnx")):
        p = Path(src).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        if src.endswith(".pt"):
            if not p.is_file():
                v.fail(where, f"no such checkpoint file: {p}")
            return str(p.resolve())
        side = Path(f"{p}.json")
        if not side.is_file():
            v.fail(where, f"no sidecar {side} beside the exported model (atml export writes it; it names the trial)")
        try:
            meta = json.loads(side.read_text())
            study, number = str(meta["study"]), int(meta["trial"]["number"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            v.fail(where, f"sidecar {side} does not name a study and trial ({e})")
        return _trial_checkpoint(v, study, number, d, where)
    m = _REF.match(src.strip())
    if m is None:
        v.fail(where, f"expected a checkpoint (.pt), an exported model (.onnx) or study:trial, got {src!r}")
    return _trial_checkpoint(v, m["study"], int(m["trial"]), d, where)


def _trial_checkpoint(v: Validator, study: str, number: int, d: dict[str, Any], where: str) -> str:
    """The checkpoint a completed trial of ``study`` recorded, in the section's ``storage``."""
    section = where.rsplit(".", 1)[0]
    from atml.storage import DEFAULT_STORAGE, default_artifacts, open_storage, sqlite_path, study_names

    url = d.get("storage") or DEFAULT_STORAGE
    if not isinstance(url, str):
        v.fail(f"{section}.storage", f"expected a storage URL, got {url!r}")
    db = sqlite_path(url)
    if db is not None and not db.is_file():
        v.fail(f"{section}.storage", f"no such database file {db} (the storage of study {study!r})")
    try:
        storage = open_storage(url)
        names = study_names(storage)
        if study not in names:
            v.fail(where, f"study {study!r} not found in {url} (studies: {', '.join(names) or 'none'})")
        trials = storage.get_all_trials(storage.get_study_id_from_name(study), deepcopy=False)
    except AtmlError as e:
        v.fail(f"{section}.storage", str(e))
    found = [t for t in trials if t.number == number]
    if not found:
        v.fail(where, f"study {study!r} has no trial #{number} ({len(trials)} trials)")
    rel = found[0].user_attrs.get(_CHECKPOINT_ATTR)
    if found[0].state.name != "COMPLETE" or not rel:
        v.fail(where, f"trial #{number} of study {study!r} is {found[0].state.name} and has no "
                       "checkpoint; name a completed trial")
    home = Path(d.get("artifacts") or default_artifacts(url))
    path = home / study / rel
    if not path.is_file():
        v.fail(where, f"checkpoint of trial #{number} of study {study!r} not found: {path} "
                       f"(set {section}.artifacts to the folder holding <study>/trials/)")
    return str(path.resolve())


def _check_source(v: Validator, init: WarmStart, data: dict[str, Any], data_params: tuple[Param, ...],
                  families: dict[str, tuple[dict[str, Any], tuple[Param, ...]]], shared: dict[str, Any],
                  shared_params: tuple[Param, ...]) -> dict[str, Any]:
    """The space against the source checkpoint; returns ``data`` with the source's rate."""
    import torch

    from atml.config.build import check_data
    from atml.config.schema import combinations
    from atml.models import build_model
    from atml.models.transfer import backbone_blocks, map_leads

    try:
        ck = torch.load(init.checkpoint, map_location="cpu", weights_only=False)
        fam, hp, n_in, fs = ck["family"], dict(ck["hparams"]), int(ck["in_channels"]), int(ck["fs"])
        classes, task = list(ck["classes"]), str(ck.get("task", "binary"))
        blocks = len(backbone_blocks(build_model(fam, in_channels=n_in, n_classes=int(ck["n_classes"]), **hp)))
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        v.fail("model.init.from", f"{init.checkpoint} is not a readable atml checkpoint ({type(e).__name__}: {e})")
    if ck.get("shapes"):
        v.fail("model.init.from", f"{init.checkpoint} is a pruned model (train.prune); warm-start from an unpruned one")
    names = list(families)
    if names != [fam]:
        v.fail("model.families", f"the warm start's source is a {fam} model, the space's famil"
                                 f"{'y is' if len(names) == 1 else 'ies are'} {', '.join(names)}: "
                                 f"a warm start keeps the source's family (set families: {{{fam}: {{}}}})")
    fixed, params = families[fam]
    for key, where in [*((k, f"model.{k}") for k in shared), *((p.key, f"model.{p.key}") for p in shared_params),
                       *((k, f"model.families.{fam}.{k}") for k in fixed),
                       *((p.key, f"model.families.{fam}.{p.key}") for p in params)]:
        if key not in WEIGHT_FREE:
            v.fail(where, f"set by the warm start's source ({key}={hp.get(key)!r}): a warm-started model keeps "
                          f"the source's architecture; only {', '.join(WEIGHT_FREE)} may be set")
    data_classes, multilabel = list(data.get("classes") or ()), bool(data.get("multilabel"))
    data_task = "multilabel" if multilabel else ("binary" if len(data_classes) == 2 else "multiclass")
    if init.fixed.get("head") == "keep" and (data_classes != classes or data_task != task):
        v.fail("model.init.head", f"keep needs the source's {task} classes {classes}, the data has {data_task} "
                                  f"classes {data_classes}; use head: new")
    for p in init.params:
        if p.key == "freeze" and any(isinstance(x, int) and x > blocks for x in _values(p)):
            v.fail("model.init.freeze", f"up to {p.high if p.kind != 'categorical' else max(p.choices)} blocks "
                                        f"searched, but the {fam} model has {blocks}")
    freeze = init.fixed.get("freeze", 0)
    if isinstance(freeze, int) and freeze > blocks:
        v.fail("model.init.freeze", f"{freeze} blocks, but the {fam} model has {blocks} (stem and blocks)")
    if any(p.key == "target_fs" for p in data_params):
        v.fail("data.target_fs", f"cannot be searched with a warm start: the data is resampled to the source's {fs} Hz")
    if data.get("target_fs") not in (None, fs):
        v.fail("data.target_fs", f"{data['target_fs']} Hz, but the warm start's source was trained at {fs} Hz "
                                 "(leave target_fs unset: it is then set to the source's rate)")
    leads = data.get("leads")
    if isinstance(leads, list | tuple) and not (len(leads) == 1 and str(leads[0]).lower() == "all"):
        try:
            map_leads(torch.zeros(1, n_in, 1), tuple(ck.get("leads") or ()), tuple(map(str, leads)), len(leads),
                      str(init.fixed.get("leads", "pick")))
        except AtmlError as e:
            v.fail("model.init.leads", str(e).split(": ", 1)[-1])
    if data.get("target_fs") is None:
        data = {**data, "target_fs": fs}
        check_data(v, data, combinations(data_params))
    return data

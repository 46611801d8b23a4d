"""Rules of ``train.distill``: train the student on a teacher's soft targets (:mod:`atml.trial.distill`).

``teacher`` names the teacher in one of three ways, resolved when the space is loaded (a
missing file, study or trial fails here, before any study exists):

- ``path/to/model.pt``: a trial checkpoint (relative to the space file's folder); a
  cross-validated trial's checkpoint holds its fold models, whose mean logits teach;
- ``study:trial``: a completed trial of a study in ``storage``, its checkpoint under
  ``artifacts`` (both as for ``model.init``, whose resolution this shares);
- ``path/to/best.onnx``: an exported model (an ensemble export is one file), run with
  onnxruntime. It must take the network input (``atml export --no-preprocessing``, or an
  export from before raw-input graphs): a raw-input graph is refused.

The teacher must take exactly the student's network input (leads, samples, rate: the same
preprocessing) and have the data's classes and task; what the data section already fixes
is checked here, the rest (lead count, samples of WFDB records) when a worker has the data.
``alpha`` (the soft targets' share of the loss, in [0, 1]) and ``temperature`` (> 0) may be
searched like ``train.lr``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from atml.config.init_rules import resolve_checkpoint
from atml.config.schema import Distill, Param, combinations
from atml.config.validator import Validator
from atml.errors import SpaceError

__all__ = ["DISTILL_KEYS", "DISTILL_DEFAULTS", "distill_section", "teacher_meta", "shape_text"]

DISTILL_KEYS = {"teacher", "alpha", "temperature", "storage", "artifacts"}
DISTILL_DEFAULTS: dict[str, float] = {"alpha": 0.5, "temperature": 4.0}
WHERE = "train.distill.teacher"
_KNOWN_SHAPE = ("iesd_txt", "npz", "synthetic")  # formats whose segment length and rate the section gives


def distill_section(v: Validator, train: dict[str, Any], data: dict[str, Any], data_params: tuple[Param, ...],
                    base_dir: Path | None, check_paths: bool, build: bool) -> Distill | None:
    """``train.distill`` as a :class:`Distill` (None when absent); with ``check_paths`` and
    ``build`` the teacher is read and checked against every data variant."""
    d = (train or {}).get("distill")
    if d is None:
        return None
    v.keys("train.distill", d, DISTILL_KEYS, required={"teacher"})
    fixed: dict[str, Any] = dict(DISTILL_DEFAULTS)
    params: list[Param] = []
    for key in ("alpha", "temperature"):
        if key not in d:
            continue
        res = v.param(f"train.distill.{key}", d[key], float, f"train.distill.{key}")
        values = list(res.choices) if isinstance(res, Param) and res.kind == "categorical" else (
            [res.low, res.high] if isinstance(res, Param) else [res])
        for val in values:
            if key == "alpha" and not 0 <= val <= 1:
                v.fail("train.distill.alpha", f"must be in [0, 1] (got {val})")
            if key == "temperature" and not val > 0:
                v.fail("train.distill.temperature", f"must be > 0 (got {val})")
        if isinstance(res, Param):
            params.append(res)
            fixed.pop(key)
        else:
            fixed[key] = float(res)
    src = d["teacher"]
    if not isinstance(src, str) or not src.strip():
        v.fail(WHERE, f"expected a checkpoint (.pt), an exported model (.onnx) or study:trial, got {src!r}")
    teacher = _resolve(v, src, d, base_dir) if check_paths else src
    if build and check_paths:
        try:
            meta = teacher_meta(teacher)
        except SpaceError as e:
            v.fail(WHERE, str(e))
        for combo in combinations(data_params):
            _check_data(v, meta, {**data, **combo})
    return Distill(source=src, teacher=teacher, fixed=fixed, params=tuple(params))


def _resolve(v: Validator, src: str, d: dict[str, Any], base_dir: Path | None) -> str:
    """An ``.onnx`` teacher as an absolute path (run as it is); any other through the warm
    start's resolver to its ``model.pt``."""
    if not src.endswith(".onnx"):
        return resolve_checkpoint(v, src, d, base_dir, where=WHERE)
    p = Path(src).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    if not p.is_file():
        v.fail(WHERE, f"no such exported model: {p}")
    if not Path(f"{p}.json").is_file():
        v.fail(WHERE, f"no sidecar {p}.json beside the exported model (atml export writes it: its input and classes)")
    return str(p.resolve())


def teacher_meta(path: str) -> dict[str, Any]:
    """What a teacher takes and predicts: ``kind`` (pt | onnx), ``classes``, ``task``, ``leads``,
    ``samples``, ``fs`` and ``members`` (fold or ensemble models); a SpaceError when unreadable
    or when an ONNX teacher takes raw segments."""
    if path.endswith(".onnx"):
        try:
            side = json.loads(Path(f"{path}.json").read_text())
            inp, prep = side.get("input") or {}, side.get("preprocessing") or {}
            kind = str(inp.get("kind", "network"))  # exports from before raw graphs take the network input
            if kind != "network":
                raise SpaceError(f"{path} takes {kind} segments (preprocessing in the graph); a teacher must "
                                 "take the student's network input: export it with --no-preprocessing")
            fit = side.get("fit") or {}
            return {"kind": "onnx", "classes": list(side["classes"]), "task": str(side.get("task", "binary")),
                    "leads": int(inp["leads"]), "samples": int(inp["samples"]),
                    "fs": int(prep.get("target_fs") or prep.get("fs") or side["fs"]),
                    "members": int(fit.get("members") or 1)}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SpaceError(f"sidecar {path}.json does not say the teacher's input and classes ({e})") from None
    import torch

    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
        return {"kind": "pt", "classes": list(ck["classes"]), "task": str(ck.get("task", "binary")),
                "leads": int(ck["in_channels"]), "samples": int(ck["n_samples"]), "fs": int(ck["fs"]),
                "members": len(ck.get("folds") or ()) or 1}
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise SpaceError(f"{path} is not a readable atml checkpoint ({type(e).__name__}: {e})") from None


def shape_text(leads: int | None, samples: int | None, fs: int | None) -> str:
    """``1 lead x 625 samples at 125 Hz`` (unknown parts left out)."""
    parts = []
    if leads is not None:
        parts.append(f"{leads} lead{'' if leads == 1 else 's'}")
    if samples is not None:
        parts.append(f"{samples} samples")
    out = " x ".join(parts)
    return f"{out} at {fs} Hz" if fs is not None else out


def _check_data(v: Validator, meta: dict[str, Any], section: dict[str, Any]) -> None:
    from atml.data import spec_from_section

    spec = spec_from_section(section)
    classes, task = list(spec.classes), spec.task
    if classes != meta["classes"] or task != meta["task"]:
        v.fail(WHERE, f"the teacher predicts {meta['task']} classes {meta['classes']}, the data has {task} "
                      f"classes {classes} (data.classes)")
    known = spec.resolved_format() in _KNOWN_SHAPE
    fs = spec.target_fs or (spec.fs if known else None)
    samples = None
    if spec.window is not None and fs is not None:
        samples = round(spec.window * fs)
    elif known and fs is not None:
        samples = round(spec.segment_length * fs / spec.fs)
    leads = len(spec.leads) if spec.leads else None
    if (fs is not None and fs != meta["fs"]) or (samples is not None and samples != meta["samples"]) or (
            leads is not None and leads != meta["leads"]):
        v.fail(WHERE, f"the teacher takes {shape_text(meta['leads'], meta['samples'], meta['fs'])}, the student's "
                      f"input is {shape_text(leads, samples, fs)}: the teacher must take the student's network "
                      "input (the same leads, samples, rate and preprocessing)")

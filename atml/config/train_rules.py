"""Rules of the ``train`` section; its settings and defaults are :class:`TrainConfig`'s."""

from __future__ import annotations

from typing import Any

from atml.config.schema import Param
from atml.config.training import TRAIN_DEFAULTS
from atml.config.validator import Validator

__all__ = ["MODES", "OPTIMIZERS", "PRECISIONS", "train_section"]

OPTIMIZERS = ("adamw", "adam", "sgd")
PRECISIONS = ("fp32", "bf16", "fp16")  # fp16 needs CUDA: checked against the device when a worker starts
MODES = ("supervised", "comparator")  # train.mode; comparator: atml.models.prototype, checked by mode_rules
_POSITIVE = {"epochs", "batch_size", "lr", "patience", "lr_patience", "min_epochs"}


def train_section(v: Validator, d: Any) -> tuple[dict[str, Any], tuple[Param, ...]]:
    """The ``train`` section as (fixed settings with defaults filled in, searched parameters)."""
    v.keys("train", d, {*TRAIN_DEFAULTS, "distill", "prune"})  # distill: atml.config.distill_rules
    fixed = {k: default for k, (_, default) in TRAIN_DEFAULTS.items()}
    params: list[Param] = []
    for k, spec in d.items():
        if k == "distill":
            continue
        if k == "prune":
            prune, prune_params = _prune_section(v, spec)
            fixed["prune"] = prune
            params.extend(prune_params)
            continue
        typ = TRAIN_DEFAULTS[k][0]
        res = v.param(f"train.{k}", spec, typ, f"train.{k}")
        if isinstance(res, Param):
            params.append(res)
            fixed.pop(k, None)
            values = list(res.choices) if res.kind == "categorical" else [res.low, res.high]
        else:
            fixed[k] = res
            values = [res]
        for val in values:
            _check_value(v, k, val)
    return fixed, tuple(params)


PRUNE_DEFAULTS: dict[str, tuple[type, Any]] = {"amount": (float, 0.0), "epochs": (int, 2), "steps": (int, 1)}


def _prune_section(v: Validator, d: Any) -> tuple[dict[str, Any], list[Param]]:
    """``train.prune``: ``amount`` (share of each layer group's channels removed, [0, 1)),
    ``epochs`` (fine-tuning epochs after pruning, >= 1), ``steps`` (rounds, each followed by
    its share of the fine-tuning); each may be searched (``train.prune.amount``...)."""
    if not isinstance(d, dict):
        v.fail("train.prune", f"expected a mapping such as {{amount: 0.5, epochs: 2}}, got {d!r}")
    v.keys("train.prune", d, set(PRUNE_DEFAULTS), required={"amount"})
    fixed = {k: default for k, (_, default) in PRUNE_DEFAULTS.items()}
    params: list[Param] = []
    for k, spec in d.items():
        where = f"train.prune.{k}"
        res = v.param(where, spec, PRUNE_DEFAULTS[k][0], where)
        values = list(res.choices) if isinstance(res, Param) and res.kind == "categorical" else (
            [res.low, res.high] if isinstance(res, Param) else [res])
        for val in values:
            if k == "amount" and not 0 <= val < 1:
                v.fail(where, f"must be in [0, 1) (got {val})")
            if k in ("epochs", "steps") and val < 1:
                v.fail(where, f"must be >= 1 (got {val})")
        if isinstance(res, Param):
            params.append(res)
            fixed.pop(k)
        else:
            fixed[k] = res
    return fixed, params


def _check_value(v: Validator, k: str, val: Any) -> None:
    if k == "optimizer" and val not in OPTIMIZERS:
        v.fail("train.optimizer", f"must be one of {', '.join(OPTIMIZERS)} (got {val!r})")
    if k == "precision" and val not in PRECISIONS:
        v.fail("train.precision", f"must be one of {', '.join(PRECISIONS)} (got {val!r})")
    if k == "mode" and val not in MODES:
        v.fail("train.mode", f"must be one of {', '.join(MODES)} (got {val!r})")
    if k in _POSITIVE and val <= 0:
        v.fail(f"train.{k}", f"must be > 0 (got {val})")
    if k in ("weight_decay", "gap", "momentum", "stretch") and val < 0:
        v.fail(f"train.{k}", f"must be >= 0 (got {val})")
    if k == "qat" and val < 0:
        v.fail("train.qat", f"must be >= 0 epochs (got {val})")
    if k == "augment" and not 0 <= val <= 1:
        v.fail("train.augment", f"must be in [0, 1] (got {val})")
    if k in ("lr_factor", "label_smoothing", "ema") and not 0 <= val < 1:
        v.fail(f"train.{k}", f"must be in [0, 1) (got {val})")

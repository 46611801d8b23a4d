"""Rules of the ``train`` section; its settings and defaults are :class:`TrainConfig`'s."""

from __future__ import annotations

from typing import Any

from atml.config.schema import Param
from atml.config.training import TRAIN_DEFAULTS
from atml.config.validator import Validator

__all__ = ["OPTIMIZERS", "PRECISIONS", "train_section"]

OPTIMIZERS = ("adamw", "adam", "sgd")
PRECISIONS = ("fp32", "bf16", "fp16")  # fp16 needs CUDA: checked against the device when a worker starts
_POSITIVE = {"epochs", "batch_size", "lr", "patience", "lr_patience", "min_epochs"}


def train_section(v: Validator, d: Any) -> tuple[dict[str, Any], tuple[Param, ...]]:
    """The ``train`` section as (fixed settings with defaults filled in, searched parameters)."""
    v.keys("train", d, {*TRAIN_DEFAULTS, "distill"})  # distill: atml.config.distill_rules
    fixed = {k: default for k, (_, default) in TRAIN_DEFAULTS.items()}
    params: list[Param] = []
    for k, spec in d.items():
        if k == "distill":
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


def _check_value(v: Validator, k: str, val: Any) -> None:
    if k == "optimizer" and val not in OPTIMIZERS:
        v.fail("train.optimizer", f"must be one of {', '.join(OPTIMIZERS)} (got {val!r})")
    if k == "precision" and val not in PRECISIONS:
        v.fail("train.precision", f"must be one of {', '.join(PRECISIONS)} (got {val!r})")
    if k in _POSITIVE and val <= 0:
        v.fail(f"train.{k}", f"must be > 0 (got {val})")
    if k in ("weight_decay", "gap", "momentum", "stretch") and val < 0:
        v.fail(f"train.{k}", f"must be >= 0 (got {val})")
    if k == "augment" and not 0 <= val <= 1:
        v.fail("train.augment", f"must be in [0, 1] (got {val})")
    if k in ("lr_factor", "label_smoothing", "ema") and not 0 <= val < 1:
        v.fail(f"train.{k}", f"must be in [0, 1) (got {val})")

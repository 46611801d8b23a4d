"""Rules of ``train.mode`` that look beyond the ``train`` section: comparator learning
(:mod:`atml.models.prototype`) needs single-label data and does not combine with distillation."""

from __future__ import annotations

from typing import Any

from atml.config.schema import Distill, Param
from atml.config.validator import Validator

__all__ = ["mode_rules"]


def mode_rules(v: Validator, train_fixed: dict[str, Any], train_params: tuple[Param, ...], data: dict[str, Any],
               distill: Distill | None) -> None:
    """Fail (one line naming ``train.mode``) when comparator mode may be drawn for multilabel data
    or together with ``train.distill``."""
    modes = {train_fixed.get("mode", "supervised")}
    for p in train_params:
        if p.name == "train.mode":
            modes |= set(p.choices or ())
    if "comparator" not in modes:
        return
    if data.get("multilabel"):
        v.fail("train.mode", "comparator needs one class per segment (binary or multiclass); the data is "
                             "multilabel (data.multilabel: true): use mode: supervised")
    if distill is not None:
        v.fail("train.mode", "comparator does not combine with train.distill (a teacher's soft targets are "
                             "logits, the comparator trains embeddings on pairs): drop one of them")

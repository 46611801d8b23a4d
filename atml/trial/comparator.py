"""Comparator trials (``train.mode: comparator``): the family model becomes the encoder of a
:class:`~atml.models.prototype.PrototypeClassifier`, which :func:`atml.train.fit` trains on pairs.

The wrapped model is what the trial sizes, trains, checkpoints (``head: prototype``, so
:func:`atml.models.model_from_checkpoint` wraps it again), gates and exports: a plain
classifier whose logits are scaled cosine similarities to the class prototypes.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from atml.errors import SpaceError
from atml.models.prototype import PrototypeClassifier
from atml.trial.data import PreparedData

__all__ = ["HEAD", "wrap", "builder", "head"]

HEAD = "prototype"  # the checkpoint's "head" of a comparator trial


def wrap(model: nn.Module, mode: str, data: PreparedData) -> nn.Module:
    """``model`` itself (supervised), or a prototype classifier over it (comparator); a
    SpaceError naming ``train.mode`` for multilabel data."""
    if mode != "comparator":
        return model
    if data.task == "multilabel":
        raise SpaceError("train.mode: comparator needs one class per segment (binary or multiclass); "
                         "the data is multilabel: use mode: supervised")
    return PrototypeClassifier(model, len(data.classes))


def builder(build: Callable[[], nn.Module], mode: str, data: PreparedData) -> Callable[[], nn.Module]:
    """``build`` whose models are wrapped as :func:`wrap` does (one per cross-validation fold)."""
    return lambda: wrap(build(), mode, data)


def head(mode: str) -> str | None:
    """The checkpoint's ``head`` entry for ``mode`` (None: the family's own linear head)."""
    return HEAD if mode == "comparator" else None

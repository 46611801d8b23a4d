"""Model families searched by atml, and the registry used to build them.

Every family is a ``torch.nn.Module`` built from one frozen dataclass of
hyperparameters (:class:`~atml.models.hparams.Hparams`, validated once when it is
made): ``in_channels`` and ``n_classes`` (set from the data) plus hyperparameters
with defaults (set from the search space).  Models map
float32 ``(batch, in_channels, samples)`` to raw logits ``(batch, n_classes)``
for any ``samples >= 250`` and export to ONNX (opset 17, dynamic batch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from atml.errors import SpaceError
from atml.models import afnet, inception1d, resnet1d, sepnet
from atml.models.afnet import AFNet, AFNetHparams
from atml.models.hparams import Hparams
from atml.models.inception1d import Inception1D, Inception1DHparams
from atml.models.macs import count_macs
from atml.models.prototype import PrototypeClassifier
from atml.models.resnet1d import ResNet1D, ResNet1DHparams
from atml.models.sepnet import SepNet, SepNetHparams
from atml.models.shapes import apply_shape_plan, shape_plan

__all__ = [
    "AFNet",
    "AFNetHparams",
    "Family",
    "Hparams",
    "Inception1D",
    "Inception1DHparams",
    "PrototypeClassifier",
    "ResNet1D",
    "ResNet1DHparams",
    "SPACE_HINTS",
    "SepNet",
    "SepNetHparams",
    "apply_shape_plan",
    "build_model",
    "model_from_checkpoint",
    "shape_plan",
    "count_macs",
    "count_parameters",
    "family_names",
    "family_params",
    "family_presets",
]


@dataclass(frozen=True)
class Family:
    """A registered model family: its hyperparameters and the model built from them."""

    hparams: type[Hparams]
    model: Callable[[Any], nn.Module]
    # Suggested (informational) search ranges: tuples are (low, high) inclusive
    # ranges, lists are categorical choices.
    space_hint: dict[str, Any]
    # preset name -> the hyperparameters that preset does not read (families with a
    # ``preset`` hyperparameter only)
    unused_by_preset: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


# Insertion order is the order family_names() reports.
_REGISTRY: dict[str, Family] = {
    afnet.FAMILY: Family(AFNetHparams, AFNet, afnet.SPACE_HINT),
    resnet1d.FAMILY: Family(ResNet1DHparams, ResNet1D, resnet1d.SPACE_HINT, resnet1d.UNUSED_BY_PRESET),
    sepnet.FAMILY: Family(SepNetHparams, SepNet, sepnet.SPACE_HINT),
    inception1d.FAMILY: Family(Inception1DHparams, Inception1D, inception1d.SPACE_HINT),
}

SPACE_HINTS: dict[str, dict[str, Any]] = {name: fam.space_hint for name, fam in _REGISTRY.items()}

# Set from the data, never searched, so family_params() leaves them out.
_DATA_ARGS = ("in_channels", "n_classes")


def family_names() -> tuple[str, ...]:
    """Names of all model families, in registry order."""
    return tuple(_REGISTRY)


def _family(family: str) -> Family:
    try:
        return _REGISTRY[family]
    except (KeyError, TypeError):
        known = ", ".join(_REGISTRY)
        raise SpaceError(f"unknown model family {family!r} (known: {known})") from None


def family_params(family: str) -> dict[str, Any]:
    """Hyperparameter names of ``family`` mapped to their default values.

    ``in_channels``/``n_classes`` are excluded.  The type of each default
    (``int`` or ``float``) is the type the family expects, which is
    enough to validate a YAML search space.
    """
    return {f.name: f.default for f in dataclasses.fields(_family(family).hparams) if f.name not in _DATA_ARGS}


def family_presets(family: str) -> dict[str, tuple[str, ...]]:
    """Presets of ``family`` mapped to the hyperparameters each does not read ({} when the
    family has no ``preset`` hyperparameter)."""
    return dict(_family(family).unused_by_preset)


def build_model(family: str, *, in_channels: int, n_classes: int, **hparams: Any) -> nn.Module:
    """Build a model of ``family``; omitted hyperparameters take their defaults.

    Raises :class:`~atml.errors.SpaceError` for an unknown family, an unknown
    hyperparameter name, or an invalid value (message names the parameter).
    """
    fam = _family(family)
    allowed = family_params(family)
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise SpaceError(
            f"unknown hyperparameter {', '.join(map(repr, unknown))} for model family {family!r} "
            f"(allowed: {', '.join(allowed)})"
        )
    return fam.model(fam.hparams(in_channels=in_channels, n_classes=n_classes, **hparams))


def model_from_checkpoint(ck: Mapping[str, Any], state_dict: Mapping[str, Any] | None = None) -> nn.Module:
    """The model a trial checkpoint dict describes (family, data shape, hyperparameters, and the
    layer shapes of a pruned model), with ``state_dict`` (default: the checkpoint's) loaded, in
    eval mode. The one place a stored model is rebuilt."""
    model = build_model(str(ck["family"]), in_channels=int(ck["in_channels"]), n_classes=int(ck["n_classes"]),
                        **ck["hparams"])
    if ck.get("head") == "prototype":  # a comparator trial (train.mode): the family model is the encoder
        model = PrototypeClassifier(model, int(ck["n_classes"]))
    apply_shape_plan(model, ck.get("shapes"))
    model.load_state_dict(ck["state_dict"] if state_dict is None else state_dict)
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())

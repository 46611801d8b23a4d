"""Model families searched by atml, and the registry used to build them.

Every family is a ``torch.nn.Module`` whose constructor takes only keyword
arguments: ``in_channels`` and ``n_classes`` (set from the data) plus
hyperparameters with defaults (set from the search space).  Models map
float32 ``(batch, in_channels, samples)`` to raw logits ``(batch, n_classes)``
for any ``samples >= 250`` and export to ONNX (opset 17, dynamic batch).
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from atml.errors import SpaceError
from atml.models import afnet, inception1d, resnet1d, sepnet
from atml.models.afnet import AFNet
from atml.models.inception1d import Inception1D
from atml.models.resnet1d import ResNet1D
from atml.models.sepnet import SepNet

__all__ = [
    "AFNet",
    "Inception1D",
    "ResNet1D",
    "SPACE_HINTS",
    "SepNet",
    "build_model",
    "count_parameters",
    "family_names",
    "family_params",
]

# Insertion order is the order family_names() reports.
_REGISTRY: dict[str, type[nn.Module]] = {
    "afnet": AFNet,
    "resnet1d": ResNet1D,
    "sepnet": SepNet,
    "inception1d": Inception1D,
}

# Suggested (informational) search ranges per family: tuples are (low, high)
# inclusive ranges, lists are categorical choices.
SPACE_HINTS: dict[str, dict[str, Any]] = {
    "afnet": afnet.SPACE_HINT,
    "resnet1d": resnet1d.SPACE_HINT,
    "sepnet": sepnet.SPACE_HINT,
    "inception1d": inception1d.SPACE_HINT,
}

# Set from the data, never searched, so family_params() leaves them out.
_DATA_ARGS = ("in_channels", "n_classes")


def family_names() -> tuple[str, ...]:
    """Names of all model families, in registry order."""
    return tuple(_REGISTRY)


def _family_class(family: str) -> type[nn.Module]:
    try:
        return _REGISTRY[family]
    except (KeyError, TypeError):
        known = ", ".join(_REGISTRY)
        raise SpaceError(f"unknown model family {family!r} (known: {known})") from None


def family_params(family: str) -> dict[str, Any]:
    """Hyperparameter names of ``family`` mapped to their default values.

    ``in_channels``/``n_classes`` are excluded.  The type of each default
    (``int`` or ``float``) is the type the constructor expects, which is
    enough to validate a YAML search space.
    """
    sig = inspect.signature(_family_class(family).__init__)
    return {
        name: p.default for name, p in sig.parameters.items() if name != "self" and name not in _DATA_ARGS
    }


def build_model(family: str, *, in_channels: int, n_classes: int, **hparams: Any) -> nn.Module:
    """Build a model of ``family``; omitted hyperparameters take their defaults.

    Raises :class:`~atml.errors.SpaceError` for an unknown family, an unknown
    hyperparameter name, or an invalid value (message names the parameter).
    """
    cls = _family_class(family)
    allowed = family_params(family)
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise SpaceError(
            f"unknown hyperparameter {', '.join(map(repr, unknown))} for model family {family!r} "
            f"(allowed: {', '.join(allowed)})"
        )
    return cls(in_channels=in_channels, n_classes=n_classes, **hparams)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())

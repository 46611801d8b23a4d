"""The training settings of one fit (:class:`TrainConfig`) and which of them a space may search.

The dataclass lives in config, not in :mod:`atml.train`, so the search space can take its
defaults from it without importing the training loop (config sits below train).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_type_hints

__all__ = ["TrainConfig", "TRAIN_KEYS", "TRAIN_DEFAULTS"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything :func:`atml.train.fit` needs besides the model and the data."""

    epochs: int = 20
    batch_size: int = 32
    lr: float = 1.5e-3
    weight_decay: float = 1e-3
    optimizer: str = "adamw"
    momentum: float = 0.9
    class_weighted: bool = False
    label_smoothing: float = 0.0
    patience: int = 5
    gap: float = 0.0
    lr_factor: float = 0.5
    lr_patience: int = 2
    min_epochs: int = 1
    augment: float = 0.0
    stretch: float = 0.0  # time-scale augmentation: each batch is resampled by a factor in [1/(1+s), 1+s]
    ema: float = 0.0  # decay of an exponential moving average of the weights (0: off); the average is scored and kept
    # fp32, or mixed precision under torch.autocast: bf16 (any device), fp16 (CUDA only, with a GradScaler)
    precision: str = "fp32"
    # supervised: cross-entropy on the labels; comparator: an encoder trained on pairs, classes from
    # prototypes (atml.models.prototype)
    mode: str = "supervised"
    keep: str = "best"  # best: the best validation epoch's weights; last: the final epoch's (fixed-length refits)
    seed: int = 0
    metric: str = "f1"
    direction: str = "maximize"
    task: str = "binary"  # binary | multiclass (softmax, cross-entropy) | multilabel (sigmoid, BCE)
    lr_scale: float = 1.0  # learning-rate multiplier of every non-head parameter (model.init.lr_scale)
    qat: int = 0  # epochs of quantisation-aware fine-tuning after training (0: off; atml.models.fakequant)
    # train.prune of the trial: {"amount": share of channels removed, "epochs": fine-tuning, "steps": rounds}; None: off
    prune: dict[str, Any] | None = None
    # train.distill of the trial: {"teacher": resolved path, "source", "alpha", "temperature"}; None: off
    distill: dict[str, Any] | None = None

    @classmethod
    def from_params(cls, train: dict[str, Any], **extra: Any) -> TrainConfig:
        """A config from a trial's ``train`` mapping plus ``extra`` settings; unknown keys are ignored."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in {**train, **extra}.items() if k in known})


# The settings a search space's ``train`` section may fix or search, in the order a trial's
# ``train`` mapping lists them. keep/seed/metric/direction/task come from the study and the data.
TRAIN_KEYS: tuple[str, ...] = (
    "epochs", "batch_size", "lr", "weight_decay", "optimizer", "momentum", "class_weighted",
    "label_smoothing", "patience", "gap", "lr_factor", "lr_patience", "min_epochs", "augment",
    "ema", "stretch", "precision",
    "mode", "qat",
)

_HINTS = get_type_hints(TrainConfig)
# name -> (python type, default), both taken from TrainConfig.
TRAIN_DEFAULTS: dict[str, tuple[type, Any]] = {
    k: (_HINTS[k], TrainConfig.__dataclass_fields__[k].default) for k in TRAIN_KEYS
}

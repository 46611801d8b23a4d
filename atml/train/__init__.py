"""Fit and evaluate one model configuration: no Optuna, no storage, plain tensors.

:func:`fit` trains (:mod:`atml.train.loop`: early stopping, pruning reports, mixed
precision, augmentation, comparator pairs), then runs the phases that compress the
trained model as the configuration asks (:mod:`atml.train.compress`: structured pruning,
quantisation-aware training).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from atml.config import TrainConfig  # re-exported: atml.train.TrainConfig keeps working
from atml.train.compress import compress
from atml.train.loop import Interrupted, TrainResult, augment, evaluate, predict_proba, stretch, train_loop

__all__ = ["TrainConfig", "TrainResult", "Interrupted", "fit", "predict_proba", "evaluate", "augment", "stretch"]


def fit(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    cfg: TrainConfig,
    report: Callable[[int, float, dict[str, float]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    classes: tuple[str, ...] = (),
    device: str | torch.device | None = None,
    distill: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    subjects: np.ndarray | None = None,
) -> TrainResult:
    """Train ``model`` and return the best epoch's metrics and weights (``cfg.keep="last"``:
    the last epoch's, for a fixed-length refit whose validation data may be in training).

    Then, as the configuration asks: ``train.prune`` removes channels from ``model`` (in
    place: the caller's model has the pruned architecture afterwards) and fine-tunes it, and
    ``train.qat`` fine-tunes it under fake int8 quantisation (:func:`atml.train.compress.compress`). The result's
    metrics and weights are then the compressed model's, ``shapes`` its layer shapes.

    ``report(epoch, objective, metrics)`` is called after each epoch and may raise (e.g.
    ``optuna.TrialPruned``) to stop; ``should_stop()`` is polled every batch and makes
    the loop raise :class:`Interrupted`.

    Trains on ``device`` (default: where ``x_train`` is); the model is moved there and
    stays, data elsewhere is copied there once. The kept weights come back on the CPU.

    ``distill(logits, loss, batch, indices)`` turns each batch's loss into the one minimised
    (knowledge distillation, :mod:`atml.trial.distill`); ``indices`` are the batch's rows of ``x_train``.
    ``cfg.mode`` comparator trains a :class:`~atml.models.prototype.PrototypeClassifier` on pairs,
    drawn across ``subjects`` (one per row of ``x_train``) where there are several.
    """
    res = train_loop(model, x_train, y_train, x_val, y_val, cfg, report, should_stop, classes, device, distill,
                subjects=subjects)
    prune = cfg.prune or {}
    if not (float(prune.get("amount", 0)) > 0 or cfg.qat > 0):
        return res
    return compress(model, res, (x_train, y_train, x_val, y_val), cfg, report, should_stop, classes, device,
                    distill, subjects)

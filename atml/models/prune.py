"""Structured (channel) pruning: remove whole output channels of the convolutions, so the
exported model really is smaller, not a dense file full of zeros.

`Torch-Pruning <https://github.com/VainF/Torch-Pruning>`_ traces the model once and
removes channels together with everything that depends on them (the BatchNorm after a
conv, the next conv's inputs, both sides of a residual sum, a concatenation's slices), so
every family prunes without family-specific code. Each layer group loses the same share
of its channels, ranked by the L1 norm of their weights; the classifier's output (one per
class) and the input (one per lead) are never touched. Because the share is per group,
the pruned layer shapes depend only on the architecture and ``amount``, not on the weights:
a fresh model pruned by the same amount has the trained one's shapes, which is how the
size of a pruned trial is known before it trains (:func:`pruned_copy`).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from atml.models.shapes import shape_plan

__all__ = ["schedule", "prune_channels", "pruned_copy", "compressed_shape", "classifier_layers"]


def classifier_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose outputs are the classes: every ``Linear`` of the model's ``head`` (the
    last ``Linear`` when there is no head)."""
    head = getattr(model, "head", None)
    found = [m for m in (head.modules() if isinstance(head, nn.Module) else ()) if isinstance(m, nn.Linear)]
    return found or [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]


def schedule(amount: float, steps: int = 1) -> list[float]:
    """The share of the *remaining* channels each of ``steps`` rounds removes so that ``amount``
    of the original ones are gone after the last (one round: ``[amount]``)."""
    if not 0 <= amount < 1:
        raise ValueError(f"prune amount must be in [0, 1), got {amount}")
    kept = [1 - amount * i / steps for i in range(steps + 1)]
    return [1 - kept[i + 1] / kept[i] for i in range(steps)]


def prune_channels(model: nn.Module, ratio: float, n_leads: int, n_samples: int) -> dict[str, dict[str, int]]:
    """Remove ``ratio`` of the channels of every prunable layer group of ``model`` in place;
    returns the layer shapes that changed, as :func:`atml.models.shapes.shape_plan` records
    them (relative to the model before this call). The model stays on its device and in
    its mode; the kept channels keep their weights."""
    if not 0 <= ratio < 1:
        raise ValueError(f"prune amount must be in [0, 1), got {ratio}")
    if ratio == 0:
        return {}
    import torch_pruning as tp

    before = shape_plan(model)
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = torch.zeros(2, n_leads, n_samples, device=dev)
    training = model.training
    model.eval()  # tracing must not move BatchNorm statistics
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tp.pruner.MagnitudePruner(
            model, example, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
            ignored_layers=classifier_layers(model), global_pruning=False,
        ).step()
    model.train(training)
    return shape_plan(model, before)


def pruned_copy(model: nn.Module, amount: float, n_leads: int, n_samples: int, steps: int = 1) -> nn.Module:
    """A copy of ``model`` pruned by the schedule of ``amount`` in ``steps`` rounds (the original
    is untouched): the architecture a trial with ``train.prune`` ends with, to size before training."""
    out = copy.deepcopy(model)
    for ratio in schedule(amount, steps):
        prune_channels(out, ratio, n_leads, n_samples)
    return out


def compressed_shape(model: nn.Module, train: Any, data: Any) -> nn.Module:
    """``model`` as a trial with the training settings ``train`` (a TrainConfig) ends: pruned
    by ``train.prune`` (a copy), else ``model`` itself. ``data`` gives ``n_leads``/``n_samples``."""
    prune = getattr(train, "prune", None) or {}
    amount = float(prune.get("amount", 0))
    if amount <= 0:
        return model
    return pruned_copy(model, amount, int(data.n_leads), int(data.n_samples), int(prune.get("steps", 1)))

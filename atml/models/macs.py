"""Multiply-accumulates of one forward pass: the compute cost of a model, known before training.

Counted on convolutions and linear layers, which hold nearly all of a 1-D ECG network's
arithmetic: a ``Conv1d`` costs ``output elements x in_channels / groups x kernel``, a
``Linear`` ``output elements x in_features``. Normalisation, activations, pooling and
element-wise products are left out (they fold into the convolutions on export or cost one
operation per element), so the figure compares architectures rather than timing them.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["count_macs"]


def count_macs(model: nn.Module, n_leads: int, n_samples: int) -> int:
    """Multiply-accumulates of ``model`` on one segment ``[1, n_leads, n_samples]``.

    Runs one forward pass in eval mode without gradients (the model's mode is restored).
    """
    total = 0

    def conv(m: nn.Conv1d, _inp: object, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * int(m.kernel_size[0])

    def linear(m: nn.Linear, _inp: object, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv) for m in model.modules() if isinstance(m, nn.Conv1d)]
    hooks += [m.register_forward_hook(linear) for m in model.modules() if isinstance(m, nn.Linear)]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, n_leads, n_samples, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return int(total)

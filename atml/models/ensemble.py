"""Several trained members of one family exported as one model: the mean of their logits."""

from __future__ import annotations

import torch
from torch import nn


class MeanLogits(nn.Module):
    """``(batch, leads, samples) -> (batch, n_classes)``: the members' logits averaged.

    Averaging logits (not probabilities) keeps the output contract of a single model: raw
    logits, softmax (or sigmoid) gives probabilities. It is the geometric mean of the members'
    odds, which is less swayed by one over-confident member than the mean of probabilities.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(dim=0)

"""ResNet1D: strided stem followed by basic residual blocks (He et al. 2016)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from atml.models.blocks import ClassifierHead, ConvBNAct, StemBlocksHead, scaled_channels, strided_stem
from atml.models.hparams import COMMON_RULES, GROWTH, Hparams, Int, Rule

FAMILY = "resnet1d"

# Informational ranges for the search-space YAML.  The top corner (width 24,
# depth 4, growth 1.5, kernel 9) is ~400k params; width 32 or depth 5 there
# would pass 700k, more than the ECG data sets here can use.
SPACE_HINT: dict[str, Any] = {
    "width": (8, 24),
    "depth": (2, 4),
    "kernel_size": [3, 5, 7, 9],
    "dropout": (0.0, 0.5),
    "growth": (1.0, 1.5),
    "stride": [1, 2],
    "stem_stride": [2, 4, 8],
}


class BasicBlock1D(nn.Module):
    """Two conv-BN layers with an identity or 1x1-projection shortcut."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_channels, out_channels, kernel_size, stride=stride)
        # No activation before the addition: the ReLU comes after the sum.
        self.conv2 = ConvBNAct(out_channels, out_channels, kernel_size, act=False)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            # A strided 1x1 conv yields floor((T-1)/s)+1 samples, the same as
            # the odd-kernel strided conv1, so the shapes always match.
            self.shortcut = ConvBNAct(in_channels, out_channels, 1, stride=stride, act=False)
        else:
            self.shortcut = nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


@dataclass(frozen=True, kw_only=True)
class ResNet1DHparams(Hparams):
    """Hyperparameters of :class:`ResNet1D`.

    Attributes
    ----------
    in_channels, n_classes:
        Number of ECG leads and of output classes.
    width:
        Stem channels; block ``i`` has ``round(width * growth**(i + 1))``.
    depth:
        Number of residual basic blocks (each downsamples by ``stride``).
    kernel_size:
        Odd kernel size of the stem and of both convs of every block.
    dropout:
        Dropout before the linear head, in ``[0, 1)``.
    growth:
        Channel multiplier per block, >= 1.
    stride:
        Temporal downsampling of each block.
    stem_stride:
        Downsampling of the stem conv.
    """

    FAMILY: ClassVar[str] = FAMILY
    RULES: ClassVar[Mapping[str, Rule]] = {**COMMON_RULES, "growth": GROWTH, "stride": Int(low=1)}

    width: int = 16
    depth: int = 4
    kernel_size: int = 7
    dropout: float = 0.1
    growth: float = 1.5
    stride: int = 2
    stem_stride: int = 4


class ResNet1D(StemBlocksHead):
    """1D ResNet: stem conv, ``depth`` basic blocks, GAP, linear head (:class:`ResNet1DHparams`)."""

    def __init__(self, hp: ResNet1DHparams) -> None:
        super().__init__()
        self.hparams: dict[str, Any] = hp.as_dict()
        self.stem = strided_stem(hp.in_channels, hp.width, hp.kernel_size, hp.stem_stride)
        blocks: list[nn.Module] = []
        channels = hp.width
        for i in range(hp.depth):
            out = scaled_channels(hp.width, hp.growth, i + 1)
            blocks.append(BasicBlock1D(channels, out, hp.kernel_size, hp.stride))
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.head = ClassifierHead(channels, hp.n_classes, hp.dropout)

"""ResNet1D: strided stem followed by basic residual blocks (He et al. 2016).

Two presets: ``custom`` (the searched layout: ``width``, ``depth``, ``growth``, strides)
and ``resnet18``, the standard 18-layer layout in 1D (stem conv + max-pool, four stages of
two basic blocks at 64/128/256/512 channels, each scaled by ``width_multiplier``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from atml.models.blocks import ClassifierHead, ConvBNAct, StemBlocksHead, scaled_channels, strided_stem
from atml.models.hparams import COMMON_RULES, GROWTH, Choice, Float, Hparams, Int, Rule

FAMILY = "resnet1d"

PRESETS = ("custom", "resnet18")

# The hyperparameters a preset does not read. The config rejects a space that sets one
# for a preset it fixes; a trial of a searched preset carries them and they are ignored.
UNUSED_BY_PRESET: dict[str, tuple[str, ...]] = {
    "custom": ("width_multiplier",),
    "resnet18": ("width", "depth", "growth", "stride", "stem_stride"),
}

# ResNet-18 (He et al. 2016, table 1): channels of the four stages, basic blocks per
# stage, the kernel of every block conv, and the strides of the stem conv and its max-pool.
RESNET18_WIDTHS = (64, 128, 256, 512)
RESNET18_BLOCKS = 2
RESNET18_KERNEL = 3
RESNET18_STEM_STRIDE = 2

# Informational ranges for the search-space YAML.  The top custom corner (width 24,
# depth 4, growth 1.5, kernel 9) is ~400k params; width 32 or depth 5 there would pass
# 700k, more than the ECG data sets here can use. resnet18 at multiplier 1.0 is ~3.9M.
SPACE_HINT: dict[str, Any] = {
    "width": (8, 24),
    "depth": (2, 4),
    "kernel_size": [3, 5, 7, 9],
    "dropout": (0.0, 0.5),
    "growth": (1.0, 1.5),
    "stride": [1, 2],
    "stem_stride": [2, 4, 8],
    "preset": list(PRESETS),
    "width_multiplier": (0.125, 1.0),
}


def resnet18_widths(width_multiplier: float) -> tuple[int, ...]:
    """Channels of the four ResNet-18 stages at ``width_multiplier`` (at least 1 each)."""
    return tuple(max(1, round(w * width_multiplier)) for w in RESNET18_WIDTHS)


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
    preset:
        ``custom`` (the layout below) or ``resnet18`` (the standard 18-layer layout; it
        ignores ``width``, ``depth``, ``growth``, ``stride`` and ``stem_stride``).
    width_multiplier:
        ``resnet18`` only: scales the stage widths 64/128/256/512, in ``[1/16, 2]``.
    width:
        Stem channels; block ``i`` has ``round(width * growth**(i + 1))``.
    depth:
        Number of residual basic blocks (each downsamples by ``stride``).
    kernel_size:
        Odd kernel size of the stem and of both convs of every block (``resnet18``: of
        the stem only; its blocks keep the standard 3).
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
    RULES: ClassVar[Mapping[str, Rule]] = {
        **COMMON_RULES, "growth": GROWTH, "stride": Int(low=1),
        "preset": Choice(PRESETS), "width_multiplier": Float(low=0.0625, high=2.0, high_inclusive=True),
    }

    width: int = 16
    depth: int = 4
    kernel_size: int = 7
    dropout: float = 0.1
    growth: float = 1.5
    stride: int = 2
    stem_stride: int = 4
    preset: str = "custom"
    width_multiplier: float = 1.0


class ResNet1D(StemBlocksHead):
    """1D ResNet: stem conv, ``depth`` basic blocks, GAP, linear head (:class:`ResNet1DHparams`);
    with preset ``resnet18``, :func:`resnet18_parts` instead."""

    def __init__(self, hp: ResNet1DHparams) -> None:
        super().__init__()
        self.hparams: dict[str, Any] = hp.as_dict()
        if hp.preset == "resnet18":
            self.stem, self.blocks, channels = resnet18_parts(hp.in_channels, hp.kernel_size, hp.width_multiplier)
            self.head = ClassifierHead(channels, hp.n_classes, hp.dropout)
            return
        self.stem = strided_stem(hp.in_channels, hp.width, hp.kernel_size, hp.stem_stride)
        blocks: list[nn.Module] = []
        channels = hp.width
        for i in range(hp.depth):
            out = scaled_channels(hp.width, hp.growth, i + 1)
            blocks.append(BasicBlock1D(channels, out, hp.kernel_size, hp.stride))
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.head = ClassifierHead(channels, hp.n_classes, hp.dropout)


def resnet18_parts(in_channels: int, kernel_size: int, width_multiplier: float) -> tuple[nn.Module, nn.Module, int]:
    """Stem, blocks and output channels of ResNet-18 in 1D.

    Stem: conv (``kernel_size``, stride 2) and max-pool (3, stride 2). Blocks: four stages
    (a ``Sequential`` each) of two basic blocks with kernel 3; stages 2-4 start with a
    stride-2 block whose shortcut is a 1x1 projection.
    """
    widths = resnet18_widths(width_multiplier)
    stem = nn.Sequential(
        ConvBNAct(in_channels, widths[0], kernel_size, stride=RESNET18_STEM_STRIDE),
        nn.MaxPool1d(3, stride=2, padding=1),
    )
    stages: list[nn.Module] = []
    channels = widths[0]
    for i, out in enumerate(widths):
        blocks = [BasicBlock1D(channels, out, RESNET18_KERNEL, 1 if i == 0 else 2)]
        blocks += [BasicBlock1D(out, out, RESNET18_KERNEL, 1) for _ in range(RESNET18_BLOCKS - 1)]
        stages.append(nn.Sequential(*blocks))
        channels = out
    return stem, nn.Sequential(*stages), channels

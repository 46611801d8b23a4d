"""ResNet1D: strided stem followed by basic residual blocks (He et al. 2016)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from atml.models._blocks import (
    ClassifierHead,
    ConvBNAct,
    check_common,
    check_float,
    check_int,
    scaled_channels,
    stem_kernel,
)

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


class ResNet1D(nn.Module):
    """1D ResNet: stem conv, ``depth`` basic blocks, GAP, linear head.

    Parameters
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

    def __init__(
        self,
        *,
        in_channels: int,
        n_classes: int,
        width: int = 16,
        depth: int = 4,
        kernel_size: int = 7,
        dropout: float = 0.1,
        growth: float = 1.5,
        stride: int = 2,
        stem_stride: int = 4,
    ) -> None:
        super().__init__()
        in_channels, n_classes, width, depth, kernel_size, dropout, stem_stride = check_common(
            FAMILY,
            in_channels=in_channels,
            n_classes=n_classes,
            width=width,
            depth=depth,
            kernel_size=kernel_size,
            dropout=dropout,
            stem_stride=stem_stride,
        )
        growth = check_float(FAMILY, "growth", growth, low=1.0, high=4.0, high_inclusive=True)
        stride = check_int(FAMILY, "stride", stride, low=1)
        self.hparams: dict[str, Any] = {
            "in_channels": in_channels,
            "n_classes": n_classes,
            "width": width,
            "depth": depth,
            "kernel_size": kernel_size,
            "dropout": dropout,
            "growth": growth,
            "stride": stride,
            "stem_stride": stem_stride,
        }

        self.stem = ConvBNAct(in_channels, width, stem_kernel(kernel_size, stem_stride), stride=stem_stride)
        blocks: list[nn.Module] = []
        channels = width
        for i in range(depth):
            out = scaled_channels(width, growth, i + 1)
            blocks.append(BasicBlock1D(channels, out, kernel_size, stride))
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.head = ClassifierHead(channels, n_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, T)`` signals to ``(B, n_classes)`` logits."""
        return self.head(self.blocks(self.stem(x)))

"""SepNet: depthwise-separable inverted residuals (MobileNetV2 / ShuffleNet style).

Each stage is a strided inverted-residual block followed by a stride-1 one
with an identity shortcut.  ``groups > 1`` makes the 1x1 convs grouped and
adds a channel shuffle after the expansion, as in ShuffleNet, which cuts the
dominant pointwise cost by ``groups``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from atml.models.blocks import ClassifierHead, ConvBNAct, StemBlocksHead, scaled_channels, strided_stem
from atml.models.hparams import COMMON_RULES, GROWTH, Hparams, Int, Rule

FAMILY = "sepnet"

# Informational ranges for the search-space YAML.
SPACE_HINT: dict[str, Any] = {
    "width": (8, 24),
    "depth": (2, 4),
    "kernel_size": [3, 5, 7, 9, 11, 15],
    "dropout": (0.0, 0.5),
    "expansion": (1, 4),
    "groups": [1, 2, 4],
    "growth": (1.0, 1.5),
    "stem_stride": [4, 8],
}


class ChannelShuffle(nn.Module):
    """Interleave channels across ``groups`` (ShuffleNet).

    unflatten/transpose/flatten only touch the channel axis, so the exported
    ONNX graph keeps a dynamic batch and time axis.
    """

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        x = x.unflatten(1, (self.groups, c // self.groups))
        return x.transpose(1, 2).flatten(1, 2)


class InvertedResidual(nn.Module):
    """1x1 expand -> depthwise kxk (stride) -> 1x1 linear projection (+ skip)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        stride: int,
        expansion: int,
        groups: int,
    ) -> None:
        super().__init__()
        mid = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBNAct(in_channels, mid, 1, groups=groups))
        if groups > 1:
            # Without a shuffle between the grouped 1x1 convs, information
            # would never cross groups (also when the expansion conv is absent).
            layers.append(ChannelShuffle(groups))
        layers.append(ConvBNAct(mid, mid, kernel_size, stride=stride, groups=mid))
        # Linear bottleneck: no ReLU after the projection (MobileNetV2).
        layers.append(ConvBNAct(mid, out_channels, 1, groups=groups, act=False))
        self.body = nn.Sequential(*layers)
        self.use_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.use_skip else y


@dataclass(frozen=True, kw_only=True)
class SepNetHparams(Hparams):
    """Hyperparameters of :class:`SepNet`.

    Attributes
    ----------
    in_channels, n_classes:
        Number of ECG leads and of output classes.
    width:
        Stem channels (rounded up to a multiple of ``groups``); stage ``i``
        has ``round(width * growth**(i + 1))`` channels, also rounded up to a
        multiple of ``groups``.
    depth:
        Number of stages; each halves the time axis.
    kernel_size:
        Odd kernel of the stem and of the depthwise convs (cheap, so large
        kernels are affordable here).
    dropout:
        Dropout before the linear head, in ``[0, 1)``.
    expansion:
        Inverted-residual expansion ratio; 1 drops the expansion conv.
    groups:
        Groups of the 1x1 convs; > 1 adds a channel shuffle.
    growth:
        Channel multiplier per stage, >= 1.
    stem_stride:
        Downsampling of the stem conv.
    """

    FAMILY: ClassVar[str] = FAMILY
    RULES: ClassVar[Mapping[str, Rule]] = {
        **COMMON_RULES, "expansion": Int(low=1), "groups": Int(low=1), "growth": GROWTH,
    }

    width: int = 12
    depth: int = 4
    kernel_size: int = 9
    dropout: float = 0.1
    expansion: int = 2
    groups: int = 1
    growth: float = 1.5
    stem_stride: int = 8


class SepNet(StemBlocksHead):
    """Depthwise-separable CNN: stem, ``depth`` stages of two inverted residuals (:class:`SepNetHparams`)."""

    def __init__(self, hp: SepNetHparams) -> None:
        super().__init__()
        self.hparams: dict[str, Any] = hp.as_dict()
        channels = scaled_channels(hp.width, 1.0, 0, divisor=hp.groups)
        self.stem = strided_stem(hp.in_channels, channels, hp.kernel_size, hp.stem_stride)
        blocks: list[nn.Module] = []
        common = {"kernel_size": hp.kernel_size, "expansion": hp.expansion, "groups": hp.groups}
        for i in range(hp.depth):
            out = scaled_channels(hp.width, hp.growth, i + 1, divisor=hp.groups)
            blocks.append(InvertedResidual(channels, out, stride=2, **common))
            blocks.append(InvertedResidual(out, out, stride=1, **common))
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.head = ClassifierHead(channels, hp.n_classes, hp.dropout)

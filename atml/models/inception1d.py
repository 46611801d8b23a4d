"""Inception1D: InceptionTime-style modules (Ismail Fawaz et al. 2020).

Each module runs a 1x1 bottleneck, then three parallel convs with kernels
``kernel_size``, ``kernel_size // 2`` and ``kernel_size // 4`` (made odd),
plus a max-pool -> 1x1 branch; the four outputs are concatenated.  Modules
come in residual groups of three.  Unlike the original InceptionTime, the
first module of every group downsamples by ``stride`` (and a strided stem
precedes everything) so 5000-sample 12-lead inputs stay cheap on CPU, and
the max-pool branch pools the bottleneck output rather than the module input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from atml.models.blocks import ClassifierHead, ConvBNAct, StemBlocksHead, make_odd, strided_stem
from atml.models.hparams import COMMON_RULES, Hparams, Int, Rule

FAMILY = "inception1d"

# Modules per residual group, as in InceptionTime.
GROUP_SIZE = 3

# Informational ranges for the search-space YAML.
SPACE_HINT: dict[str, Any] = {
    "width": (4, 32),
    "depth": (2, 6),
    "kernel_size": [9, 11, 15, 21, 31, 41],
    "dropout": (0.0, 0.5),
    "bottleneck": (4, 32),
    "stride": [1, 2],
    "stem_stride": [4, 8],
}


def branch_kernels(kernel_size: int) -> tuple[int, int, int]:
    """The three parallel kernel sizes of a module, all odd."""
    return (make_odd(kernel_size), make_odd(kernel_size // 2), make_odd(kernel_size // 4))


class InceptionModule(nn.Module):
    """Bottleneck -> 3 parallel convs, plus max-pool -> 1x1; concat -> BN -> ReLU."""

    def __init__(self, in_channels: int, width: int, bottleneck: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        # The bottleneck carries the stride so every branch runs at the
        # reduced length.
        self.bottleneck = nn.Conv1d(in_channels, bottleneck, 1, stride=stride, bias=False)
        self.branches = nn.ModuleList(
            nn.Conv1d(bottleneck, width, k, padding=k // 2, bias=False) for k in branch_kernels(kernel_size)
        )
        # Unlike InceptionTime, the max-pool branch pools the bottleneck
        # output, not the 4*width-channel input: CPU max-pool with indices is
        # slow, and it was the third-largest cost of a training step.
        self.pool = nn.MaxPool1d(3, stride=1, padding=1)
        self.pool_conv = nn.Conv1d(bottleneck, width, 1, bias=False)
        self.bn = nn.BatchNorm1d(4 * width)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.bottleneck(x)
        outs = [branch(z) for branch in self.branches]
        outs.append(self.pool_conv(self.pool(z)))
        return self.act(self.bn(torch.cat(outs, dim=1)))


class InceptionGroup(nn.Module):
    """Up to three modules wrapped by one residual (1x1 projection) shortcut."""

    def __init__(
        self,
        in_channels: int,
        n_modules: int,
        *,
        width: int,
        bottleneck: int,
        kernel_size: int,
        stride: int,
    ) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        channels = in_channels
        for j in range(n_modules):
            mods.append(InceptionModule(channels, width, bottleneck, kernel_size, stride if j == 0 else 1))
            channels = 4 * width
        self.body = nn.Sequential(*mods)
        self.shortcut = ConvBNAct(in_channels, channels, 1, stride=stride, act=False)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


@dataclass(frozen=True, kw_only=True)
class Inception1DHparams(Hparams):
    """Hyperparameters of :class:`Inception1D`.

    Attributes
    ----------
    in_channels, n_classes:
        Number of ECG leads and of output classes.
    width:
        Filters per branch; every module outputs ``4 * width`` channels.
    depth:
        Number of inception modules; a residual shortcut spans each group of
        three (a trailing partial group gets its own shortcut).
    kernel_size:
        Odd size of the longest parallel kernel (the others are //2, //4).
    dropout:
        Dropout before the linear head, in ``[0, 1)``.
    bottleneck:
        Channels of the 1x1 bottleneck in front of the parallel convs.
    stride:
        Downsampling at the first module of each residual group.
    stem_stride:
        Downsampling of the stem conv.
    """

    FAMILY: ClassVar[str] = FAMILY
    RULES: ClassVar[Mapping[str, Rule]] = {**COMMON_RULES, "bottleneck": Int(low=1), "stride": Int(low=1)}

    width: int = 12
    depth: int = 6
    kernel_size: int = 15
    dropout: float = 0.1
    bottleneck: int = 12
    stride: int = 2
    stem_stride: int = 8


class Inception1D(StemBlocksHead):
    """InceptionTime-style network: stem, ``depth`` inception modules, GAP, linear (:class:`Inception1DHparams`)."""

    def __init__(self, hp: Inception1DHparams) -> None:
        super().__init__()
        self.hparams: dict[str, Any] = hp.as_dict()
        self.stem = strided_stem(hp.in_channels, hp.width, hp.kernel_size, hp.stem_stride)
        groups: list[nn.Module] = []
        channels = hp.width
        remaining = hp.depth
        while remaining > 0:
            n = min(GROUP_SIZE, remaining)
            groups.append(InceptionGroup(channels, n, width=hp.width, bottleneck=hp.bottleneck,
                                         kernel_size=hp.kernel_size, stride=hp.stride))
            channels = 4 * hp.width
            remaining -= n
        self.blocks = nn.Sequential(*groups)
        self.head = ClassifierHead(channels, hp.n_classes, hp.dropout)

"""AFNet: the tiny strided CNN with squeeze-and-excitation (ATML baseline).

This is the original ATML baseline family for IESD-2024 AFIB detection: a
handful of strided conv-BN-ReLU blocks, each followed by SE attention, then
global average pooling and a linear head.  Defaults give ~10k parameters
(~47 KB float32 ONNX), inside the 64 KB budget of the "small model" search.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from atml.models.blocks import (
    ClassifierHead,
    ConvBNAct,
    RhythmFeatures,
    SqueezeExcite,
    scaled_channels,
    strided_stem,
)
from atml.models.hparams import COMMON_RULES, GROWTH, Hparams, Int, Rule

FAMILY = "afnet"

# Ranges a search-space YAML can start from (informational only).
# growth is capped at 1.5 so width 16 / depth 5 stays under ~170k params: this
# family is meant to be the tiny one.
SPACE_HINT: dict[str, Any] = {
    "width": (4, 16),
    "depth": (2, 5),
    "kernel_size": [3, 5, 7, 9],
    "dropout": (0.0, 0.5),
    "growth": (1.0, 1.5),
    "se_reduction": [0, 2, 4, 8],
    "stride": [1, 2, 3],
    "stem_stride": [2, 4, 8],
    "rhythm": [0, 2, 4],
}

# The rhythm branch reads the features after this many blocks (stride 16 with the
# defaults: 15.6 steps/s at 250 Hz) at lags up to RHYTHM_LAGS steps (1.5 s there, 3 s at
# 125 Hz): the RR intervals of every heart rate from 40 bpm up.
RHYTHM_TAP = 2
RHYTHM_LAGS = 24
RHYTHM_HIDDEN = 8


@dataclass(frozen=True, kw_only=True)
class AFNetHparams(Hparams):
    """Hyperparameters of :class:`AFNet`.

    Attributes
    ----------
    in_channels, n_classes:
        Number of ECG leads and of output classes.
    width:
        Channels produced by the stem; block ``i`` has
        ``round(width * growth**(i + 1))`` channels.
    depth:
        Number of conv blocks after the stem.
    kernel_size:
        Odd kernel size of the stem and every block.
    dropout:
        Dropout before the linear head, in ``[0, 1)``.
    growth:
        Channel multiplier per block, >= 1.
    se_reduction:
        SE bottleneck ratio; 0 disables SE (saves parameters in tiny configs).
    stride:
        Temporal downsampling of each block.
    stem_stride:
        Downsampling of the stem; long inputs get shortened early so compute
        stays small.
    rhythm:
        Beat maps of the rhythm branch (:class:`RhythmFeatures`, read after the
        second block); 0 leaves it out and gives the plain ATML network.
    """

    FAMILY: ClassVar[str] = FAMILY
    RULES: ClassVar[Mapping[str, Rule]] = {
        **COMMON_RULES, "growth": GROWTH, "se_reduction": Int(low=0), "stride": Int(low=1), "rhythm": Int(low=0),
    }

    width: int = 8
    depth: int = 4
    kernel_size: int = 7
    dropout: float = 0.1
    growth: float = 1.4
    se_reduction: int = 4
    stride: int = 2
    stem_stride: int = 4
    rhythm: int = 0


class AFNet(nn.Module):
    """Tiny 1D CNN: strided stem, ``depth`` conv-BN-ReLU(-SE) blocks, GAP, linear.

    Input ``(batch, in_channels, samples)`` float32, output raw logits
    ``(batch, n_classes)``; the hyperparameters are :class:`AFNetHparams`.
    """

    def __init__(self, hp: AFNetHparams) -> None:
        super().__init__()
        self.hparams: dict[str, Any] = hp.as_dict()
        self.stem = strided_stem(hp.in_channels, hp.width, hp.kernel_size, hp.stem_stride)
        blocks: list[nn.Module] = []
        channels = hp.width
        self._tap = -1  # index in self.blocks after which the rhythm branch reads
        for i in range(hp.depth):
            out = scaled_channels(hp.width, hp.growth, i + 1)
            blocks.append(ConvBNAct(channels, out, hp.kernel_size, stride=hp.stride))
            if hp.se_reduction > 0:
                blocks.append(SqueezeExcite(out, hp.se_reduction))
            channels = out
            if i < RHYTHM_TAP:
                self._tap, tap_channels = len(blocks) - 1, out
        self.blocks = nn.Sequential(*blocks)
        self.rhythm = RhythmFeatures(tap_channels, hp.rhythm, RHYTHM_LAGS, RHYTHM_HIDDEN) if hp.rhythm else None
        extra = self.rhythm.out_features if self.rhythm is not None else 0
        self.head = ClassifierHead(channels + extra, hp.n_classes, hp.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, T)`` signals to ``(B, n_classes)`` logits."""
        h = self.stem(x)
        if self.rhythm is None:
            return self.head(self.blocks(h))
        tapped = h
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == self._tap:
                tapped = h
        return self.head(h, self.rhythm(tapped))

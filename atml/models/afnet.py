"""AFNet: the tiny strided CNN with squeeze-and-excitation (ATML baseline).

This is the original ATML baseline family for IESD-2024 AFIB detection: a
handful of strided conv-BN-ReLU blocks, each followed by SE attention, then
global average pooling and a linear head.  Defaults give ~10k parameters
(~47 KB float32 ONNX), inside the 64 KB budget of the "small model" search.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from atml.models._blocks import (
    ClassifierHead,
    ConvBNAct,
    RhythmFeatures,
    SqueezeExcite,
    check_common,
    check_float,
    check_int,
    scaled_channels,
    stem_kernel,
)

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


class AFNet(nn.Module):
    """Tiny 1D CNN: strided stem, ``depth`` conv-BN-ReLU(-SE) blocks, GAP, linear.

    Input ``(batch, in_channels, samples)`` float32, output raw logits
    ``(batch, n_classes)``.

    Parameters
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

    def __init__(
        self,
        *,
        in_channels: int,
        n_classes: int,
        width: int = 8,
        depth: int = 4,
        kernel_size: int = 7,
        dropout: float = 0.1,
        growth: float = 1.4,
        se_reduction: int = 4,
        stride: int = 2,
        stem_stride: int = 4,
        rhythm: int = 0,
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
        se_reduction = check_int(FAMILY, "se_reduction", se_reduction, low=0)
        stride = check_int(FAMILY, "stride", stride, low=1)
        rhythm = check_int(FAMILY, "rhythm", rhythm, low=0)
        self.hparams: dict[str, Any] = {
            "in_channels": in_channels,
            "n_classes": n_classes,
            "width": width,
            "depth": depth,
            "kernel_size": kernel_size,
            "dropout": dropout,
            "growth": growth,
            "se_reduction": se_reduction,
            "stride": stride,
            "stem_stride": stem_stride,
            "rhythm": rhythm,
        }

        self.stem = ConvBNAct(in_channels, width, stem_kernel(kernel_size, stem_stride), stride=stem_stride)
        blocks: list[nn.Module] = []
        channels = width
        self._tap = -1  # index in self.blocks after which the rhythm branch reads
        for i in range(depth):
            out = scaled_channels(width, growth, i + 1)
            blocks.append(ConvBNAct(channels, out, kernel_size, stride=stride))
            if se_reduction > 0:
                blocks.append(SqueezeExcite(out, se_reduction))
            channels = out
            if i < RHYTHM_TAP:
                self._tap, tap_channels = len(blocks) - 1, out
        self.blocks = nn.Sequential(*blocks)
        self.rhythm = RhythmFeatures(tap_channels, rhythm, RHYTHM_LAGS, RHYTHM_HIDDEN) if rhythm else None
        extra = self.rhythm.out_features if self.rhythm is not None else 0
        self.head = ClassifierHead(channels + extra, n_classes, dropout)

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

"""Layers shared by every model family (hyperparameter checks: :mod:`atml.models.hparams`).

Everything here is chosen to trace cleanly through ``torch.onnx.export``
(opset 17) and to run under onnxruntime: plain Conv1d/BatchNorm1d/ReLU,
global pooling as ``mean`` over the time axis, no in-place ops.
"""

from __future__ import annotations

import torch
from torch import nn


def scaled_channels(width: int, growth: float, stage: int, divisor: int = 1) -> int:
    """Channels of ``stage``: ``round(width * growth**stage)``, then rounded up
    to a multiple of ``divisor``.

    Rounding up to a multiple of ``divisor`` is what lets grouped 1x1 convs
    (ShuffleNet style) accept any ``width``/``groups`` combination instead of
    rejecting most random search points.
    """
    channels = max(1, round(width * growth**stage))
    return -(-channels // divisor) * divisor


def stem_kernel(kernel_size: int, stem_stride: int) -> int:
    """Kernel of a strided stem: at least ``stem_stride`` so no input sample
    is skipped (a kernel 3 / stride 4 stem would ignore every 4th sample)."""
    return max(kernel_size, make_odd(stem_stride))


def make_odd(k: int) -> int:
    """Smallest odd integer >= ``k`` (and >= 1)."""
    k = max(1, int(k))
    return k if k % 2 == 1 else k + 1


class ConvBNAct(nn.Sequential):
    """Conv1d (no bias, BN follows) -> BatchNorm1d -> optional ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv1d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm1d(out_channels),
        ]
        if act:
            layers.append(nn.ReLU())
        super().__init__(*layers)


def strided_stem(in_channels: int, out_channels: int, kernel_size: int, stem_stride: int) -> ConvBNAct:
    """The first layer of a family: a conv-BN-ReLU that downsamples by ``stem_stride``
    with a kernel wide enough to see every sample (:func:`stem_kernel`)."""
    return ConvBNAct(in_channels, out_channels, stem_kernel(kernel_size, stem_stride), stride=stem_stride)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation over channels (Hu et al. 2018), 1D version.

    Implemented with 1x1 convs on the pooled ``(B, C, 1)`` tensor so no
    reshapes are needed, which keeps the ONNX graph free of dynamic shapes.
    """

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv1d(channels, hidden, 1)
        self.fc2 = nn.Conv1d(hidden, channels, 1)
        self.act = nn.ReLU()
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=-1, keepdim=True)
        s = self.gate(self.fc2(self.act(self.fc1(s))))
        return x * s


class ClassifierHead(nn.Module):
    """Global average pooling over time -> dropout -> linear logits.

    ``mean`` over the last axis (not AdaptiveAvgPool with size > 1) is what
    makes every model length-agnostic and ONNX/onnxruntime friendly.
    """

    def __init__(self, in_channels: int, n_classes: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, n_classes)

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of ``(B, C, T)`` features; ``extra`` ``(B, E)`` features join the pooled ones."""
        z = x.mean(dim=-1)
        if extra is not None:
            z = torch.cat([z, extra], dim=1)
        return self.fc(self.dropout(z))


class RhythmFeatures(nn.Module):
    """How regular the beat-to-beat rhythm is: autocorrelation of learned beat maps.

    Global average pooling keeps *what* the waveform looks like and throws away *when*
    things happen, yet the strongest sign of atrial fibrillation is an irregularly
    irregular RR interval. A 1x1 convolution turns the feature maps into ``maps`` beat
    maps; each is standardised over time and its autocorrelation at lags ``1..lags``
    (in feature steps) is taken. A regular rhythm has a tall peak at its RR interval, an
    irregular one decays into noise. A small ReLU layer reads the ``maps x lags`` curve.
    Parameter-free apart from the two small projections, length-agnostic (lags a short
    input cannot reach read as 0), and plain Conv/Mul/ReduceMean in ONNX.
    """

    def __init__(self, in_channels: int, maps: int, lags: int, hidden: int) -> None:
        super().__init__()
        self.maps, self.lags = maps, lags
        self.proj = nn.Conv1d(in_channels, maps, 1)
        # A fixed convolution whose output channel l is the input shifted left by l + 1
        # steps: all lags in one Conv node (a Slice per lag costs ~2 KB of ONNX each).
        shift = torch.zeros(lags, 1, lags + 1)
        shift[torch.arange(lags), 0, torch.arange(1, lags + 1)] = 1.0
        self.register_buffer("shift", shift, persistent=False)
        self.read = nn.Sequential(nn.Linear(maps * lags, hidden), nn.ReLU())
        self.out_features = hidden

    def autocorrelation(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T)`` features -> ``(B, maps, lags)`` autocorrelation of the beat maps
        (1 at lag k: the map repeats exactly every k steps; lags past the input read 0)."""
        b = self.proj(x)
        b = b - b.mean(dim=-1, keepdim=True)
        b = b / torch.sqrt(b.pow(2).mean(dim=-1, keepdim=True) + 1e-5)
        flat = b.reshape(-1, 1, b.shape[-1])  # (B * maps, 1, T)
        shifted = nn.functional.conv1d(nn.functional.pad(flat, (0, self.lags)), self.shift)  # (B * maps, lags, T)
        return (shifted * flat).mean(dim=-1).reshape(-1, self.maps, self.lags)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.read(self.autocorrelation(x).flatten(1))


class StemBlocksHead(nn.Module):
    """The plain shape of a family: ``stem`` -> ``blocks`` -> ``head`` (set by the subclass)."""

    stem: nn.Module
    blocks: nn.Module
    head: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, T)`` signals to ``(B, n_classes)`` logits."""
        return self.head(self.blocks(self.stem(x)))

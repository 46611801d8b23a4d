"""Fake int8 quantisation for quantisation-aware training (``train.qat``), matching what
the deployed int8 model does (:data:`atml.onnx.convert.INT8_SCHEME`: onnxruntime static
quantisation, QDQ format, int8 weights per output channel, uint8 activations per tensor,
MinMax calibration).

- **Weights**: each ``Conv1d``/``Linear`` weight is rounded, in the forward pass, to the
  symmetric per-channel int8 grid onnxruntime uses (scale ``max|w| / 127``, levels -127..127),
  with the straight-through gradient of :func:`torch.fake_quantize_per_channel_affine`.
  The grid is unchanged by folding BatchNorm into the conv at export (a per-channel
  scale), so the exported weights are quantised onto the grid they were trained on.
- **Activations**: the input and the outputs of every ``BatchNorm1d``, ``ReLU`` and
  ``Linear`` (where the folded graph's quantised tensors are) pass through per-tensor uint8
  fake quantisation over a running min/max (updated in training, fixed in eval).

Hand-written on torch's fake-quantise operators because torch's eager QAT needs stubs and
fusion lists per family, and its PT2E flow is no longer in torch. :func:`attach` returns
a handle whose :meth:`FakeQuant.remove` takes every hook off again; the weights stay float
(a state dict taken while attached has the usual keys).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["FakeQuant", "attach", "quantize_weight"]

_WEIGHTED = (nn.Conv1d, nn.Linear)
_ACTIVATIONS = (nn.BatchNorm1d, nn.ReLU, nn.Linear)


def quantize_weight(w: torch.Tensor) -> torch.Tensor:
    """``w`` on the symmetric per-output-channel int8 grid (straight-through gradient)."""
    flat = w.detach().reshape(w.shape[0], -1)
    scale = (flat.abs().amax(dim=1) / 127.0).clamp(min=1e-12).float()
    zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w.float(), scale, zero, 0, -127, 127).to(w.dtype)


class _Range:
    """Running min/max of one activation tensor and its uint8 fake quantisation."""

    def __init__(self, momentum: float = 0.1) -> None:
        self.lo: float | None = None
        self.hi: float | None = None
        self.momentum = momentum

    def __call__(self, module: nn.Module, inputs: Any, out: torch.Tensor) -> torch.Tensor:
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            return out
        if module.training or self.lo is None:
            lo, hi = float(out.detach().min()), float(out.detach().max())
            if self.lo is None:
                self.lo, self.hi = lo, hi
            else:
                m = self.momentum
                self.lo, self.hi = (1 - m) * self.lo + m * lo, (1 - m) * self.hi + m * hi
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)  # the range holds zero, as onnxruntime's does
        scale = max((hi - lo) / 255.0, 1e-12)
        zero = int(round(-lo / scale))
        return torch.fake_quantize_per_tensor_affine(out, scale, min(255, max(0, zero)), 0, 255)


class _InputRange(_Range):
    def pre(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (self(module, args, args[0]), *args[1:])


class _WeightQuant(nn.Module):
    """A parametrisation: the weight as the forward pass sees it."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return quantize_weight(w)


class FakeQuant:
    """The hooks :func:`attach` put on a model."""

    def __init__(self, model: nn.Module) -> None:
        from torch.nn.utils import parametrize

        self.model = model
        self.handles: list[Any] = []
        self.weighted: list[nn.Module] = []
        for m in model.modules():
            if isinstance(m, _WEIGHTED):
                parametrize.register_parametrization(m, "weight", _WeightQuant(), unsafe=True)
                self.weighted.append(m)
            if isinstance(m, _ACTIVATIONS):
                self.handles.append(m.register_forward_hook(_Range()))
        inp = _InputRange()
        self.handles.append(model.register_forward_pre_hook(inp.pre))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state dict with the usual keys and the weights on their int8 grid (what
        the deployed model computes with), on the CPU."""
        sd = self.model.state_dict()
        out = {}
        for k, v in sd.items():
            if k.endswith(".parametrizations.weight.original"):
                out[k.replace(".parametrizations.weight.original", ".weight")] = quantize_weight(v.detach()).cpu().clone()
            else:
                out[k] = v.detach().cpu().clone()
        return out

    def remove(self) -> None:
        """Take the hooks off; the weights keep their (float) values."""
        from torch.nn.utils import parametrize

        for h in self.handles:
            h.remove()
        for m in self.weighted:
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        self.handles, self.weighted = [], []


def attach(model: nn.Module) -> FakeQuant:
    """Put fake quantisation on ``model`` (see the module notes); remove it with ``.remove()``."""
    return FakeQuant(model)

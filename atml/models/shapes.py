"""The layer shapes of a model whose channels were removed (structured pruning), and the
way back: a checkpoint of a pruned model records :func:`shape_plan`, and
:func:`apply_shape_plan` resizes a freshly built model of the same family and
hyperparameters to it, so its state dict loads.

Only ``Conv1d``, ``BatchNorm1d`` and ``Linear`` hold weights in the families
(``tests/models/test_shapes.py`` holds that), so their integer attributes are the plan:
plain JSON, no pickled modules.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["shape_plan", "apply_shape_plan"]

_ATTRS: dict[type[nn.Module], tuple[str, ...]] = {
    nn.Conv1d: ("in_channels", "out_channels", "groups"),
    nn.BatchNorm1d: ("num_features",),
    nn.Linear: ("in_features", "out_features"),
}


def _attrs(module: nn.Module) -> tuple[str, ...] | None:
    return _ATTRS.get(type(module))


def shape_plan(model: nn.Module, reference: nn.Module | dict[str, dict[str, int]] | None = None
               ) -> dict[str, dict[str, int]]:
    """``{module name: {attribute: value}}`` of every weighted layer (of those that differ from
    ``reference``'s, when given: the unpruned model of the same hyperparameters, or the full
    plan of ``model`` taken before it was pruned)."""
    plan: dict[str, dict[str, int]] = {}
    for name, m in model.named_modules():
        attrs = _attrs(m)
        if attrs is not None:
            plan[name] = {a: int(getattr(m, a)) for a in attrs}
    if reference is None:
        return plan
    before = reference if isinstance(reference, dict) else shape_plan(reference)
    return {name: now for name, now in plan.items() if before.get(name) != now}


def _resize(m: nn.Module, attrs: dict[str, int]) -> None:
    for a, v in attrs.items():
        setattr(m, a, int(v))
    if isinstance(m, nn.Conv1d):
        shapes = {"weight": (m.out_channels, m.in_channels // m.groups, *m.kernel_size), "bias": (m.out_channels,)}
    elif isinstance(m, nn.Linear):
        shapes = {"weight": (m.out_features, m.in_features), "bias": (m.out_features,)}
    else:
        n = m.num_features
        shapes = {"weight": (n,), "bias": (n,), "running_mean": (n,), "running_var": (n,)}
    for key, shape in shapes.items():
        t = getattr(m, key, None)
        if t is None or tuple(t.shape) == shape:
            continue
        fresh = torch.zeros(shape, dtype=t.dtype, device=t.device)
        if isinstance(t, nn.Parameter):
            setattr(m, key, nn.Parameter(fresh, requires_grad=t.requires_grad))
        else:
            m.register_buffer(key, fresh)


def apply_shape_plan(model: nn.Module, plan: dict[str, dict[str, Any]] | None) -> nn.Module:
    """Resize ``model``'s layers in place to ``plan`` (weights zeroed: load the state dict
    after); returns ``model``. An empty or missing plan changes nothing."""
    if not plan:
        return model
    modules = dict(model.named_modules())
    for name, attrs in plan.items():
        m = modules.get(name)
        if m is None or _attrs(m) is None:
            raise ValueError(f"shape plan names layer {name!r}, which this model does not have as a weighted layer")
        _resize(m, attrs)
    return model

"""Warm starts in plain torch: copy a trained model's weights into a new one, freeze its
leading blocks, and give the backbone its own learning rate.

Every family is a stem, a sequence of blocks and a ``head`` (global pooling, dropout, one
linear layer). The *blocks* that ``freeze`` counts are, in order: the stem, then each entry
of the family's block sequence (afnet: a conv block together with its squeeze-excite;
resnet1d: a basic block, or a stage of the resnet18 preset; sepnet: an inverted residual;
inception1d: an inception group), then afnet's rhythm branch when it has one. The head is
never frozen.

Nothing here knows about studies, data sets or configs: the caller says which leads and
classes each side has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from atml.errors import SpaceError

__all__ = ["LEAD_MODES", "DEFAULT_LEAD", "Transfer", "backbone_blocks", "freeze_count", "freeze_leading",
           "keep_frozen_eval", "param_groups", "first_conv", "map_leads", "transfer_weights"]

LEAD_MODES = ("pick", "sum")
DEFAULT_LEAD = "II"  # the lead a single unnamed lead is taken to be (the usual rhythm lead)


@dataclass
class Transfer:
    """What :func:`transfer_weights` did: tensors copied, kept fresh, and the first conv's mapping."""

    copied: int = 0
    new: list[str] = field(default_factory=list)
    leads: str | None = None  # how the first conv's input channels were mapped (None: copied as is)

    def as_dict(self) -> dict[str, Any]:
        return {"copied": self.copied, "new": len(self.new), "new_tensors": self.new[:20], "leads": self.leads}


def backbone_blocks(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """The blocks ``freeze`` counts, in order, as (name, modules): see the module docstring."""
    out: list[tuple[str, list[nn.Module]]] = [("stem", [model.stem])]
    seq = getattr(model, "blocks", None)
    if seq is not None:
        for name, mod in seq.named_children():
            if type(mod).__name__ == "SqueezeExcite" and len(out) > 1:  # afnet: part of the conv block before it
                out[-1][1].append(mod)
            else:
                out.append((f"blocks.{name}", [mod]))
    rhythm = getattr(model, "rhythm", None)
    if isinstance(rhythm, nn.Module):
        out.append(("rhythm", [rhythm]))
    return out


def freeze_count(n_blocks: int, freeze: int | float) -> int:
    """Leading blocks to freeze: an int is a count (at most ``n_blocks``), a float in [0, 1)
    the share of the blocks (rounded down)."""
    if isinstance(freeze, float):
        return int(math.floor(freeze * n_blocks + 1e-9))
    if freeze > n_blocks:
        raise SpaceError(f"model.init.freeze: {freeze} blocks asked for, but the model has {n_blocks} "
                         "(the stem and its blocks)")
    return int(freeze)


def freeze_leading(model: nn.Module, freeze: int | float) -> list[str]:
    """Turn off the gradients of the leading blocks; returns their names. Their BatchNorm
    layers are kept in eval mode by :func:`keep_frozen_eval` during training."""
    blocks = backbone_blocks(model)
    chosen = blocks[: freeze_count(len(blocks), freeze)]
    for _, mods in chosen:
        for mod in mods:
            for p in mod.parameters():
                p.requires_grad_(False)
    return [name for name, _ in chosen]


def keep_frozen_eval(model: nn.Module) -> None:
    """Put every BatchNorm layer whose parameters are all frozen back in eval mode (after
    ``model.train()``), so a frozen block's running statistics stay as they were."""
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            params = list(mod.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                mod.eval()


def param_groups(model: nn.Module, lr: float, lr_scale: float) -> list[dict[str, Any]]:
    """Optimizer groups: the head at ``lr`` (first, so it is the group a learning-rate report
    reads), every other trainable parameter at ``lr * lr_scale``."""
    head = getattr(model, "head", None)
    head_ids = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) in head_ids], "lr": lr},
              {"params": [p for p in trainable if id(p) not in head_ids], "lr": lr * lr_scale}]
    return [g for g in groups if g["params"]]


def first_conv(model: nn.Module) -> tuple[str, nn.Conv1d]:
    """The state-dict key of the first convolution's weight (the one reading the leads) and the layer."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv1d):
            return f"{name}.weight", mod
    raise SpaceError(f"{type(model).__name__} has no convolution to read the leads")


def _lead_index(names: tuple[str, ...]) -> dict[str, int]:
    return {n.strip().lower(): i for i, n in enumerate(names)}


def map_leads(weight: torch.Tensor, src_leads: tuple[str, ...], tgt_leads: tuple[str, ...], n_target: int,
              mode: str = "pick") -> tuple[torch.Tensor, str]:
    """The first conv's weight ``(out, src_leads, k)`` for ``n_target`` input leads, and a line saying how.

    ``pick``: each target lead takes the source channel of the same name; a single target
    lead the source does not name (a txt or npz lead has no name) is taken to be lead II.
    ``sum``: a single target lead gets the weights summed over the source's leads. Anything
    else cannot be bridged: a SpaceError naming both shapes.
    """
    n_src = weight.shape[1]
    shapes = (f"source first conv {list(weight.shape)} over {n_src} lead(s) "
              f"{list(src_leads) or '(unnamed)'}, target {n_target} lead(s) {list(tgt_leads) or '(unnamed)'}")
    if mode == "sum":
        if n_target != 1:
            raise SpaceError(f"model.init.leads: sum maps onto a single lead only ({shapes})")
        return weight.sum(dim=1, keepdim=True), f"summed over the source's {n_src} leads"
    index = _lead_index(src_leads)
    names = tgt_leads if len(tgt_leads) == n_target else ()
    picks: list[int] = []
    for i in range(n_target):
        name = names[i] if names else None
        j = index.get(name.strip().lower()) if name else None
        if j is None and n_target == 1:
            name, j = DEFAULT_LEAD, index.get(DEFAULT_LEAD.lower())
            if j is None and n_src == 1:
                j = 0
        if j is None:
            raise SpaceError(f"model.init.from: cannot map the leads ({shapes}): lead {name or i} is not in the "
                             "source; use leads: sum for a single-lead model, or a source with these leads")
        picks.append(j)
    how = ", ".join(f"{(names[i] if names else DEFAULT_LEAD)}<-{src_leads[j] if src_leads else j}"
                    for i, j in enumerate(picks))
    return weight[:, picks, :].clone(), f"picked by lead name ({how})"


def transfer_weights(target: nn.Module, source: dict[str, torch.Tensor], *, new_head: bool,
                     src_leads: tuple[str, ...] = (), tgt_leads: tuple[str, ...] = (),
                     lead_mode: str = "pick") -> Transfer:
    """Copy ``source`` (a state dict of the same family and architecture) into ``target``.

    Tensors of equal name and shape are copied; the head stays freshly initialised when
    ``new_head``; the first conv is mapped by :func:`map_leads` when the lead counts differ
    (or the lead names are in another order). Any other shape difference is a SpaceError
    naming both shapes.
    """
    state = target.state_dict()
    conv_key, conv = first_conv(target)
    out = Transfer()
    for key, tensor in state.items():
        if new_head and key.startswith("head."):
            out.new.append(key)
            continue
        if key not in source:
            out.new.append(key)
            continue
        src = source[key]
        if key == conv_key and (src.shape[1] != tensor.shape[1] or _reordered(src_leads, tgt_leads)):
            src, out.leads = map_leads(src, src_leads, tgt_leads, conv.in_channels, lead_mode)
        if src.shape != tensor.shape:
            raise SpaceError(f"model.init.from: cannot adapt {key}: source shape {list(src.shape)}, "
                             f"target shape {list(tensor.shape)}")
        state[key] = src.detach().clone().to(tensor.dtype)
        out.copied += 1
    target.load_state_dict(state)
    return out


def _reordered(src: tuple[str, ...], tgt: tuple[str, ...]) -> bool:
    """Both sides name the same leads, in another order."""
    a, b = [n.lower() for n in src], [n.lower() for n in tgt]
    return len(a) == len(b) > 1 and a != b and sorted(a) == sorted(b)

"""A trial's warm start (``model.init``): its model built from a trained source checkpoint.

The space was checked against the source when it was loaded (:mod:`atml.config.init_rules`):
same family, the source's architecture, the data at the source's rate. Here each trial (and
each fold of a cross-validated one) gets a model of the source's architecture for its data's
leads and classes, with the source's weights copied in (:mod:`atml.models.transfer`), its
leading blocks frozen, and a record of what was done, which the trial stores as its ``init``
attribute and its checkpoint keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atml.config import TrialConfig
from atml.errors import SpaceError
from atml.models import build_model
from atml.models.transfer import backbone_blocks, freeze_leading, transfer_weights
from atml.trial.attributes import INIT
from atml.trial.data import PreparedData

__all__ = ["WarmStarted", "prepare", "record"]


@dataclass
class WarmStarted:
    """A trial's warm start: the source's hyperparameters, the backbone's learning-rate
    multiplier, and what :meth:`build` did (``record``, filled by the first build)."""

    family: str
    hparams: dict[str, Any]
    lr_scale: float
    source: dict[str, Any] = field(repr=False)
    init: dict[str, Any] = field(default_factory=dict)
    data: PreparedData | None = field(default=None, repr=False)
    record: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        """A fresh model for the trial's data with the source's weights in and its leading blocks frozen."""
        d, ck = self.data, self.source
        assert d is not None
        model = build_model(self.family, in_channels=d.n_leads, n_classes=len(d.classes), **self.hparams)
        new_head = self.init.get("head", "new") == "new"
        done = transfer_weights(model, ck["state_dict"], new_head=new_head, src_leads=tuple(ck.get("leads") or ()),
                                tgt_leads=d.leads, lead_mode=str(self.init.get("leads", "pick")))
        freeze = self.init.get("freeze", 0)
        frozen = freeze_leading(model, freeze)
        if not self.record:
            self.record = _record(self, done.as_dict(), frozen, len(backbone_blocks(model)), new_head)
        return model


def prepare(config: TrialConfig, data: PreparedData) -> WarmStarted | None:
    """The trial's warm start (None without ``model.init``); a SpaceError when the source no
    longer fits (moved file, other data than the space was checked with)."""
    init = config.init
    if not init:
        return None
    path = Path(str(init["from"]))
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as e:
        raise SpaceError(f"model.init.from: cannot read the source checkpoint {path} ({e})") from None
    if ck["family"] != config.family:
        raise SpaceError(f"model.init.from: the source is a {ck['family']} model, the trial's family is {config.family}")
    if int(ck["fs"]) != int(data.fs):
        raise SpaceError(f"model.init.from: the source was trained at {ck['fs']} Hz, the data is at {data.fs} Hz "
                         "(set data.target_fs to the source's rate)")
    if ck.get("shapes"):
        raise SpaceError(f"model.init.from: {path} is a pruned model (train.prune); warm-start from an unpruned one")
    classes, task = list(ck["classes"]), str(ck.get("task", "binary"))
    if init.get("head") == "keep" and (classes != list(data.classes) or task != data.task):
        raise SpaceError(f"model.init.head: keep needs the source's {task} classes {classes}, the data has "
                         f"{data.task} classes {list(data.classes)}; use head: new")
    hp = {**ck["hparams"], **config.hparams}  # the space may set only weight-free ones (dropout)
    return WarmStarted(family=config.family, hparams=hp, lr_scale=float(init.get("lr_scale", 1.0)), source=ck,
                       init=dict(init), data=data)


def _record(ws: WarmStarted, done: dict[str, Any], frozen: list[str], blocks: int, new_head: bool) -> dict[str, Any]:
    ck, d = ws.source, ws.data
    assert d is not None
    src_classes = list(ck["classes"])
    head = ("new head" + ("" if src_classes == list(d.classes) else f" (source classes {src_classes}, "
                                                                   f"data classes {list(d.classes)})")
            if new_head else "source head kept")
    leads = done["leads"] or ("as in the source" if int(ck["in_channels"]) == d.n_leads else None)
    summary = [
        f"{done['copied']} tensors copied from {ck.get('study')}#{ck.get('trial')} ({ck['family']}), "
        f"{done['new']} new",
        head,
        f"first conv: {int(ck['in_channels'])} -> {d.n_leads} lead(s), {leads}",
        f"data at the source's {int(ck['fs'])} Hz",
        f"froze {len(frozen)} of {blocks} blocks" + (f" ({', '.join(frozen)})" if frozen else ""),
    ]
    if ws.lr_scale != 1:
        summary.append(f"backbone learning rate x {ws.lr_scale:g}")
    return {
        "from": str(ws.init["from"]), "study": ck.get("study"), "trial": ck.get("trial"), "family": ck["family"],
        "copied": done["copied"], "new": done["new"], "head": "new" if new_head else "keep", "leads": leads,
        "source_leads": int(ck["in_channels"]), "fs": int(ck["fs"]), "freeze": ws.init.get("freeze", 0),
        "frozen": frozen, "blocks": blocks, "lr_scale": ws.lr_scale, "summary": summary,
    }


def record(trial: Any, ws: WarmStarted | None) -> dict[str, Any] | None:
    """Store what the warm start did on ``trial`` (its ``init`` attribute); returns it (None: no warm start)."""
    if ws is None:
        return None
    trial.set_user_attr(INIT, ws.record)
    return ws.record

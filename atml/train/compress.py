"""The phases after training that make the trained model the deployed one: structured
pruning with fine-tuning (``train.prune``, :mod:`atml.models.prune`) and quantisation-aware
fine-tuning (``train.qat``, :mod:`atml.models.fakequant`). :func:`atml.train.fit` runs them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from atml.config import TrainConfig
from atml.train.loop import TrainResult, cpu_state, train_loop

__all__ = ["PRUNE_LR_SCALE", "QAT_LR_SCALE", "compress"]

# Fine-tuning after training starts from the trained weights: a smaller step than training's.
PRUNE_LR_SCALE = 0.3  # after channels were removed: the network has to recover
QAT_LR_SCALE = 0.1  # under fake quantisation: the weights only settle on the int8 grid


def compress(model: nn.Module, res: TrainResult, data: tuple[torch.Tensor, ...], cfg: TrainConfig,
              report: Callable[[int, float, dict[str, float]], None] | None, should_stop: Callable[[], bool] | None,
              classes: tuple[str, ...], device: str | torch.device | None,
              distill: Callable[..., torch.Tensor] | None, subjects: np.ndarray | None = None) -> TrainResult:
    """The phases after training: prune and fine-tune (``train.prune``: ``steps`` rounds,
    ``epochs`` fine-tuning epochs in all), then quantisation-aware fine-tuning (``train.qat``
    epochs). Each phase starts from the previous one's kept weights and keeps its own best
    (or last, ``keep: last``) epoch; epochs are numbered on from training's, for ``report``."""
    from atml.models.fakequant import attach
    from atml.models.prune import prune_channels, schedule
    from atml.models.shapes import shape_plan

    phases, done = [res], []
    model.load_state_dict(res.state_dict)
    n_leads, n_samples = int(data[0].shape[1]), int(data[0].shape[2])

    def run(tuned: TrainConfig, **kw: Any) -> TrainResult:
        offset = sum(p.epochs_run for p in phases)
        rep = None if report is None else (lambda e, o, m: report(offset + e, o, {**m, "epoch": offset + e}))
        r = train_loop(model, *data, tuned, rep, should_stop, classes, device, distill, subjects=subjects, **kw)
        phases.append(r)
        return r

    def tune(epochs: int, scale: float) -> TrainConfig:
        return dataclasses.replace(cfg, epochs=epochs, lr=cfg.lr * scale, patience=epochs + 1, min_epochs=epochs,
                                   ema=0.0, prune=None, qat=0)

    prune, shapes, float_state = cfg.prune or {}, None, None
    amount = float(prune.get("amount", 0))
    if amount > 0:
        reference = shape_plan(model)  # the unpruned layer shapes
        steps, epochs = int(prune.get("steps", 1)), int(prune.get("epochs", 1))
        params_before = sum(p.numel() for p in model.parameters())
        for i, ratio in enumerate(schedule(amount, steps)):
            prune_channels(model, ratio, n_leads, n_samples)
            per = epochs // steps + (1 if i < epochs % steps else 0)
            model.load_state_dict(run(tune(max(1, per), PRUNE_LR_SCALE)).state_dict)
        shapes = shape_plan(model, reference)
        done.append({"phase": "prune", "amount": amount, "steps": steps, "epochs": epochs,
                     "params_before": params_before, "params_after": sum(p.numel() for p in model.parameters())})
    if cfg.qat > 0:
        float_state = cpu_state(model)
        fq = attach(model)
        try:
            last = run(tune(cfg.qat, QAT_LR_SCALE), state_of=lambda _m: fq.state_dict())
        finally:
            fq.remove()
        model.load_state_dict(last.state_dict)
        done.append({"phase": "qat", "epochs": cfg.qat, "weights": "int8 per channel (symmetric)",
                     "activations": "uint8 per tensor"})
    final = phases[-1]
    history, offset = [], 0
    for p in phases:
        history.extend({**h, "epoch": offset + int(h.get("epoch", i))} for i, h in enumerate(p.history))
        offset += p.epochs_run
    return TrainResult(
        best_epoch=offset - final.epochs_run + final.best_epoch, epochs_run=offset,
        metrics={**final.metrics, "epoch": offset - final.epochs_run + final.best_epoch}, history=history,
        state_dict=final.state_dict, stopped_early=res.stopped_early,
        epoch_seconds=sum(p.epoch_seconds for p in phases), shapes=shapes, float_state=float_state,
        compression=done,
    )

"""Final fits of a chosen trial, for ``atml export --refit`` and ``--ensemble K``.

A search picks a configuration on the validation subjects; the trial's checkpoint has seen
only the training subjects, and it is one draw of a noisy training run. Two standard ways
to spend the data better, both leaving the test subjects untouched:

- **refit**: retrain the configuration on the training *and* validation subjects for the
  number of epochs its trial found best (``best_epoch + 1``) and keep the last epoch: no
  held-out data is left to pick one with, so the validation figures of a refit model are
  in-sample and the sidecar says so.
- **ensemble K**: K members trained with different seeds, exported as one model that
  averages their logits (:class:`atml.models.ensemble.MeanLogits`). Without refit each
  member trains exactly as its trial did (early stopping, best validation epoch) and
  member 0 is the trial's own checkpoint, so the validation figures stay held-out.

Every member is seeded from the trial's seed: the same study, trial and K give the same
weights.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from atml.config import trial_seed
from atml.errors import ExportError
from atml.metrics import base_metric
from atml.models import PrototypeClassifier, build_model, model_from_checkpoint
from atml.models.ensemble import MeanLogits
from atml.train import TrainConfig, fit
from atml.trial import attributes

__all__ = ["FinalFit", "final_model"]

log = logging.getLogger(__name__)


@dataclass
class FinalFit:
    """The model to export and how it was made (the sidecar's ``fit`` entry)."""

    model: nn.Module
    info: dict[str, Any] = field(default_factory=dict)
    validation_held_out: bool = True


def _fold_ensemble(ck: dict[str, Any], ref: Any) -> FinalFit:
    """A cross-validated trial's K fold models as one mean-logits model, with no retraining.

    Together they saw every non-test subject (each one all but its own held-out fold), so
    no validation figure of the ensemble is held out; the trial's out-of-fold figures are
    the honest estimate and go into the sidecar.
    """
    folds = ck.get("folds")
    if not folds:
        raise ExportError(f"trial #{ref.number} was not cross-validated (validation.scheme: subject_kfold): "
                          "it has no fold models for --from-folds")
    models = []
    for f in folds:
        models.append(model_from_checkpoint(ck, f["state_dict"]))
    model = models[0] if len(models) == 1 else MeanLogits(models).eval()
    info = {"mode": "folds", "members": len(models), "subjects": "train+validation",
            "combine": "mean of member logits", "note": "the trial's fold models, not retrained",
            "folds_held_out": [list(f.get("held_subjects") or []) for f in folds]}
    return FinalFit(model, info, validation_held_out=False)


def _member_seed(base: int, i: int) -> int:
    return base if i == 0 else trial_seed(base, i)


def final_model(checkpoint_model: nn.Module, ck: dict[str, Any], ref: Any, x: np.ndarray, y: np.ndarray,
                train_idx: np.ndarray, val_idx: np.ndarray, *, refit: bool = False,
                members: int = 1, from_folds: bool = False, device: str = "cpu") -> FinalFit:
    """The trial's checkpoint, or its configuration retrained (``refit``) and/or ensembled.

    ``x``/``y`` are the study's (cached) arrays, ``train_idx``/``val_idx`` its subject split;
    ``ref`` is the :class:`atml.onnx.export.TrialRef` (study settings, trial number and attributes);
    ``members`` >= 1 (``export_trial`` checks it before loading anything). Retrained members
    train on ``device`` (a resolved torch device) and come back on the CPU for the export.
    """
    if from_folds:
        return _fold_ensemble(ck, ref)
    if not refit and members == 1:
        return FinalFit(checkpoint_model, {"mode": "checkpoint", "members": 1,
                                           "subjects": "train", "note": "the trial's own checkpoint"})
    for key, what in (("init", "warm-started (model.init)"), ("distill", "distilled from a teacher (train.distill)")):
        if ck.get(key):
            # A retrain without the source model or the teacher would silently drop what it brought.
            raise ExportError(f"trial #{ref.number} was {what}; --refit and --ensemble retrain without it: "
                              "export its checkpoint")
    train_cfg = (ck.get("params") or {}).get("train")
    if not isinstance(train_cfg, dict):
        raise ExportError(f"checkpoint of trial #{ref.number} has no training settings to retrain from")
    st = ref.settings
    base_seed = trial_seed(st.seed, ref.number)
    task = str(ck.get("task", "binary"))
    ytype = np.float32 if task == "multilabel" else np.int64

    def tensors(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.sort(idx)
        return (torch.from_numpy(np.ascontiguousarray(x[idx], dtype=np.float32)),
                torch.from_numpy(np.asarray(y[idx], dtype=ytype)))

    fit_idx = np.concatenate([train_idx, val_idx]) if refit else train_idx
    x_fit, y_fit = tensors(fit_idx)
    x_val, y_val = tensors(val_idx)
    extra: dict[str, Any] = {"metric": base_metric(st.metric), "direction": st.direction, "task": task}
    if refit:
        best = ref.user_attrs.get(attributes.BEST_EPOCH)
        if not isinstance(best, int) or best < 0:
            raise ExportError(f"trial #{ref.number} has no best_epoch to refit for")
        epochs = best + 1
        # Fixed length, no early stop, last epoch kept: the validation subjects are training data now.
        extra.update(epochs=epochs, patience=epochs + 1, min_epochs=epochs, keep="last")
    models: list[nn.Module] = []
    seeds: list[int] = []
    t0 = time.perf_counter()
    for i in range(members):
        seed = _member_seed(base_seed, i)
        seeds.append(seed)
        if i == 0 and not refit:
            models.append(checkpoint_model)  # trained exactly like this already
            continue
        torch.manual_seed(seed)
        model = build_model(ck["family"], in_channels=int(ck["in_channels"]), n_classes=int(ck["n_classes"]),
                            **ck["hparams"])
        if ck.get("head") == "prototype":  # comparator (train.mode): pairs drawn with no subject constraint
            model = PrototypeClassifier(model, int(ck["n_classes"]))
        cfg = TrainConfig.from_params(train_cfg, seed=seed, **extra)
        res = fit(model, x_fit, y_fit, x_val, y_val, cfg, classes=tuple(ck.get("classes") or ()), device=device)
        model.to("cpu").load_state_dict(res.state_dict)
        model.eval()
        log.info("member %d/%d (seed %d): %d epochs, kept epoch %d", i + 1, members, seed, res.epochs_run,
                 res.best_epoch)
        models.append(model)
    model = models[0] if members == 1 else MeanLogits(models).eval()
    info = {
        "mode": "refit" if refit else "ensemble",
        "members": members,
        "seeds": seeds,
        "subjects": "train+validation" if refit else "train",
        "segments": int(len(fit_idx)),
        "epochs": extra.get("epochs"),
        "combine": "mean of member logits" if members > 1 else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return FinalFit(model, info, validation_held_out=not refit)

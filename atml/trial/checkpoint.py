"""The trial checkpoint: where it lives, how it is written (atomically) and read back.

A checkpoint is one ``torch.save`` of a plain dict: the model family and its
hyperparameters, the input shape, rate, lead names and classes, the weights, the trial's
parameters and its validation metrics (and a warm start's ``init`` record); enough to
rebuild the model with no study at hand.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from atml.models import model_from_checkpoint
from atml.trial.data import PreparedData

__all__ = ["CHECKPOINT_FILE", "OOF_FILE", "checkpoint_dir", "atomic_save", "save_checkpoint", "load_checkpoint",
           "save_oof", "load_oof"]

CHECKPOINT_FILE = "model.pt"
OOF_FILE = "oof.npz"  # a cross-validated trial's out-of-fold predictions


def checkpoint_dir(artifacts: str | Path, study: str, number: int) -> Path:
    """The folder of trial ``number`` of ``study`` under the artifacts folder."""
    return Path(artifacts) / study / "trials" / f"{number:05d}"


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` through a temporary file in the same folder, so a reader
    (or a crash) never sees a partial checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, *, family: str, hparams: dict[str, Any], data: PreparedData,
                    state_dict: dict[str, torch.Tensor], params: dict[str, Any], trial: int, study: str,
                    metrics: dict[str, float], folds: list[dict[str, Any]] | None = None,
                    init: dict[str, Any] | None = None, distill: dict[str, Any] | None = None,
                    head: str | None = None, shapes: dict[str, dict[str, int]] | None = None) -> Path:
    """Write the checkpoint of one trained trial to ``path``; returns ``path``.

    ``init`` is what a warm start did (:func:`atml.trial.warmstart.WarmStarted.record`),
    ``distill`` the teacher that taught it (:attr:`atml.trial.distill.Distiller.record`),
    ``head`` ``"prototype"`` for a comparator trial (:mod:`atml.models.prototype`).

    A cross-validated trial also keeps its fold models: ``folds`` is one
    ``{"state_dict", "held_subjects"}`` per fold, and ``state_dict`` is the first fold's.
    """
    ck = {
        "family": family, "hparams": hparams, "in_channels": data.n_leads, "n_classes": len(data.classes),
        "n_samples": data.n_samples, "fs": data.fs, "classes": list(data.classes), "task": data.task,
        "state_dict": state_dict, "params": params, "trial": trial, "study": study, "metrics": metrics,
        "leads": list(getattr(data, "leads", ())),
    }
    if init is not None:
        ck["init"] = init
    if distill is not None:
        ck["distill"] = distill
    if head is not None:
        ck["head"] = head
    if shapes:  # train.prune: the layer shapes that differ from a freshly built model's
        ck["shapes"] = shapes
    if folds is not None:
        ck["folds"] = folds
    atomic_save(ck, path)
    return path


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a model from a trial checkpoint; returns (model in eval mode, checkpoint dict)."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    return model_from_checkpoint(ck), ck


def save_oof(folder: Path, oof: dict[str, Any]) -> Path:
    """Write a cross-validated trial's out-of-fold predictions (subject, y, p, fold) atomically."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / OOF_FILE
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{k: np.asarray(v) for k, v in oof.items()})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_oof(folder: str | Path) -> dict[str, Any]:
    """The out-of-fold predictions written by :func:`save_oof` (arrays by name)."""
    import numpy as np

    with np.load(Path(folder) / OOF_FILE, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}

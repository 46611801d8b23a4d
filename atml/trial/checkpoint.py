"""The trial checkpoint: where it lives, how it is written (atomically) and read back.

A checkpoint is one ``torch.save`` of a plain dict: the model family and its
hyperparameters, the input shape and classes, the weights, the trial's parameters and
its validation metrics; enough to rebuild the model with no study at hand.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from atml.models import build_model
from atml.trial.data import PreparedData

__all__ = ["CHECKPOINT_FILE", "checkpoint_dir", "atomic_save", "save_checkpoint", "load_checkpoint"]

CHECKPOINT_FILE = "model.pt"


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
                    metrics: dict[str, float]) -> Path:
    """Write the checkpoint of one trained trial to ``path``; returns ``path``."""
    atomic_save(
        {
            "family": family, "hparams": hparams, "in_channels": data.n_leads, "n_classes": len(data.classes),
            "n_samples": data.n_samples, "fs": data.fs, "classes": list(data.classes), "task": data.task,
            "state_dict": state_dict, "params": params, "trial": trial, "study": study, "metrics": metrics,
        },
        path,
    )
    return path


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a model from a trial checkpoint; returns (model in eval mode, checkpoint dict)."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(ck["family"], in_channels=ck["in_channels"], n_classes=ck["n_classes"], **ck["hparams"])
    model.load_state_dict(ck["state_dict"])
    model.eval()
    return model, ck

"""One trial: params -> data -> model -> train -> checkpoint -> value."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from atml.data import DataSpec, load_dataset
from atml.models import build_model, count_parameters
from atml.samplers import _trial_seed
from atml.space import SearchSpace
from atml.storage import worker_id
from atml.train import TrainConfig, fit

__all__ = ["data_spec", "PreparedData", "prepare_data", "Objective", "checkpoint_dir", "load_checkpoint"]

log = logging.getLogger(__name__)


def data_spec(data: dict[str, Any], path: str | None = None) -> DataSpec:
    """The :class:`DataSpec` for a space's ``data`` section (``path`` overrides it)."""
    syn = data.get("synthetic") or {}
    kwargs: dict[str, Any] = dict(
        path=path if path is not None else data.get("path"),
        format=data.get("format", "auto"),
        positive=tuple(data.get("positive", ("AFIB",))),
        classes=tuple(data.get("classes", ("non-AFIB", "AFIB"))),
        drop_labels=tuple(data.get("drop_labels", ())),
        label_map=data.get("label_map"),
        segment_length=data.get("segment_length", 1250),
        fs=data.get("fs", 250),
        normalize=data.get("normalize", "zscore"),
        val_fraction=data.get("val_fraction", 0.2),
        test_fraction=data.get("test_fraction", 0.0),
        test_path=data.get("test_path"),
        split_seed=data.get("split_seed", 0),
        on_bad=data.get("on_bad", "error"),
        max_segments=data.get("max_segments"),
        synthetic_subjects=syn.get("subjects", 24),
        synthetic_per_subject=syn.get("per_subject", 40),
        synthetic_seed=syn.get("seed", 0),
    )
    if kwargs["path"] is not None and kwargs["format"] == "synthetic":
        kwargs["format"] = "auto"
    return DataSpec(**kwargs)


@dataclass
class PreparedData:
    """Train/validation tensors held in memory by one worker for all of its trials."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    classes: tuple[str, ...]
    fs: int
    n_leads: int
    n_samples: int
    split_summary: dict[str, Any]
    source: str


def prepare_data(spec: DataSpec, cache_dir: str | Path) -> PreparedData:
    """Load (cached) arrays, split by subject, and copy train/val into tensors once."""
    ds = load_dataset(spec, cache_dir)
    split = ds.split(spec)
    # One gather per split; trials then index tensors in memory, never the files.
    x_tr = torch.from_numpy(np.ascontiguousarray(ds.x[np.sort(split.train)]))
    x_va = torch.from_numpy(np.ascontiguousarray(ds.x[np.sort(split.val)]))
    y_tr = torch.from_numpy(np.asarray(ds.y[np.sort(split.train)], dtype=np.int64))
    y_va = torch.from_numpy(np.asarray(ds.y[np.sort(split.val)], dtype=np.int64))
    return PreparedData(
        x_train=x_tr, y_train=y_tr, x_val=x_va, y_val=y_va, classes=tuple(ds.classes), fs=ds.fs,
        n_leads=ds.n_leads, n_samples=ds.n_samples, split_summary=split.summary(), source=ds.source,
    )


def checkpoint_dir(artifacts: str | Path, study: str, number: int) -> Path:
    return Path(artifacts) / study / "trials" / f"{number:05d}"


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a model from a trial checkpoint; returns (model in eval mode, checkpoint dict)."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(ck["family"], in_channels=ck["in_channels"], n_classes=ck["n_classes"], **ck["hparams"])
    model.load_state_dict(ck["state_dict"])
    model.eval()
    return model, ck


class Objective:
    """The callable handed to ``study.optimize`` by a worker."""

    def __init__(
        self,
        space: SearchSpace,
        data: PreparedData,
        artifacts: str | Path,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.space = space
        self.data = data
        self.artifacts = Path(artifacts)
        self.should_stop = should_stop

    def __call__(self, trial: optuna.Trial) -> float:
        t0 = time.perf_counter()
        params = self.space.suggest(trial)
        trial.set_user_attr("worker", worker_id())
        seed = _trial_seed(self.space.study.seed, trial.number)
        torch.manual_seed(seed)
        fam, hp = params["model"]["family"], params["model"]["hparams"]
        d = self.data
        model = build_model(fam, in_channels=d.n_leads, n_classes=len(d.classes), **hp)
        n_params = count_parameters(model)
        trial.set_user_attr("n_params", n_params)
        st = self.space.study
        cfg = TrainConfig.from_params(params["train"], seed=seed, metric=st.metric, direction=st.direction)
        history: list[dict[str, float]] = []

        def report(epoch: int, value: float, m: dict[str, float]) -> None:
            history.append({k: float(m[k]) for k in ("train_loss", "val_loss", st.metric) if k in m})
            trial.report(value, epoch)
            if trial.should_prune():
                trial.set_user_attr("history", history)
                trial.set_user_attr("reason", f"pruned by {st.pruner['type']} at epoch {epoch}")
                raise optuna.TrialPruned(f"pruned at epoch {epoch} ({st.metric}={value:.4f})")

        res = fit(model, d.x_train, d.y_train, d.x_val, d.y_val, cfg, report=report,
                  should_stop=self.should_stop)
        ck_path = checkpoint_dir(self.artifacts, st.name, trial.number) / "model.pt"
        _atomic_save(
            {
                "family": fam, "hparams": hp, "in_channels": d.n_leads, "n_classes": len(d.classes),
                "n_samples": d.n_samples, "fs": d.fs, "classes": list(d.classes),
                "state_dict": res.state_dict, "params": params, "trial": trial.number,
                "study": st.name, "metrics": res.metrics,
            },
            ck_path,
        )
        metrics = {k: float(v) for k, v in res.metrics.items() if k not in ("epoch", "lr")}
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("best_epoch", res.best_epoch)
        trial.set_user_attr("epochs_run", res.epochs_run)
        trial.set_user_attr("stopped_early", res.stopped_early)
        trial.set_user_attr("history", history)
        trial.set_user_attr("checkpoint", str(ck_path.relative_to(self.artifacts / st.name)))
        trial.set_user_attr("epoch_seconds", round(res.epoch_seconds, 3))
        trial.set_user_attr("trial_seconds", round(time.perf_counter() - t0, 3))
        value = metrics["val_loss"] if st.metric == "val_loss" else metrics[st.metric]
        return value

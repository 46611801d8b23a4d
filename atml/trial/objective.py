"""One trial: params -> data -> model -> train -> checkpoint -> value."""

from __future__ import annotations

import json
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
import optuna.artifacts
import torch

from atml import gate as g
from atml.config import SearchSpace, trial_seed
from atml.data import DataSpec, load_dataset, spec_from_section
from atml.models import build_model, count_parameters
from atml.onnx.export import export_onnx, onnx_size_kb
from atml.storage import worker_id
from atml.train import TrainConfig, fit

data_spec = spec_from_section  # the name the worker, search and export use

__all__ = ["data_spec", "PreparedData", "prepare_data", "DataVariants", "Objective", "checkpoint_dir",
           "load_checkpoint", "SKIPPED_ATTR", "was_skipped"]

log = logging.getLogger(__name__)

# A trial ended before training (size cap, constraint, avoid list): PRUNED for the sampler,
# but it does not use up the budget.
SKIPPED_ATTR = "skipped"


def was_skipped(trial: Any) -> bool:
    """Whether ``trial`` (frozen or live) ended before training (see :data:`SKIPPED_ATTR`)."""
    return bool(trial.user_attrs.get(SKIPPED_ATTR))


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
    task: str = "binary"


def prepare_data(spec: DataSpec, cache_dir: str | Path) -> PreparedData:
    """Load (cached) arrays, split by subject, and copy train/val into tensors once."""
    ds = load_dataset(spec, cache_dir)
    split = ds.split(spec)
    # One gather per split; trials then index tensors in memory, never the files.
    x_tr = torch.from_numpy(np.ascontiguousarray(ds.x[np.sort(split.train)]))
    x_va = torch.from_numpy(np.ascontiguousarray(ds.x[np.sort(split.val)]))
    task = getattr(ds, "task", "binary")
    ytype = np.float32 if task == "multilabel" else np.int64
    y_tr = torch.from_numpy(np.asarray(ds.y[np.sort(split.train)], dtype=ytype))
    y_va = torch.from_numpy(np.asarray(ds.y[np.sort(split.val)], dtype=ytype))
    return PreparedData(
        x_train=x_tr, y_train=y_tr, x_val=x_va, y_val=y_va, classes=tuple(ds.classes), fs=ds.fs,
        n_leads=ds.n_leads, n_samples=ds.n_samples, split_summary=split.summary(), source=ds.source,
        task=task,
    )


class DataVariants:
    """A worker's prepared data for each preprocessing variant its trials ask for.

    A space that searches preprocessing settings (``data.window``, ``data.bandpass``, ...)
    gives each trial its own data; each variant is preprocessed and cached on disk once
    (``atml search`` builds them all before the workers start) and the ``keep`` most
    recently used stay in memory here.
    """

    def __init__(self, section: dict[str, Any], data_path: str | None, cache_dir: str | Path, keep: int = 2) -> None:
        from collections import OrderedDict

        self.section = section
        self.data_path = data_path
        self.cache_dir = Path(cache_dir)
        self.keep = max(1, keep)
        self._lru: OrderedDict[str, PreparedData] = OrderedDict()

    def get(self, overrides: dict[str, Any]) -> PreparedData:
        key = json.dumps(overrides, sort_keys=True)
        if key in self._lru:
            self._lru.move_to_end(key)
            return self._lru[key]
        while len(self._lru) >= self.keep:  # free before loading the next
            self._lru.popitem(last=False)
        data = prepare_data(data_spec({**self.section, **overrides}, self.data_path), self.cache_dir)
        if overrides:
            log.info("data variant %s: %d x %d samples, %d train / %d val segments", key, data.n_leads,
                     data.n_samples, len(data.y_train), len(data.y_val))
        self._lru[key] = data
        return data


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
        data: PreparedData | DataVariants,
        artifacts: str | Path,
        should_stop: Callable[[], bool] | None = None,
        artifact_store: str | None = None,
    ) -> None:
        self.artifact_store = artifact_store
        self.space = space
        # A fixed PreparedData serves a space without searched preprocessing.
        if isinstance(data, PreparedData) and space.data_params:
            raise ValueError("this space searches preprocessing settings: pass DataVariants")
        self.data = data
        self.artifacts = Path(artifacts)
        self.should_stop = should_stop
        self.param_index = {p.name: p for p in space.params}

    def _skip(self, trial: optuna.Trial, reason: str, avoid: bool = False) -> None:
        """End a trial without training (pruned: the sampler ranks it among the worst)."""
        trial.set_user_attr("reason", reason)
        trial.set_user_attr(SKIPPED_ATTR, True)  # not trained: does not use up the budget
        if avoid:
            g.add_avoid(trial.study, g.AvoidEntry(trial.number, dict(trial.params), reason))
        raise optuna.TrialPruned(reason)

    def __call__(self, trial: optuna.Trial) -> float:
        t0 = time.perf_counter()
        params = self.space.suggest(trial)
        trial.set_user_attr("worker", worker_id())
        gate = self.space.gate
        study = trial.study
        hit = g.find_match(trial.params, g.avoid_entries(study.user_attrs), self.param_index, gate.radius)
        if hit is not None:
            trial.set_user_attr("avoided_by", hit.trial)
            self._skip(trial, f"avoided: inside the neighbourhood of trial {hit.trial} ({hit.reason})")
        seed = trial_seed(self.space.study.seed, trial.number)
        torch.manual_seed(seed)
        fam, hp = params["model"]["family"], params["model"]["hparams"]
        d = self.data.get(params["data"]) if isinstance(self.data, DataVariants) else self.data
        model = build_model(fam, in_channels=d.n_leads, n_classes=len(d.classes), **hp)
        n_params = count_parameters(model)
        trial.set_user_attr("n_params", n_params)
        # Size is known before training: measured for every trial (the dashboard plots
        # metric against size) and a size limit rejects a model without training it.
        onnx_kb = onnx_size_kb(model, d.n_leads, d.n_samples)
        trial.set_user_attr("onnx_kb", round(onnx_kb, 2))
        if gate.max_onnx_kb is not None:
            if onnx_kb > gate.max_onnx_kb:
                self._skip(trial, f"size limit: ONNX {onnx_kb:.1f} KB > max_onnx_kb {gate.max_onnx_kb:g}", avoid=True)
        st = self.space.study
        for key, attr, unit in (("max_onnx_kb", onnx_kb, "KB ONNX"), ("max_params", n_params, "parameters")):
            limit = st.constraints.get(key)
            if limit is None:
                continue
            # Optuna's constraint handling: <= 0 is feasible; samplers rank violators last.
            trial.set_constraint(key, float(attr) - limit)
            if attr > limit:  # known before training: the violator is not trained
                self._skip(trial, f"constraint: {attr:.1f} {unit} > {key} {limit:g}")
        cfg = TrainConfig.from_params(params["train"], seed=seed, metric=st.metric, direction=st.direction,
                                      task=d.task)
        history: list[dict[str, float]] = []

        def report(epoch: int, value: float, m: dict[str, float]) -> None:
            history.append({k: float(m[k]) for k in ("train_loss", "val_loss", st.metric) if k in m})
            if not st.multi:
                trial.report(value, epoch)
            stopped = study.user_attrs.get(g.STOP_ATTR)
            if stopped:
                trial.set_user_attr("history", history)
                trial.set_user_attr("reason", f"study stopped ({stopped})")
                raise optuna.TrialPruned(f"study stopped: {stopped}")
            if trial.should_prune() if not st.multi else _median_rule(study, st, epoch, value):
                trial.set_user_attr("history", history)
                trial.set_user_attr("reason", f"pruned by {st.pruner['type']} at epoch {epoch}")
                raise optuna.TrialPruned(f"pruned at epoch {epoch} ({st.metric}={value:.4f})")

        res = fit(model, d.x_train, d.y_train, d.x_val, d.y_val, cfg, report=report,
                  should_stop=self.should_stop, classes=d.classes)
        ck_path = checkpoint_dir(self.artifacts, st.name, trial.number) / "model.pt"
        _atomic_save(
            {
                "family": fam, "hparams": hp, "in_channels": d.n_leads, "n_classes": len(d.classes),
                "n_samples": d.n_samples, "fs": d.fs, "classes": list(d.classes), "task": d.task,
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
        if gate.enabled:
            model.load_state_dict(res.state_dict)
            self._gate(trial, model, metrics, params, ck_path, d)
        sizes = {"onnx_kb": onnx_kb, "n_params": float(n_params)}
        values = [sizes[m] if m in sizes else metrics[m] for m, _ in st.all_objectives]
        return values[0] if len(values) == 1 else values  # type: ignore[return-value]

    def _gate(self, trial: optuna.Trial, model: torch.nn.Module, metrics: dict[str, float],
              params: dict[str, Any], ck_path: Path, d: PreparedData) -> None:
        gate, study = self.space.gate, trial.study
        lo, hi = g.lo_hi(metrics, gate.metrics)
        trial.set_user_attr("gate", {"lo": lo, "hi": hi})
        gate_metrics = {k: metrics[k] for k in gate.metrics}
        if gate.avoid_below is not None and not lo >= gate.avoid_below:
            reason = f"lowest metric {lo:.4f} < avoid_below {gate.avoid_below:g}"
            g.add_avoid(study, g.AvoidEntry(trial.number, dict(trial.params), reason, gate_metrics))
            trial.set_user_attr("gate_result", "avoided")
        elif gate.pass_ is not None and lo >= gate.pass_:
            better = [r for r in g.gate_records(study.user_attrs) if (r["lo"], r["hi"]) >= (lo, hi)]
            if len(better) < gate.keep:
                self._file(trial, model, metrics, params, ck_path, lo, hi, d)
            else:
                trial.set_user_attr("gate_result", f"passed, not among the best {gate.keep}")
        finished = [(t.number, t.user_attrs["gate"]["lo"])
                    for t in sorted(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
                                    key=lambda t: t.datetime_complete)
                    if "gate" in t.user_attrs]
        reason = g.stop_reason(gate, [*finished, (trial.number, lo)])
        if reason and not study.user_attrs.get(g.STOP_ATTR):
            study.set_user_attr(g.STOP_ATTR, reason)

    def _file(self, trial: optuna.Trial, model: torch.nn.Module, metrics: dict[str, float],
              params: dict[str, Any], ck_path: Path, lo: float, hi: float, d: PreparedData) -> None:
        import shutil

        gate, study = self.space.gate, trial.study
        gate_dir = self.artifacts / self.space.study.name / "gate"
        writers = {
            "model.onnx": lambda p: p.write_bytes(export_onnx(model, d.n_leads, d.n_samples)),
            "model.pt": lambda p: shutil.copyfile(ck_path, p),
            "evaluation_metrics.txt": g.write_text(g.evaluation_metrics_txt(metrics, gate.metrics, trial.number)),
            "metrics.json": g.write_text(json.dumps({"trial": trial.number, "split": "validation",
                                                     **{k: metrics[k] for k in metrics}}, indent=2)),
            "params.yaml": g.write_yaml({"trial": trial.number, "study": self.space.study.name,
                                         "params": dict(trial.params), "config": params}),
        }
        folder = g.file_folder(gate_dir, g.folder_name(hi, lo), trial.number, writers)
        # Other machines materialise the folder from the artifact store (atml gate sync).
        store = g.artifact_store(self.artifact_store or self.artifacts / "artifact-store")
        ids = {f: optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(folder / f),
                                                   study_or_trial=trial) for f in sorted(writers)}
        g.record_folder(study, {"trial": trial.number, "folder": folder.name, "lo": lo, "hi": hi,
                                "metrics": {k: metrics[k] for k in gate.metrics}, "files": sorted(writers),
                                "artifacts": ids})
        trial.set_user_attr("gate_result", f"filed {folder.name}")
        trial.set_user_attr("gate_folder", folder.name)
        g.enforce_keep(study, gate_dir, gate.keep)


def _median_rule(study: optuna.Study, st: Any, epoch: int, value: float) -> bool:
    """Pruning for multi-objective studies, where Optuna's pruners do not apply.

    The median rule on the primary (validation) objective: prune when this epoch's value
    is worse than the median of completed trials at the same epoch (their per-epoch
    history is stored on each trial). Uses the pruner's n_startup_trials and
    n_warmup_steps; ``pruner: none`` turns it off.
    """
    cfg = st.pruner
    if cfg.get("type") == "none" or epoch < int(cfg.get("n_warmup_steps", 2)):
        return False
    seen = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        hist = t.user_attrs.get("history") or []
        if len(hist) > epoch and st.metric in hist[epoch]:
            seen.append(hist[epoch][st.metric])
    if len(seen) < int(cfg.get("n_startup_trials", 4)):
        return False
    median = float(np.median(seen))
    return value < median if st.direction == "maximize" else value > median

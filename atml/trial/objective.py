"""One trial, in order: params -> screen -> data -> model -> size -> train (or cross-validate) -> checkpoint
-> record -> gate -> value.

:class:`Objective` only orchestrates; each step is a function of its own module:
:mod:`.screen` (avoid list, size limit, constraints), :mod:`.pruning` (per-epoch report and
pruning), :mod:`.checkpoint` (the checkpoint file), :mod:`.attributes` (what the trial
records on itself) and :mod:`.filing` (the gate).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import torch

from atml import records
from atml.config import SearchSpace, StudySettings, trial_seed
from atml.metrics import base_metric
from atml.models import apply_shape_plan, build_model
from atml.models.prune import compressed_shape
from atml.storage import worker_id
from atml.train import TrainResult, fit, predict_proba
from atml.trial import attributes, comparator, deployed, distill, screen, warmstart
from atml.trial.checkpoint import CHECKPOINT_FILE, checkpoint_dir, save_checkpoint, save_oof
from atml.trial.cv import cross_validate, pooled_metrics
from atml.trial.data import DataVariants, PreparedData
from atml.trial.filing import Trained, apply_gate
from atml.trial.pruning import epoch_reporter

__all__ = ["Objective", "objective_values"]


def objective_values(st: StudySettings, metrics: dict[str, float], onnx_kb: float,
                     n_params: int, deployed_sizes: dict[str, float] | None = None) -> float | list[float]:
    """The study's objective value(s) of a trained trial: metrics (``int8_<metric>`` among them
    when measured), or a size for a size objective (``deployed_sizes``: int8_kb, latency_ms)."""
    sizes = {"onnx_kb": onnx_kb, "n_params": float(n_params), **(deployed_sizes or {})}
    values = [sizes[m] if m in sizes else metrics[m] for m, _ in st.all_objectives]
    return values[0] if len(values) == 1 else values


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

    def __call__(self, trial: optuna.Trial) -> float:
        t0 = time.perf_counter()
        st = self.space.study
        config = self.space.suggest(trial)
        params = config.as_dict()  # the plain form the checkpoint and the gate folder store
        if records.WORKER not in trial.user_attrs:  # a worker recorded itself (and its device) already
            trial.set_user_attr(records.WORKER, worker_id())
        screen.check_avoid(trial, self.space, self.param_index)
        seed = trial_seed(st.seed, trial.number)
        torch.manual_seed(seed)
        fam, hp = config.family, params["model"]["hparams"]
        d = self.data.get(config.data) if isinstance(self.data, DataVariants) else self.data
        ws = warmstart.prepare(config, d)  # model.init: the source's architecture and weights
        if ws is not None:
            hp = params["model"]["hparams"] = ws.hparams
        model = build_model(fam, in_channels=d.n_leads, n_classes=len(d.classes), **hp) if ws is None else ws.build()
        model = comparator.wrap(model, config.train.mode, d)  # train.mode: comparator
        warmstart.record(trial, ws)
        # train.prune: the trial is sized as it ends, pruned (the shapes do not depend on the weights)
        n_params, onnx_kb = screen.check_size(trial, self.space, compressed_shape(model, config.train, d), d)
        cfg = dataclasses.replace(config.train, seed=seed, metric=base_metric(st.metric), direction=st.direction,
                                  task=d.task, lr_scale=ws.lr_scale if ws is not None else 1.0)
        teacher = distill.prepare(config, d, per_batch=self.space.validation.cv)  # train.distill
        distill.record(trial, teacher)
        epochs: list[dict[str, float]] = []
        ck_path = checkpoint_dir(self.artifacts, st.name, trial.number) / CHECKPOINT_FILE
        folds = None
        if self.space.validation.cv:
            cv = cross_validate(trial, self.space, d, cfg, comparator.builder(
                                ws.build if ws is not None else lambda: build_model(
                                    fam, in_channels=d.n_leads, n_classes=len(d.classes), **hp), cfg.mode, d),
                                epochs, self.should_stop, teacher)
            metrics = cv.metrics
            res = TrainResult(best_epoch=cv.best_epoch, epochs_run=cv.epochs_run, metrics=metrics,
                              state_dict=cv.state_dicts[0],
                              epoch_seconds=sum(f.seconds for f in cv.folds) / max(1, cv.epochs_run))
            folds = [{"state_dict": s, "held_subjects": list(f.held_subjects)} for s, f in zip(cv.state_dicts,
                                                                                                cv.folds, strict=True)]
            save_oof(ck_path.parent, cv.oof)
            attributes.record_subjects(trial, cv.subjects)
            shapes, float_states, compression = cv.shapes, cv.float_states, cv.compression
        else:
            res = fit(model, d.x_train, d.y_train, d.x_val, d.y_val, cfg, report=epoch_reporter(trial, st, epochs),
                      should_stop=self.should_stop, classes=d.classes, distill=teacher, subjects=d.subject_train)
            metrics = {k: float(v) for k, v in res.metrics.items() if k not in ("epoch", "lr")}
            if d.task == "binary" and len(d.subject_val):  # the spread over the validation subjects
                model.load_state_dict(res.state_dict)
                proba, _ = predict_proba(model, d.x_val, task=d.task, precision=cfg.precision)
                spread, per = pooled_metrics(d.task, d.classes, d.subject_val, d.y_val.cpu().numpy(), proba,
                                             self.space.validation.confidence, seed=st.seed)
                metrics.update({k: v for k, v in spread.items() if k not in metrics})
                attributes.record_subjects(trial, per)
            shapes, compression = res.shapes, res.compression
            float_states = [res.float_state] if res.float_state is not None else None
        apply_shape_plan(model, shapes)  # a pruned trial: the built model takes the trained shapes
        if compression:
            trial.set_user_attr(attributes.COMPRESSION, compression)
        dep = deployed.measure(trial, self.space, d, model, [f["state_dict"] for f in folds] if folds else
                               [res.state_dict], float_states)  # the int8 export's figures, when named
        metrics.update(dep.metrics)
        screen.record_metric_constraints(trial, self.space, metrics)  # min_subject_f1_min and the like
        save_checkpoint(ck_path, family=fam, hparams=hp, data=d, state_dict=res.state_dict, params=params,
                        trial=trial.number, study=st.name, metrics=res.metrics if folds is None else metrics,
                        folds=folds, init=ws.record if ws is not None else None, shapes=shapes,
                        distill=teacher.record if teacher is not None else None, head=comparator.head(cfg.mode))
        attributes.record_result(trial, res, metrics, epochs, str(ck_path.relative_to(self.artifacts / st.name)),
                                 time.perf_counter() - t0)
        if self.space.gate.enabled:  # on the CPU, where the gate exports ONNX
            model.cpu().load_state_dict(res.state_dict)
            apply_gate(trial, self.space, Trained(model, metrics, params, ck_path, d), self.artifacts,
                       self.artifact_store)
        return objective_values(st, metrics, onnx_kb, n_params, dep.sizes)  # type: ignore[return-value]

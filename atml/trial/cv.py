"""Subject-grouped k-fold cross-validation of one configuration: the trial's honest score.

The non-test subjects are dealt into folds (:func:`atml.data.folds.subject_folds`, seeded
by ``validation.seed``: every trial of a study sees the same folds, so two trials' scores
are paired). Each fold is held out in turn while a fresh model trains on the others;
early stopping and the epoch choice use an inner subject split of the *training* folds
(``validation.inner_fraction``; 0: a fixed ``train.epochs``), so a held-out fold steers
nothing. The trial's value is the metric of the pooled out-of-fold predictions over every
non-test subject; after each fold the pooled figure so far is reported to the pruner, so a
poor configuration can stop after its first fold.

Fold models of one trial train in sequence in one worker: the pruner needs each fold's
report before the next fold starts, and an Optuna trial belongs to one worker.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import torch

from atml import records
from atml.config import SearchSpace, TrainConfig, ValidationSettings, trial_seed
from atml.data import subject_split
from atml.data.folds import Fold, subject_folds
from atml.metrics import subject_figures, task_metrics
from atml.train import TrainResult, fit, predict_proba
from atml.trial import attributes
from atml.trial.data import PreparedData
from atml.trial.distill import Distiller

__all__ = ["FoldOutcome", "CVResult", "cross_validate", "pooled_metrics", "folds_of"]


@dataclass(frozen=True)
class FoldOutcome:
    """One trained fold: who it held out, who steered it, how it scored."""

    index: int
    repeat: int
    held_subjects: tuple[str, ...]
    inner_subjects: tuple[str, ...]  # training-fold subjects that chose the epoch (empty: fixed epochs)
    metrics: dict[str, float]  # of its held-out fold alone
    best_epoch: int
    epochs_run: int
    seconds: float

    def record(self) -> dict[str, Any]:
        return {"fold": self.index, "repeat": self.repeat, "held_subjects": list(self.held_subjects),
                "inner_subjects": list(self.inner_subjects), "best_epoch": self.best_epoch,
                "epochs_run": self.epochs_run, "seconds": round(self.seconds, 2),
                **{k: float(v) for k, v in self.metrics.items()}}


@dataclass
class CVResult:
    metrics: dict[str, float]  # pooled out-of-fold (mean over repeats) with the spread over subjects
    folds: list[FoldOutcome]
    subjects: dict[str, dict[str, Any]]  # per subject, from the first repeat's predictions
    state_dicts: list[dict[str, torch.Tensor]]  # one model per fold, in fold order
    shapes: dict[str, dict[str, int]] | None = None  # train.prune: the fold models' layer shapes (all alike)
    float_states: list[dict[str, torch.Tensor]] | None = None  # train.qat: each fold's weights before QAT
    compression: list[dict[str, Any]] = field(default_factory=list)  # fold 0's phases after training
    oof: dict[str, np.ndarray] = field(default_factory=dict)  # subject, y, p (per repeat), fold

    @property
    def best_epoch(self) -> int:
        return int(np.median([f.best_epoch for f in self.folds]))

    @property
    def epochs_run(self) -> int:
        return int(sum(f.epochs_run for f in self.folds))


def folds_of(d: PreparedData, v: ValidationSettings) -> list[Fold]:
    """The folds of ``d``'s non-test subjects under ``v`` (DataError when there are too few subjects)."""
    _, y, subject = d.pool()
    return subject_folds(subject, y.cpu().numpy(), v.folds, seed=v.seed, repeats=v.repeats)


def pooled_metrics(task: str, classes: tuple[str, ...], subject: np.ndarray, y: np.ndarray, proba: np.ndarray,
                   confidence: float, seed: int = 0) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """Metrics of pooled predictions ``proba`` (N, C) with, for a binary task, the spread over subjects."""
    m = {k: float(v) for k, v in task_metrics(task, y, proba, classes).items()}
    per: dict[str, dict[str, Any]] = {}
    if task == "binary" and len(subject):
        spread, per = subject_figures(subject, y, proba[:, 1], confidence=confidence, seed=seed)
        m.update(spread)
    return m, per


def _inner(fold: Fold, subject: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into ``fold.train``) of the inner training and early-stopping segments."""
    split = subject_split(subject[fold.train], y[fold.train], val_fraction=fraction, test_fraction=0.0, seed=seed)
    return split.train, split.val


def _fold_reporter(trial: optuna.Trial, st: Any, fold: int,
                   history: list[dict[str, float]]) -> Callable[[int, float, dict[str, Any]], None]:
    """Per epoch inside a fold: keep the history and honour a study stop (no pruning: folds are the steps)."""
    def report(epoch: int, value: float, m: dict[str, Any]) -> None:
        history.append({"fold": fold, **{k: float(m[k]) for k in ("train_loss", "val_loss", st.metric) if k in m}})
        stopped = records.read_stop_reason(trial.study)
        if stopped:
            attributes.record_history(trial, history)
            records.set_reason(trial, f"study stopped ({stopped})")
            raise optuna.TrialPruned(f"study stopped: {stopped}")

    return report


def cross_validate(trial: optuna.Trial, space: SearchSpace, d: PreparedData, cfg: TrainConfig,
                   build: Callable[[], torch.nn.Module], history: list[dict[str, float]],
                   should_stop: Callable[[], bool] | None = None, distill: Distiller | None = None,
                   ) -> CVResult:
    """Train and score one model per fold of ``d``'s non-test subjects; see the module docs.

    ``cfg`` is the trial's training configuration (seed included); ``build()`` returns a
    fresh model. Raises ``optuna.TrialPruned`` when the pruner stops the trial after a fold.
    Folds train where ``d``'s tensors are; the fold models come back on the CPU.
    """
    st, v = space.study, space.validation
    x, y_t, subject = d.pool()
    y = y_t.cpu().numpy()

    def rows(idx: np.ndarray) -> torch.Tensor:  # fold positions as an index on the data's device
        return torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64)).to(x.device)

    folds = folds_of(d, v)
    fraction = d.val_fraction if v.inner_fraction is None else v.inner_fraction
    n_classes = len(d.classes)
    proba = np.full((v.repeats, len(y), n_classes if d.task != "binary" else 2), np.nan, dtype=np.float64)
    fold_of = np.full(len(y), -1, dtype=np.int64)
    outcomes: list[FoldOutcome] = []
    states: list[dict[str, torch.Tensor]] = []
    float_states: list[dict[str, torch.Tensor] | None] = []
    shapes: dict[str, dict[str, int]] | None = None
    compression: list[dict[str, Any]] = []
    for fold in folds:
        t0 = time.perf_counter()
        seed = cfg.seed if fold.index == 0 else trial_seed(cfg.seed, fold.index)
        torch.manual_seed(seed)
        model = build()
        fcfg = dataclasses.replace(cfg, seed=seed)
        if fraction > 0:
            tr_pos, in_pos = _inner(fold, subject, y, fraction, seed)
            tr, inner = fold.train[tr_pos], fold.train[in_pos]
        else:  # a fixed number of epochs: the last is kept, nothing is chosen
            tr, inner = fold.train, fold.train[:: max(1, len(fold.train) // 512)]
            fcfg = dataclasses.replace(fcfg, keep="last", patience=cfg.epochs + 1, min_epochs=cfg.epochs)
        tr_i, in_i = rows(tr), rows(inner)
        res: TrainResult = fit(model, x[tr_i], y_t[tr_i], x[in_i], y_t[in_i], fcfg,
                               report=_fold_reporter(trial, st, fold.index, history),
                               should_stop=should_stop, classes=d.classes, subjects=subject[tr],
                               distill=None if distill is None else distill.for_fold(fold.held_subjects))
        model.load_state_dict(res.state_dict)
        p, _ = predict_proba(model, x[rows(fold.held)], task=d.task, precision=fcfg.precision)
        proba[fold.repeat, fold.held] = p
        if fold.repeat == 0:
            fold_of[fold.held] = fold.index
        held_m, _ = pooled_metrics(d.task, d.classes, subject[fold.held], y[fold.held], p, v.confidence)
        outcomes.append(FoldOutcome(
            index=fold.index, repeat=fold.repeat, held_subjects=fold.held_subjects,
            inner_subjects=tuple(sorted(set(subject[inner]))) if fraction > 0 else (),
            metrics=held_m, best_epoch=res.best_epoch, epochs_run=res.epochs_run,
            seconds=time.perf_counter() - t0))
        states.append(res.state_dict)
        float_states.append(res.float_state)
        shapes, compression = shapes or res.shapes, compression or res.compression
        # The pooled figure so far: every segment held out until now (this repeat's and the earlier ones').
        seen = ~np.isnan(proba[..., 0])
        so_far = [pooled_metrics(d.task, d.classes, subject[s], y[s], proba[r][s], v.confidence)[0]
                  for r, s in enumerate(seen) if s.any()]
        value = float(np.mean([m[st.metric] for m in so_far]))
        trial.set_user_attr(attributes.FOLDS, [o.record() for o in outcomes])
        if not st.multi:
            trial.report(value, fold.index)
            if fold.index + 1 < len(folds) and trial.should_prune():
                attributes.record_history(trial, history)
                records.set_reason(trial, f"pruned by {st.pruner['type']} after fold {fold.index + 1} "
                                          f"of {len(folds)} ({st.metric} {value:.4f} so far)")
                raise optuna.TrialPruned(f"pruned after fold {fold.index + 1} ({st.metric}={value:.4f})")
    per_repeat = [pooled_metrics(d.task, d.classes, subject, y, proba[r], v.confidence, seed=v.seed)
                  for r in range(v.repeats)]
    keys = per_repeat[0][0].keys()
    metrics = {k: float(np.nanmean([m[k] for m, _ in per_repeat])) if per_repeat else float("nan") for k in keys}
    if v.repeats > 1:
        metrics[f"{st.metric}_repeat_std"] = float(np.std([m[st.metric] for m, _ in per_repeat]))
    fold_values = [o.metrics.get(st.metric, float("nan")) for o in outcomes]
    metrics[f"{st.metric}_fold_std"] = float(np.nanstd(fold_values))
    oof = {"subject": subject, "y": y, "fold": fold_of,
           "p": proba[..., 1] if d.task == "binary" else proba}
    return CVResult(metrics=metrics, folds=outcomes, subjects=per_repeat[0][1], state_dicts=states, oof=oof,
                    shapes=shapes, compression=compression,
                    float_states=float_states if all(s is not None for s in float_states) else None)

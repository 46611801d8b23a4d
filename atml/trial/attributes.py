"""What a trial records on itself (Optuna trial user attributes), written here.

The keys shared with every reader of a study (why a trial ended, whether it was skipped,
which worker ran it) live in :mod:`atml.records`; these are the trial's own measurements:
its size, its training result and per-epoch history, its checkpoint and the gate's verdict.
"""

from __future__ import annotations

from typing import Any

from atml import records
from atml.train import TrainResult

__all__ = [
    "N_PARAMS", "ONNX_KB", "MACS", "INT8_KB", "LATENCY_MS", "DEPLOYED", "AVOIDED_BY", "METRICS", "BEST_EPOCH", "EPOCHS_RUN", "STOPPED_EARLY", "HISTORY",
    "CHECKPOINT", "EPOCH_SECONDS", "TRIAL_SECONDS", "GATE", "GATE_RESULT", "GATE_FOLDER",
    "SUBJECTS", "FOLDS", "INIT", "DISTILL", "COMPRESSION", "record_history", "record_result", "record_subjects", "history",
]

N_PARAMS = "n_params"  # trainable parameters of the built model
ONNX_KB = "onnx_kb"  # size of its ONNX export, measured before training
MACS = "macs"  # multiply-accumulates of one forward pass on one segment, before training
# Measured after training on the int8 export, only when the space names one (atml.trial.deployed);
# the int8 model's validation metrics join METRICS as int8_<metric>.
INT8_KB = "int8_kb"  # size of the int8 network, as `atml export --int8 --no-preprocessing` writes it
LATENCY_MS = "latency_ms"  # median ms per segment of the int8 model: onnxruntime, batch 1, one thread
DEPLOYED = "deployed"  # how those were measured: model(s), calibration, latency runs, seconds
AVOIDED_BY = "avoided_by"  # number of the avoid-list trial whose neighbourhood it fell in
METRICS = "metrics"  # validation metrics of the kept epoch
BEST_EPOCH = "best_epoch"
EPOCHS_RUN = "epochs_run"
STOPPED_EARLY = "stopped_early"
HISTORY = "history"  # per epoch: train_loss, val_loss and the study metric (the multi-objective median rule reads it)
CHECKPOINT = "checkpoint"  # path of model.pt relative to <artifacts>/<study>
DISTILL = "distill"  # train.distill: teacher, alpha, temperature, how its soft targets were computed
COMPRESSION = "compression"  # train.prune / train.qat: what each phase after training did (channels, epochs)
INIT = "init"  # what a warm start did: source, tensors copied/new, head, lead mapping, rate, frozen blocks
EPOCH_SECONDS = "epoch_seconds"
TRIAL_SECONDS = "trial_seconds"
GATE = "gate"  # {"lo": lowest, "hi": highest gate metric}
GATE_RESULT = "gate_result"  # what the gate did with it, one line
GATE_FOLDER = "gate_folder"  # name of the folder it was filed in
SUBJECTS = "subjects"  # per validation (or out-of-fold) subject: segments, positives, f1, accuracy, counts
FOLDS = "folds"  # a cross-validated trial: one record per fold (held-out subjects, metrics, epochs)


def record_history(trial: Any, epochs: list[dict[str, float]]) -> None:
    trial.set_user_attr(HISTORY, epochs)


def record_subjects(trial: Any, table: dict[str, dict[str, Any]]) -> None:
    """The per-subject figures of the trial's validation (or out-of-fold) predictions."""
    trial.set_user_attr(SUBJECTS, table)


def history(trial: Any) -> list[dict[str, float]]:
    """The per-epoch history stored on ``trial`` (empty when none)."""
    return trial.user_attrs.get(HISTORY) or []


def record_result(trial: Any, res: TrainResult, metrics: dict[str, float], epochs: list[dict[str, float]],
                  checkpoint: str, trial_seconds: float) -> None:
    """What a trained trial keeps: its metrics, epochs, history, checkpoint and timings."""
    records.set_attrs(trial, {
        METRICS: metrics, BEST_EPOCH: res.best_epoch, EPOCHS_RUN: res.epochs_run, STOPPED_EARLY: res.stopped_early,
        HISTORY: epochs, CHECKPOINT: checkpoint, EPOCH_SECONDS: round(res.epoch_seconds, 3),
        TRIAL_SECONDS: round(trial_seconds, 3)})

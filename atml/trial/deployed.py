"""A trained trial scored as it is deployed: its int8 ONNX export's size, metrics and latency.

When a space names a deployed figure (an objective, a constraint or a gate metric:
``int8_kb``, ``latency_ms``, ``int8_<metric>``), the trained model is exported
(:func:`~atml.onnx.convert.export_onnx`), quantised to int8
(:func:`~atml.onnx.convert.quantize_int8`, calibrated on training segments) and the int8
model is run with onnxruntime:

- ``int8_kb``: the int8 network's size. Calibrated on the segments ``atml export --int8``
  picks (up to 256, evenly spread over the training split), so for a holdout trial it is
  the size of the int8 file ``atml export --int8 --no-preprocessing`` writes, byte for
  byte. Export's default raw graph puts the trial's preprocessing in front of it, in
  float: a few hundred bytes more, the same for every trial with the same preprocessing.
- ``int8_<metric>``: the int8 model's validation metrics, computed by the same function as
  the float ones (with the spread over subjects for a binary task).
- ``latency_ms``: the int8 model's median time per segment, batch 1, one intra-op and one
  inter-op thread, over 50 runs after 10 warm-up runs on real validation segments (the
  network alone, fed preprocessed segments). It is wall-clock time on the worker's
  machine: compare trials measured on like machines under like load.

A cross-validated trial (``validation.scheme: subject_kfold``) scores like its float
figures: each fold model is quantised (calibrated on its own training folds) and its int8
version predicts its held-out fold; ``int8_<metric>`` are the metrics of the pooled
out-of-fold int8 predictions. ``int8_kb`` and ``latency_ms`` are fold 0's int8 model, the
model ``atml export`` ships from such a trial (its calibration differs, so the file may
differ by a few bytes: quantisation zero points are stored as varints).

A space that names none of these pays nothing: :func:`measure` returns at once.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import torch

from atml import records
from atml.config import SearchSpace
from atml.config.study_rules import (
    DEPLOYED_FIGURES,
    INT8_METRICS,
    POST_TRAINING_CONSTRAINTS,
    constraint_figure,
)
from atml.onnx.convert import export_onnx, quantize_int8
from atml.onnx.runtime import measure_latency, ort_session, run_onnx, softmax
from atml.trial import attributes
from atml.trial.cv import folds_of, pooled_metrics
from atml.trial.data import PreparedData

__all__ = ["CALIBRATION_SEGMENTS", "LATENCY_RUNS", "LATENCY_WARMUP", "Deployed", "wanted", "measure",
           "calibration_positions"]

CALIBRATION_SEGMENTS = 256  # atml export's default: the same segments give the same int8 file
LATENCY_RUNS = 50
LATENCY_WARMUP = 10
_LATENCY_SEGMENTS = 64


@dataclass(frozen=True)
class Deployed:
    """What :func:`measure` found; both empty when the space names no deployed figure."""

    metrics: dict[str, float] = field(default_factory=dict)  # int8_<metric>: joins the trial's metrics
    sizes: dict[str, float] = field(default_factory=dict)  # int8_kb, latency_ms: objectives beside onnx_kb


def wanted(space: SearchSpace) -> set[str]:
    """The deployed figures ``space`` names as objectives, constraints or (enabled) gate metrics."""
    names = {m for m, _ in space.study.all_objectives}
    names |= {constraint_figure(k) for k in space.study.constraints if k in POST_TRAINING_CONSTRAINTS}
    if space.gate.enabled:
        names |= set(space.gate.metrics)
    return names & set(DEPLOYED_FIGURES)


def calibration_positions(n: int, k: int = CALIBRATION_SEGMENTS) -> np.ndarray:
    """Up to ``k`` evenly spaced positions in range(n), as ``atml export`` picks calibration segments."""
    if not n:
        return np.empty(0, np.int64)
    return np.unique(np.linspace(0, n - 1, num=min(n, k)).round().astype(np.int64))


def _int8(model: torch.nn.Module, state: dict[str, torch.Tensor], d: PreparedData,
          calibration: np.ndarray) -> bytes:
    """The int8 ONNX bytes of ``model`` with weights ``state``, calibrated on ``calibration``."""
    m = copy.deepcopy(model).cpu()  # the export and onnxruntime run on the CPU, wherever it trained
    m.load_state_dict(state)
    m.eval()
    return quantize_int8(export_onnx(m, d.n_leads, d.n_samples), np.ascontiguousarray(calibration, np.float32))


def _proba(blob: bytes, x: np.ndarray, task: str) -> np.ndarray:
    """Class probabilities of an ONNX model on ``x``, as training computes them (sigmoid for multilabel)."""
    session = ort_session(blob, threads=max(1, torch.get_num_threads()), what="int8 model")
    z = run_onnx(session, x).astype(np.float64)
    return 1 / (1 + np.exp(-z)) if task == "multilabel" else softmax(z)


def _named(m: dict[str, float]) -> dict[str, float]:
    """``int8_<metric>`` of the metrics that have a deployed name."""
    return {f"int8_{k}": float(v) for k, v in m.items() if f"int8_{k}" in INT8_METRICS}


def _holdout(space: SearchSpace, d: PreparedData, model: torch.nn.Module,
             state: dict[str, torch.Tensor]) -> tuple[dict[str, float], bytes, np.ndarray, dict[str, Any]]:
    x_train = d.x_train.cpu().numpy()
    cal = calibration_positions(len(x_train))
    blob = _int8(model, state, d, x_train[cal])
    x_val = d.x_val.cpu().numpy()
    m, _ = pooled_metrics(d.task, d.classes, d.subject_val, d.y_val.cpu().numpy(), _proba(blob, x_val, d.task),
                          space.validation.confidence, seed=space.study.seed)
    return _named(m), blob, x_val, {"scored_on": "validation split", "calibration_segments": len(cal)}


def _cross_validated(space: SearchSpace, d: PreparedData, model: torch.nn.Module,
                     states: list[dict[str, torch.Tensor]]) -> tuple[dict[str, float], bytes, np.ndarray,
                                                                    dict[str, Any]]:
    v = space.validation
    x_t, y_t, subject = d.pool()
    x, y = x_t.cpu().numpy(), y_t.cpu().numpy()
    folds = folds_of(d, v)
    if len(folds) != len(states):
        raise ValueError(f"{len(states)} fold models for {len(folds)} folds")
    width = len(d.classes) if d.task != "binary" else 2
    proba = np.full((v.repeats, len(y), width), np.nan, dtype=np.float64)
    first: bytes = b""
    for fold, state in zip(folds, states, strict=True):
        train = np.sort(fold.train)
        blob = _int8(model, state, d, x[train[calibration_positions(len(train))]])
        proba[fold.repeat, fold.held] = _proba(blob, x[fold.held], d.task)
        first = first or blob
    per_repeat = [pooled_metrics(d.task, d.classes, subject, y, proba[r], v.confidence, seed=v.seed)[0]
                  for r in range(v.repeats)]
    m = {k: float(np.nanmean([p[k] for p in per_repeat])) for k in per_repeat[0]}
    info = {"scored_on": f"pooled out-of-fold predictions of {len(folds)} int8 fold models",
            "size_and_latency_of": "fold 0's int8 model"}
    return _named(m), first, x[folds[0].held], info


def measure(trial: optuna.Trial, space: SearchSpace, d: PreparedData, model: torch.nn.Module,
            states: list[dict[str, torch.Tensor]],
            float_states: list[dict[str, torch.Tensor]] | None = None) -> Deployed:
    """Score the trained trial as deployed when ``space`` needs it (see the module docs).

    ``model`` is the trial's built model (its weights are not touched) and ``states`` the
    trained weights: one state dict, or one per fold of a cross-validated trial. Records
    ``int8_kb``, ``latency_ms`` and how they were measured on the trial, and the
    constraints known only now (``max_int8_kb``, ``max_latency_ms``, ``min_int8_<metric>``)
    as Optuna constraint values (feasible when <= 0): the trial completes either way and
    samplers rank a violator behind the feasible ones.

    ``float_states`` (``train.qat``): the weights before quantisation-aware fine-tuning. Their
    post-training int8 metrics, scored the same way, are recorded beside the QAT model's
    (``deployed.post_training_int8``): QAT against post-training quantisation on the same trial.
    """
    if not wanted(space):
        return Deployed()
    t0 = time.perf_counter()
    if space.validation.cv:
        metrics, blob, sample, info = _cross_validated(space, d, model, states)
    else:
        metrics, blob, sample, info = _holdout(space, d, model, states[0])
    if float_states:
        ptq = (_cross_validated(space, d, model, float_states) if space.validation.cv else
               _holdout(space, d, model, float_states[0]))[0]
        info["post_training_int8"] = {k.removeprefix("int8_"): round(v, 6) for k, v in ptq.items()}
    lat = measure_latency(blob, sample[:_LATENCY_SEGMENTS], batch=1, runs=LATENCY_RUNS, warmup=LATENCY_WARMUP)
    sizes = {"int8_kb": len(blob) / 1024.0, "latency_ms": round(float(lat["p50_ms"]), 4)}
    records.set_attrs(trial, {attributes.INT8_KB: sizes["int8_kb"], attributes.LATENCY_MS: sizes["latency_ms"],
                              attributes.DEPLOYED: {
        **info, "latency": {"batch": 1, "threads": 1, "runs": LATENCY_RUNS, "warmup": LATENCY_WARMUP,
                            "p50_ms": sizes["latency_ms"], "p95_ms": round(float(lat["p95_ms"]), 4)},
        "seconds": round(time.perf_counter() - t0, 3)}})
    # A named figure the task does not define (the spread over subjects outside binary tasks) is NaN.
    metrics.update({k: math.nan for k in wanted(space) if k in INT8_METRICS and k not in metrics})
    figures = {**metrics, **sizes}
    for key, limit in space.study.constraints.items():
        if key in POST_TRAINING_CONSTRAINTS:
            value = figures.get(constraint_figure(key), math.nan)
            c = value - limit if key.startswith("max_") else limit - value
            trial.set_constraint(key, 1.0 if math.isnan(c) else c)  # a figure that is undefined is no pass
    return Deployed(metrics=metrics, sizes=sizes)

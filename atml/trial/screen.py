"""Checks a trial passes before it is trained: the avoid list, the size limit, the constraints
(and, once it is trained, the constraints on its validation metrics: :func:`record_metric_constraints`).

A trial that fails one ends at once as PRUNED (the sampler ranks it among the worst) and is
marked skipped, so it does not use up the budget.
"""

from __future__ import annotations

import math
from typing import NoReturn

import optuna
import torch

from atml import gate as g
from atml import records
from atml.config import Param, SearchSpace
from atml.config.study_rules import METRIC_CONSTRAINTS, constraint_figure
from atml.models import count_macs, count_parameters
from atml.onnx.convert import onnx_size_kb
from atml.trial import attributes
from atml.trial.data import PreparedData

__all__ = ["skip", "check_avoid", "check_size", "record_metric_constraints"]


def skip(trial: optuna.Trial, reason: str, avoid: bool = False) -> NoReturn:
    """End ``trial`` without training; ``avoid`` also puts its point on the avoid list."""
    records.mark_skipped(trial, reason)
    if avoid:
        g.add_avoid(trial.study, g.AvoidEntry(trial.number, dict(trial.params), reason))
    raise optuna.TrialPruned(reason)


def check_avoid(trial: optuna.Trial, space: SearchSpace, param_index: dict[str, Param]) -> None:
    """Skip a point inside the neighbourhood of an avoid-list entry."""
    hit = g.find_match(trial.params, g.avoid_entries(trial.study.user_attrs), param_index, space.gate.radius)
    if hit is not None:
        trial.set_user_attr(attributes.AVOIDED_BY, hit.trial)
        skip(trial, f"avoided: inside the neighbourhood of trial {hit.trial} ({hit.reason})")


def check_size(trial: optuna.Trial, space: SearchSpace, model: torch.nn.Module, d: PreparedData) -> tuple[int, float]:
    """Measure and record the model's size; skip it past the gate's size limit or a constraint.

    Size is known before training: measured for every trial (the dashboard plots metric
    against size) and a size limit rejects a model without training it. So are its
    multiply-accumulates (``max_macs``). Returns ``(parameters, ONNX KB)``.
    """
    n_params = count_parameters(model)
    macs = count_macs(model, d.n_leads, d.n_samples)
    onnx_kb = onnx_size_kb(model, d.n_leads, d.n_samples)
    records.set_attrs(trial, {attributes.N_PARAMS: n_params, attributes.MACS: macs,
                              attributes.ONNX_KB: round(onnx_kb, 2)})
    cap = space.gate.max_onnx_kb
    if cap is not None and onnx_kb > cap:
        skip(trial, f"size limit: ONNX {onnx_kb:.1f} KB > max_onnx_kb {cap:g}", avoid=True)
    for key, attr, unit in (("max_onnx_kb", onnx_kb, "KB ONNX"), ("max_params", n_params, "parameters"),
                            ("max_macs", macs, "multiply-accumulates")):
        limit = space.study.constraints.get(key)
        if limit is None:
            continue
        # Optuna's constraint handling: <= 0 is feasible; samplers rank violators last.
        trial.set_constraint(key, float(attr) - limit)
        if attr > limit:  # known before training: the violator is not trained
            shown = f"{attr:.1f}" if isinstance(attr, float) else str(attr)
            skip(trial, f"constraint: {shown} {unit} > {key} {limit:g}")
    return n_params, onnx_kb


def record_metric_constraints(trial: optuna.Trial, space: SearchSpace, metrics: dict[str, float]) -> None:
    """Record ``min_<metric>`` constraints (e.g. ``min_subject_f1_min: 0.5``) on the trained
    trial as Optuna constraint values (feasible when <= 0): the trial completes either way
    and samplers rank a violator behind the feasible ones; a metric the task does not
    define (NaN) is no pass."""
    for key, limit in space.study.constraints.items():
        if key in METRIC_CONSTRAINTS:
            value = float(metrics.get(constraint_figure(key), math.nan))
            trial.set_constraint(key, 1.0 if math.isnan(value) else limit - value)

"""Snapshot -> plotly figure JSON, built once per snapshot version and kind.

The numbers are pulled out of the trials here and handed to :mod:`atml.plots`. Big
studies are thinned where a chart would be unreadable anyway (learning curves: the
running trials, the best 20 and the latest ones) and the chart says so.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
import warnings
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from atml import plots
from atml.dashboard.reader import Snapshot
from atml.dashboard.serializers import study_info

__all__ = ["STUDY_PLOTS", "TRIAL_PLOTS", "study_figure", "trial_figure", "importances"]

log = logging.getLogger(__name__)

STUDY_PLOTS = ("history", "intermediate", "parallel", "importance", "pareto")
TRIAL_PLOTS = ("curves", "confusion")
MAX_CURVES = 300
MAX_PARALLEL = 3000
MAX_IMPORTANCE = 3000
MIN_IMPORTANCE = 3
SLOW_EVERY = {"importance": 15.0}  # seconds
SLOW_FROM = 200  # completed trials


def _complete(snap: Snapshot) -> list[FrozenTrial]:
    return snap.complete


def _specs(trials: list[FrozenTrial]) -> dict[str, plots.ParamSpec]:
    specs: dict[str, plots.ParamSpec] = {}
    for t in trials:
        for name, d in t.distributions.items():
            if name in specs:
                continue
            if isinstance(d, CategoricalDistribution):
                specs[name] = plots.ParamSpec("categorical", choices=tuple(d.choices))
            elif isinstance(d, IntDistribution):
                specs[name] = plots.ParamSpec("int", log=d.log)
            elif isinstance(d, FloatDistribution):
                specs[name] = plots.ParamSpec("float", log=d.log)
    return specs


class _TrialsView:
    """The three members of ``optuna.Study`` the importance evaluators read.

    Copying thousands of trials into an in-memory study costs seconds; this costs nothing.
    If a future evaluator reads more, :func:`importances` falls back to a real study.
    """

    def __init__(self, trials: list[FrozenTrial], directions: list[optuna.study.StudyDirection]) -> None:
        self._trials = trials
        self.directions = directions

    def _is_multi_objective(self) -> bool:
        return len(self.directions) > 1

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        return [t for t in self._trials if states is None or t.state in states]


def importances(snap: Snapshot) -> tuple[dict[str, float], str]:
    """PED-ANOVA importances of the latest completed trials, and a note for the chart."""
    done = _complete(snap)
    if len(done) < MIN_IMPORTANCE:
        return {}, f"needs at least {MIN_IMPORTANCE} completed trials (have {len(done)})"
    used = done[-MAX_IMPORTANCE:]
    note = f"latest {len(used)} of {len(done)} completed trials" if len(used) < len(done) else ""
    dirs = [optuna.study.StudyDirection[d.upper()] for d in snap.ref.directions]
    target = (lambda t: t.values[0]) if len(dirs) > 1 else None
    ev = optuna.importance.PedAnovaImportanceEvaluator()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            kw: dict[str, Any] = {"evaluator": ev, "target": target, "normalize": False}
            try:
                res = optuna.importance.get_param_importances(_TrialsView(used, dirs), **kw)
            except (AttributeError, TypeError):
                study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), directions=dirs)
                study.add_trials(used)
                res = optuna.importance.get_param_importances(study, **kw)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            log.info("importances of %s: %s", snap.name, e)
            return {}, f"cannot be computed yet ({e})"
    res = {k: float(v) for k, v in res.items() if math.isfinite(v) and v >= 0}
    total = sum(res.values())
    if total <= 0:
        # Optuna would split 1.0 evenly here, which reads as "all equally important".
        return {}, "no parameter explains the differences between trials yet"
    return {k: v / total for k, v in res.items()}, note


def _build(snap: Snapshot, kind: str) -> Any:
    info = study_info(snap.ref)
    metric, dirs = info["metric"], info["directions"]
    direction = dirs[0] if dirs else "maximize"
    done = _complete(snap)
    if kind == "history":
        return plots.history_figure([t.number for t in done], [t.values[0] for t in done],
                                    direction=direction, metric=metric)
    if kind == "intermediate":
        running = [t for t in snap.unfinished if t.state == TrialState.RUNNING]
        pick = heapq.nlargest if direction == "maximize" else heapq.nsmallest
        best = pick(20, done, key=lambda t: t.values[0])
        reported = [t for t in snap.trials if t.intermediate_values]
        chosen = {t.number: t for t in [*reported[-MAX_CURVES:], *best, *running]}
        note = f"latest {MAX_CURVES}, best 20 and running of {len(reported)} trials" if len(reported) > len(chosen) else ""
        curves = [plots.Curve(t.number, t.state.name, list(t.intermediate_values), list(t.intermediate_values.values()))
                  for t in sorted(chosen.values(), key=lambda t: t.number)]
        return plots.intermediate_figure(curves, metric=metric, note=note)
    if kind == "parallel":
        used = done[-MAX_PARALLEL:]
        note = f"latest {len(used)} of {len(done)}" if len(used) < len(done) else ""
        return plots.parallel_figure([t.params for t in used], [t.values[0] for t in used], _specs(used),
                                     metric=metric, direction=direction, note=note)
    if kind == "importance":
        imp, note = importances(snap)
        return plots.importance_figure(imp, note=note)
    if kind == "pareto":
        if len(dirs) == 2:
            return plots.pareto_figure([t.number for t in done], [t.values[1] for t in done], [t.values[0] for t in done],
                                       x_title="objective 2", y_title=metric, minimize_x=dirs[1] == "minimize",
                                       maximize_y=dirs[0] == "maximize", title="Pareto front")
        sized = [t for t in done if isinstance(t.user_attrs.get("onnx_kb"), int | float)]
        return plots.pareto_figure([t.number for t in sized], [float(t.user_attrs["onnx_kb"]) for t in sized],
                                   [t.values[0] for t in sized], y_title=metric, maximize_y=direction == "maximize")
    raise KeyError(kind)


def study_figure(snap: Snapshot, kind: str) -> bytes:
    """JSON of one study chart (``kind`` in STUDY_PLOTS), computed once per snapshot.

    Importances of a big study are recomputed at most every ``SLOW_EVERY`` seconds: one
    more trial among hundreds does not move them, and the computation takes a second.
    """
    def build() -> bytes:
        body = _build(snap, kind).to_json().encode()
        snap.shared[("figure", kind)] = (time.monotonic(), body)
        return body

    if kind in SLOW_EVERY and len(_complete(snap)) >= SLOW_FROM:
        prev = snap.shared.get(("figure", kind))
        if prev is not None and time.monotonic() - prev[0] < SLOW_EVERY[kind]:
            return snap.memo(("figure", kind), lambda: prev[1])
    return snap.memo(("figure", kind), build)


def trial_figure(snap: Snapshot, t: FrozenTrial, kind: str) -> bytes:
    """JSON of one trial chart (``kind`` in TRIAL_PLOTS), computed once per snapshot."""
    return snap.memo(("trial-figure", t.number, kind), lambda: _build_trial(snap, t, kind))


def _build_trial(snap: Snapshot, t: FrozenTrial, kind: str) -> bytes:
    info = study_info(snap.ref)
    if kind == "curves":
        hist = t.user_attrs.get("history")
        hist = [h for h in hist if isinstance(h, dict)] if isinstance(hist, list) else []
        be = t.user_attrs.get("best_epoch")
        fig = plots.learning_curves_figure(hist, metric=info["metric"], intermediate=t.intermediate_values,
                                           best_epoch=be if isinstance(be, int) else None)
    elif kind == "confusion":
        m = t.user_attrs.get("metrics") if isinstance(t.user_attrs.get("metrics"), dict) else {}
        try:
            tn, fp, fn, tp = (int(m[k]) for k in ("tn", "fp", "fn", "tp"))
        except (KeyError, TypeError, ValueError, OverflowError):
            fig = plots.empty_figure("no confusion matrix recorded for this trial", "Confusion matrix")
        else:
            fig = plots.confusion_figure(tn, fp, fn, tp, classes=info["classes"])
    else:
        raise KeyError(kind)
    return fig.to_json().encode()

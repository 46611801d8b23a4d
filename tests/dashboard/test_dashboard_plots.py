"""atml.plots: figures from plain data."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from atml import plots


def test_pareto_front():
    xs = [10, 12, 8, 20, 8, 15]
    ys = [0.80, 0.85, 0.70, 0.90, 0.60, 0.84]
    # minimise size, maximise metric: (8,0.70) (10,0.80) (12,0.85) (20,0.90)
    assert plots.pareto_front(xs, ys) == [2, 0, 1, 3]
    assert plots.pareto_front(xs, ys, minimize_x=False) == [3]
    assert plots.pareto_front([1, math.nan], [1, 2]) == [0]
    assert plots.pareto_front([], []) == []


def test_history_best_so_far():
    fig = plots.history_figure([0, 1, 2, 3], [0.5, 0.7, 0.6, math.nan], direction="maximize", metric="f1")
    assert list(fig.data[0].y) == [0.5, 0.7, 0.6]
    assert list(fig.data[1].y) == [0.5, 0.7, 0.7]
    low = plots.history_figure([0, 1], [0.5, 0.3], direction="minimize")
    assert list(low.data[1].y) == [0.5, 0.3]


def test_empty_states():
    for fig in (plots.history_figure([], []), plots.intermediate_figure([]), plots.parallel_figure([], [], {}),
                plots.importance_figure({}, note="needs at least 3 completed trials (have 1)"),
                plots.pareto_figure([], [], []), plots.learning_curves_figure([])):
        assert isinstance(fig, go.Figure) and not fig.data
        assert fig.layout.annotations and fig.layout.annotations[0].text


def test_intermediate_one_trace_per_state():
    curves = [plots.Curve(i, "COMPLETE" if i % 2 else "PRUNED", [0, 1], [0.1 * i, math.nan]) for i in range(10)]
    fig = plots.intermediate_figure(curves, metric="f1")
    assert sorted(t.name for t in fig.data) == ["complete", "pruned"]
    assert np.isnan(np.asarray(fig.data[0].y, dtype=float)).sum() == 10, "a gap after each trial, NaN values too"


def test_parallel_axes():
    specs = {"lr": plots.ParamSpec("float", log=True), "family": plots.ParamSpec("categorical", choices=("a", "b")),
             "a.width": plots.ParamSpec("int")}
    params = [{"lr": 1e-3, "family": "a", "a.width": 4}, {"lr": 1e-2, "family": "b"}, {"lr": 3e-3, "family": "a"}]
    fig = plots.parallel_figure(params, [0.5, 0.6, 0.7], specs, metric="f1")
    labels = [d.label for d in fig.data[0].dimensions]
    assert labels == ["lr (log)", "family", "f1"], "a conditional parameter is left out"
    assert list(fig.data[0].dimensions[1].values) == [0, 1, 0]


def test_confusion_and_curves():
    fig = plots.confusion_figure(50, 5, 3, 42, classes=("non-AFIB", "AFIB"))
    assert [list(r) for r in fig.data[0].z] == [[50, 5], [3, 42]] and "pred AFIB" in fig.data[0].x
    hist = [{"train_loss": 0.7, "val_loss": 0.8, "f1": 0.5}, {"train_loss": 0.5, "val_loss": 0.6, "f1": 0.7}]
    fig = plots.learning_curves_figure(hist, metric="f1", best_epoch=1)
    assert [t.name for t in fig.data] == ["train_loss", "val_loss", "f1"] and fig.layout.shapes
    fallback = plots.learning_curves_figure([{}], metric="f1", intermediate={0: 0.4, 1: 0.6})
    assert list(fallback.data[0].y) == [0.4, 0.6]

"""A paired comparison of two configurations on the same subject folds.

Both are cross-validated (``validation: subject_kfold``) on the same non-test subjects
with the same fold deal, so each fold gives a paired difference; the comparison says
whether the mean difference exceeds the fold-to-fold noise (a paired t interval over
folds). A search result is better than a baseline only when it does.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from atml.config import SearchSpace, load_space, space_from_dict
from atml.errors import SpaceError
from atml.search.strategy import make_sampler
from atml.trial import DataVariants, Objective, data_spec, prepare_data

__all__ = ["Side", "Comparison", "read_params", "score_side", "score_sides", "compare"]


@dataclass
class Side:
    """One configuration: a space and (for a space that searches) the parameters to score."""

    space_path: Path
    params: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    # Filled by score_side:
    metrics: dict[str, float] = field(default_factory=dict)
    folds: list[dict[str, Any]] = field(default_factory=list)
    subjects: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Comparison:
    metric: str
    a: Side
    b: Side
    diffs: list[float]  # b - a per fold
    mean: float
    low: float  # the 95 % paired t interval of the mean difference
    high: float

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return f"{self.b.name} is better than {self.a.name} by more than the fold noise"
        if self.high < 0:
            return f"{self.a.name} is better than {self.b.name} by more than the fold noise"
        return "no difference beyond the fold noise"


def read_params(path: str | Path) -> dict[str, Any]:
    """Flat trial parameters from a JSON file: a ``{"train.lr": ...}`` mapping or an export sidecar."""
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise SpaceError(f"--params {p}: {e}") from None
    if isinstance(d, dict) and isinstance(d.get("trial"), dict) and isinstance(d["trial"].get("params"), dict):
        return dict(d["trial"]["params"])
    if not isinstance(d, dict):
        raise SpaceError(f"--params {p}: expected a JSON mapping of parameters (or an export sidecar)")
    return d


def _cv_space(path: Path, folds: int, repeats: int, seed: int, test_fraction: float | None) -> SearchSpace:
    base = load_space(path)
    raw = copy.deepcopy(base.raw)
    raw["validation"] = {**(raw.get("validation") or {}), "scheme": "subject_kfold", "folds": folds,
                         "repeats": repeats, "seed": seed}
    if test_fraction is not None:
        raw["data"] = {**raw.get("data", {}), "test_fraction": test_fraction}
    raw["budget"] = {"n_trials": 1}
    raw["study"] = {**raw["study"], "pruner": {"type": "none"}}
    raw.pop("gate", None)
    return space_from_dict(raw, source=base.source, base_dir=path.resolve().parent)


def score_side(side: Side, *, folds: int, repeats: int, seed: int, test_fraction: float | None,
               cache: str | Path, device: str = "cpu", threads: int | None = None) -> Side:
    """Cross-validate ``side``'s configuration on ``device`` (a resolved device: ``cpu``,
    ``cuda:0``, ...); fills its metrics, folds and subjects. ``threads``: torch's CPU threads
    (None: torch's default), for sides scored side by side."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    space = _cv_space(side.space_path, folds, repeats, seed, test_fraction)
    data = (DataVariants(space.data, None, cache, device=device) if space.data_params
            else prepare_data(data_spec(space.data), cache, device))
    study = optuna.create_study(directions=[dr for _, dr in space.study.all_objectives],
                                sampler=make_sampler(space.study))
    names = {p.name for p in space.params}
    unknown = sorted(set(side.params) - names)
    if unknown:
        raise SpaceError(f"{side.space_path}: parameters not in this space: {', '.join(unknown)}")
    if side.params:
        study.enqueue_trial(side.params)
    with tempfile.TemporaryDirectory(prefix="atml-compare-") as tmp:
        study.optimize(Objective(space, data, tmp), n_trials=1, catch=())
    t = study.trials[0]
    if t.state != optuna.trial.TrialState.COMPLETE:
        raise SpaceError(f"{side.space_path}: the configuration did not complete ({t.user_attrs.get('reason')})")
    side.metrics = dict(t.user_attrs["metrics"])
    side.folds = list(t.user_attrs["folds"])
    side.subjects = dict(t.user_attrs.get("subjects") or {})
    side.seconds = float(t.user_attrs.get("trial_seconds", 0.0))
    side.name = side.name or side.space_path.stem
    return side


def score_sides(sides: list[Side], *, jobs: int = 1, on_start: Any = None, **kw: Any) -> list[Side]:
    """:func:`score_side` for each side, ``jobs`` at a time (separate processes, the CPU cores
    shared out between them); ``on_start(side)`` as each starts. Same figures as one at a
    time: every trial's seed comes from the space, not from the order."""
    if jobs <= 1 or len(sides) < 2:
        out = []
        for side in sides:
            if on_start:
                on_start(side)
            out.append(score_side(side, **kw))
        return out
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    jobs = min(jobs, len(sides))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = []
        for side in sides:
            if on_start:
                on_start(side)
            futures.append(pool.submit(score_side, side, threads=threads, **kw))
        return [f.result() for f in futures]


def compare(a: Side, b: Side, metric: str = "f1") -> Comparison:
    """The paired comparison of two scored sides (same folds: checked)."""
    if [f["held_subjects"] for f in a.folds] != [f["held_subjects"] for f in b.folds]:
        raise SpaceError("compare: the two configurations do not see the same subjects in the same folds "
                         "(same data, labels and test split needed)")
    diffs = [float(fb[metric]) - float(fa[metric]) for fa, fb in zip(a.folds, b.folds, strict=True)]
    mean = float(np.mean(diffs))
    n = len(diffs)
    if n > 1:
        from scipy import stats

        half = float(stats.t.ppf(0.975, n - 1)) * float(np.std(diffs, ddof=1)) / math.sqrt(n)
    else:
        half = math.inf
    return Comparison(metric=metric, a=a, b=b, diffs=diffs, mean=mean, low=mean - half, high=mean + half)

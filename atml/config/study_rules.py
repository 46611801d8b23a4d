"""Rules of the ``study`` section (objectives, constraints, sampler, pruner) and of ``budget``."""

from __future__ import annotations

from typing import Any

from atml.config.schema import Budget, StudySettings, field_defaults
from atml.config.validator import Validator
from atml.metrics import LCB_METRIC_NAMES, METRIC_NAMES, SUBJECT_METRIC_NAMES

__all__ = ["METRICS", "study_settings", "budget", "sampler_class", "pruner_class"]

# Validation metrics a study may optimise: the metric module's, the loss, and the PhysioNet
# 2017 score (present when the classes are N, A, O ...).
METRICS: tuple[str, ...] = (*METRIC_NAMES, "val_loss", "physionet2017", *SUBJECT_METRIC_NAMES, *LCB_METRIC_NAMES)
_SIZE_METRICS = ("onnx_kb", "n_params")  # measured before training; objectives only
_CONSTRAINTS = ("max_onnx_kb", "max_params")
_DIRECTIONS = ("maximize", "minimize")


def sampler_class(kind: str) -> Any:
    """The Optuna sampler class for a ``study.sampler.type``."""
    import optuna

    return {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "gp": optuna.samplers.GPSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "qmc": optuna.samplers.QMCSampler,
    }[kind]


def pruner_class(kind: str) -> Any:
    """The Optuna pruner class for a ``study.pruner.type``."""
    import optuna

    return {
        "median": optuna.pruners.MedianPruner,
        "asha": optuna.pruners.SuccessiveHalvingPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "none": optuna.pruners.NopPruner,
    }[kind]


_SAMPLERS = ("tpe", "random", "gp", "cmaes", "nsga2", "qmc")
_PRUNERS = ("median", "asha", "successive_halving", "hyperband", "percentile", "none")


def _objectives(v: Validator, objs: Any) -> list[tuple[str, str]]:
    if not isinstance(objs, list) or not objs:
        v.fail("study.objectives", f"must be a non-empty list of {{metric, direction}} (got {objs!r})")
    objectives: list[tuple[str, str]] = []
    for i, o in enumerate(objs):
        where = f"study.objectives[{i}]"
        v.keys(where, o, {"metric", "direction"}, required={"metric", "direction"})
        m, dr = v.typed(f"{where}.metric", o["metric"], str), v.typed(f"{where}.direction", o["direction"], str)
        if m not in METRICS + _SIZE_METRICS:
            v.fail(f"{where}.metric", f"must be one of {', '.join(METRICS + _SIZE_METRICS)} (got {m!r})")
        if dr not in _DIRECTIONS:
            v.fail(f"{where}.direction", f"must be maximize or minimize (got {dr!r})")
        objectives.append((m, dr))
    if objectives[0][0] in _SIZE_METRICS:
        v.fail("study.objectives[0].metric", "the first objective must be a validation metric "
               "(it drives early stopping and pruning)")
    if len({m for m, _ in objectives}) != len(objectives):
        v.fail("study.objectives", "each metric may appear once")
    return objectives


def _optuna_part(v: Validator, where: str, spec: Any, default: dict[str, Any],
                 kinds: tuple[str, ...]) -> dict[str, Any]:
    """A sampler or pruner mapping: ``type`` one of ``kinds``, the rest keyword arguments of its class."""
    out = dict(spec or {"type": default["type"]})
    v.keys(where, out, set(out) | {"type"}, required={"type"})
    if out["type"] not in kinds:
        v.fail(f"{where}.type", f"must be one of {', '.join(kinds)} (got {out['type']!r})")
    for k, val in default.items():
        out.setdefault(k, val)
    return out


def study_settings(v: Validator, d: Any) -> StudySettings:
    """The ``study`` section."""
    defaults = field_defaults(StudySettings)
    v.keys("study", d, {"name", "metric", "direction", "objectives", "constraints", "sampler", "pruner"},
           required={"name"})
    name = v.typed("study.name", d["name"], str)
    if not name or any(c in name for c in "/\\\n") or name.startswith("."):
        v.fail("study.name", f"must be a plain name without slashes (got {name!r})")
    objectives: list[tuple[str, str]] = []
    if "objectives" in d:
        if "metric" in d or "direction" in d:
            v.fail("study.objectives", "give either metric/direction or objectives, not both")
        objectives = _objectives(v, d["objectives"])
    metric = objectives[0][0] if objectives else v.typed("study.metric", d.get("metric", defaults["metric"]), str)
    if metric not in METRICS:
        v.fail("study.metric", f"must be one of {', '.join(METRICS)} (got {metric!r})")
    default_dir = "minimize" if metric == "val_loss" else defaults["direction"]
    direction = objectives[0][1] if objectives else v.typed("study.direction", d.get("direction", default_dir), str)
    if direction not in _DIRECTIONS:
        v.fail("study.direction", f"must be maximize or minimize (got {direction!r})")
    constraints: dict[str, float] = {}
    if d.get("constraints") is not None:
        v.keys("study.constraints", d["constraints"], set(_CONSTRAINTS))
        for k, val in d["constraints"].items():
            constraints[k] = v.typed(f"study.constraints.{k}", val, float)
            if constraints[k] <= 0:
                v.fail(f"study.constraints.{k}", f"must be > 0 (got {constraints[k]})")
    sampler = _optuna_part(v, "study.sampler", d.get("sampler"), defaults["sampler"], _SAMPLERS)
    v.typed("study.sampler.seed", sampler["seed"], int)
    v.kwargs("study.sampler", sampler, sampler_class(sampler["type"]))
    pruner = _optuna_part(v, "study.pruner", d.get("pruner"), defaults["pruner"], _PRUNERS)
    v.kwargs("study.pruner", pruner, pruner_class(pruner["type"]))
    if len(objectives) > 1 and sampler["type"] in ("cmaes", "gp"):
        v.fail("study.sampler.type", f"{sampler['type']} cannot optimise several objectives (use tpe or nsga2)")
    return StudySettings(name=name, metric=metric, direction=direction, sampler=sampler, pruner=pruner,
                         objectives=tuple(objectives) if len(objectives) > 1 else (), constraints=constraints)


def budget(v: Validator, d: Any) -> Budget:
    """The ``budget`` section: n_trials and/or timeout."""
    v.keys("budget", d, {"n_trials", "timeout"})
    n = v.typed("budget.n_trials", d.get("n_trials"), int)
    t = v.typed("budget.timeout", d.get("timeout"), float)
    if n is not None and n < 1:
        v.fail("budget.n_trials", f"must be >= 1 (got {n})")
    if t is not None and t <= 0:
        v.fail("budget.timeout", f"must be > 0 seconds (got {t})")
    if n is None and t is None:
        v.fail("budget", "needs n_trials and/or timeout")
    return Budget(n_trials=n, timeout=t)

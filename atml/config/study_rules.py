"""Rules of the ``study`` section (objectives, constraints, sampler, pruner) and of ``budget``."""

from __future__ import annotations

from typing import Any

from atml.config.schema import Budget, StudySettings, field_defaults
from atml.config.validator import Validator
from atml.metrics import LCB_METRIC_NAMES, METRIC_NAMES, SUBJECT_METRIC_NAMES

__all__ = ["METRICS", "INT8_METRICS", "DEPLOYED_FIGURES", "POST_TRAINING_CONSTRAINTS", "METRIC_CONSTRAINTS",
           "constraint_figure",
           "study_settings", "budget", "sampler_class", "pruner_class"]

# Validation metrics a study may optimise: the metric module's, the loss, and the PhysioNet
# 2017 score (present when the classes are N, A, O ...).
METRICS: tuple[str, ...] = (*METRIC_NAMES, "val_loss", "physionet2017", *SUBJECT_METRIC_NAMES, *LCB_METRIC_NAMES)
_SIZE_METRICS = ("onnx_kb", "n_params")  # measured before training; objectives only
# The trained model as deployed: its int8 ONNX network's size, the validation metrics of that
# int8 model and its latency (onnxruntime, batch 1, one thread). Measured after training,
# only by a space that names one (atml.trial.deployed).
INT8_METRICS: tuple[str, ...] = tuple(f"int8_{m}" for m in METRICS if m != "val_loss")
DEPLOYED_FIGURES: tuple[str, ...] = ("int8_kb", "latency_ms", *INT8_METRICS)
# Bounds known before training reject a trial untrained; the others are recorded after it.
_PRE_CONSTRAINTS = ("max_onnx_kb", "max_params", "max_macs")
POST_TRAINING_CONSTRAINTS: tuple[str, ...] = ("max_int8_kb", "max_latency_ms", *(f"min_{m}" for m in INT8_METRICS))
# Lower bounds on a validation metric (e.g. min_subject_f1_min: no person below it), recorded once trained.
METRIC_CONSTRAINTS: tuple[str, ...] = tuple(f"min_{m}" for m in METRICS if m not in ("val_loss", "physionet2017"))
_CONSTRAINTS = (*_PRE_CONSTRAINTS, *POST_TRAINING_CONSTRAINTS, *METRIC_CONSTRAINTS)


def constraint_figure(key: str) -> str:
    """The figure a constraint bounds: ``max_int8_kb`` -> ``int8_kb``, ``min_int8_f1`` -> ``int8_f1``."""
    return key.split("_", 1)[1]


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
        if m not in METRICS + _SIZE_METRICS + DEPLOYED_FIGURES:
            v.fail(f"{where}.metric", f"must be a validation metric ({', '.join(METRICS)}), a size measured "
                   f"before training ({', '.join(_SIZE_METRICS)}) or a deployed figure (int8_kb, latency_ms, "
                   f"int8_<metric> for a validation metric but val_loss) (got {m!r})")
        if dr not in _DIRECTIONS:
            v.fail(f"{where}.direction", f"must be maximize or minimize (got {dr!r})")
        objectives.append((m, dr))
    if objectives[0][0] not in METRICS:
        v.fail("study.objectives[0].metric", "the first objective must be a validation metric "
               f"(it drives early stopping and pruning; got {objectives[0][0]!r})")
    if len({m for m, _ in objectives}) != len(objectives):
        v.fail("study.objectives", "each metric may appear once")
    return objectives


def _constraints(v: Validator, d: Any) -> dict[str, float]:
    """``study.constraints``: ``max_*`` bounds > 0, ``min_int8_*`` bounds on a score in [0, 1]."""
    if not isinstance(d, dict):
        v.fail("study.constraints", f"expected a mapping, got {type(d).__name__} {d!r}")
    out: dict[str, float] = {}
    for k, val in d.items():
        where = f"study.constraints.{k}"
        if k not in _CONSTRAINTS:
            v.fail(where, f"unknown constraint (allowed: {', '.join(_PRE_CONSTRAINTS)}, max_int8_kb, "
                   "max_latency_ms, min_<metric> and min_int8_<metric> for a validation metric but val_loss)")
        out[k] = v.typed(where, val, float)
        if out[k] is None:
            v.fail(where, "expected a number, got None")
        if k.startswith("min_") and not 0.0 <= out[k] <= 1.0:
            v.fail(where, f"must be in [0, 1] (got {out[k]})")
        if k.startswith("max_") and out[k] <= 0:
            v.fail(where, f"must be > 0 (got {out[k]})")
    return out


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
        constraints = _constraints(v, d["constraints"])
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

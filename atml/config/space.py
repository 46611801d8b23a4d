"""YAML search space -> validated :class:`SearchSpace`; ``suggest(trial)`` -> params.

A parameter in the ``train`` or ``model`` sections is either a fixed value or a mapping
with a ``type``::

    lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    width: {type: int, low: 4, high: 32, step: 4}
    batch_size: {type: categorical, choices: [32, 64]}
    epochs: 20                      # fixed

Model families are conditional: ``model.families.<family>.<param>`` exists only when
``model.family`` is that family, and is named ``<family>.<param>`` in the study.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from atml.errors import SpaceError

__all__ = [
    "Param",
    "SearchSpace",
    "StudySettings",
    "Budget",
    "GateSettings",
    "load_space",
    "space_from_dict",
    "encode_choices",
    "TRAIN_DEFAULTS",
]

# name -> (python type, default). Every key here may also be a searchable parameter.
TRAIN_DEFAULTS: dict[str, tuple[type, Any]] = {
    "epochs": (int, 20),
    "batch_size": (int, 32),
    "lr": (float, 1.5e-3),
    "weight_decay": (float, 1e-3),
    "optimizer": (str, "adamw"),
    "momentum": (float, 0.9),
    "class_weighted": (bool, False),
    "label_smoothing": (float, 0.0),
    "patience": (int, 5),
    "gap": (float, 0.0),
    "lr_factor": (float, 0.5),
    "lr_patience": (int, 2),
    "min_epochs": (int, 1),
    "augment": (float, 0.0),
    "ema": (float, 0.0),
    "stretch": (float, 0.0),
}
_OPTIMIZERS = ("adamw", "adam", "sgd")
_METRICS = ("f1", "accuracy", "precision", "recall", "auroc", "val_loss", "physionet2017")
_SIZE_METRICS = ("onnx_kb", "n_params")  # measured before training; objectives only
_CONSTRAINTS = ("max_onnx_kb", "max_params")
_SAMPLERS = ("tpe", "random", "gp", "cmaes", "nsga2", "qmc")
_PRUNERS = ("median", "asha", "successive_halving", "hyperband", "percentile", "none")
_DATA_KEYS = {
    "path": (str, None),
    "format": (str, "auto"),
    "positive": (list, ["AFIB"]),
    "classes": (list, ["non-AFIB", "AFIB"]),
    "drop_labels": (list, []),
    "label_map": (dict, None),
    "segment_length": (int, 1250),
    "fs": (int, 250),
    "normalize": (str, "zscore"),
    "val_fraction": (float, 0.2),
    "test_fraction": (float, 0.0),
    "test_path": (str, None),
    "split_seed": (int, 0),
    "on_bad": (str, "error"),
    "max_segments": (int, None),
    "synthetic": (dict, None),
    "target_fs": (int, None),
    "window": (float, None),
    "stride": (float, None),
    "pad_short": (bool, False),
    "window_mixed": (str, "drop"),
    "rhythm_default": (str, "N"),
    "leads": (object, None),
    "bandpass": (list, None),
    "multilabel": (bool, False),
    "strict_labels": (bool, False),
    "drop_empty": (bool, False),
    "ptbxl_labels": (str, "superclass"),
}
# Preprocessing settings that may be searched. Each value is preprocessed and cached once,
# so they take categorical choices or a stepped range (a finite set), at most MAX_DATA_VARIANTS
# combinations in all.
_DATA_SEARCHABLE = ("target_fs", "window", "stride", "leads", "bandpass", "normalize")
MAX_DATA_VARIANTS = 24
_FORMATS = ("auto", "iesd_txt", "npz", "synthetic", "ptbxl", "cinc2017", "wfdb_csv", "wfdb_rhythm", "cinc2020")
_SYNTHETIC_KEYS = {"subjects": 24, "per_subject": 40, "seed": 0}
_GATE_KEYS = {
    "metrics": (list, ["f1", "accuracy", "precision", "recall"]),
    "pass": (float, None),
    "avoid_below": (float, None),
    "keep": (int, 3),
    "stop_at": (float, None),
    "patience_trials": (int, None),
    "max_onnx_kb": (float, None),
    "radius": (float, None),
}


@dataclass(frozen=True)
class Param:
    """One searchable parameter (``kind`` is float, int or categorical)."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    encoded: bool = False  # choices are JSON text (lists such as bandpass [0.5, 40]); suggest decodes

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial for a value of this parameter."""
        if self.encoded:
            return json.loads(trial.suggest_categorical(self.name, list(self.choices)))
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return trial.suggest_categorical(self.name, list(self.choices))

    def values(self) -> list[Any]:
        """Every value of a finite parameter (categorical or a stepped range), decoded."""
        if self.kind == "categorical":
            return [json.loads(c) for c in self.choices] if self.encoded else list(self.choices)
        if self.step is None:
            raise ValueError(f"{self.name} is a continuous range")
        n = int(math.floor((self.high - self.low) / self.step + 1e-9))
        vals = [self.low + i * self.step for i in range(n + 1)]
        return [int(v) for v in vals] if self.kind == "int" else [round(v, 12) for v in vals]

    def to_dict(self) -> dict[str, Any]:
        """Plain description (stored with the study, shown by the dashboard)."""
        d: dict[str, Any] = {"name": self.name, "type": self.kind}
        if self.kind == "categorical":
            d["choices"] = list(self.choices)
        else:
            d.update(low=self.low, high=self.high, log=self.log, step=self.step)
        return d


@dataclass(frozen=True)
class StudySettings:
    """``metric``/``direction`` are the primary objective (the first of ``objectives``)."""

    name: str
    metric: str = "f1"
    direction: str = "maximize"
    sampler: dict[str, Any] = field(default_factory=lambda: {"type": "tpe", "seed": 0})
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "median"})
    objectives: tuple[tuple[str, str], ...] = ()
    constraints: dict[str, float] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return int(self.sampler.get("seed", 0))

    @property
    def all_objectives(self) -> tuple[tuple[str, str], ...]:
        return self.objectives or ((self.metric, self.direction),)

    @property
    def multi(self) -> bool:
        return len(self.all_objectives) > 1


@dataclass(frozen=True)
class Budget:
    n_trials: int | None = None
    timeout: float | None = None


@dataclass(frozen=True)
class GateSettings:
    metrics: tuple[str, ...] = ("f1", "accuracy", "precision", "recall")
    pass_: float | None = None
    avoid_below: float | None = None
    keep: int = 3
    stop_at: float | None = None
    patience_trials: int | None = None
    max_onnx_kb: float | None = None
    radius: float | None = None

    @property
    def enabled(self) -> bool:
        return any(
            v is not None
            for v in (self.pass_, self.avoid_below, self.stop_at, self.patience_trials,
                      self.max_onnx_kb)
        )


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space. ``raw`` is the YAML mapping, kept to store with the study."""

    source: str
    study: StudySettings
    budget: Budget
    data: dict[str, Any]
    train_fixed: dict[str, Any]
    train_params: tuple[Param, ...]
    families: dict[str, tuple[dict[str, Any], tuple[Param, ...]]]  # family -> (fixed, params)
    model_fixed: dict[str, Any]
    model_params: tuple[Param, ...]
    gate: GateSettings
    raw: dict[str, Any]
    data_params: tuple[Param, ...] = ()  # searchable preprocessing (data.window, data.bandpass, ...)

    @property
    def params(self) -> tuple[Param, ...]:
        """Every parameter that can be suggested, including conditional ones."""
        out = list(self.data_params)
        out.extend(self.train_params)
        if len(self.families) > 1:
            out.append(Param("model.family", "categorical", choices=tuple(self.families)))
        out.extend(self.model_params)
        for _, params in self.families.values():
            out.extend(params)
        return tuple(out)

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Sample one configuration: ``{"data": {...}, "train": {...}, "model": {"family", "hparams"}}``;
        ``data`` holds only the searched preprocessing settings (merge with :meth:`data_section`)."""
        data = {p.name.split(".", 1)[1]: p.suggest(trial) for p in self.data_params}
        train = dict(self.train_fixed)
        for p in self.train_params:
            train[p.name.split(".", 1)[1]] = p.suggest(trial)
        names = list(self.families)
        family = names[0] if len(names) == 1 else trial.suggest_categorical("model.family", names)
        hparams = dict(self.model_fixed)
        for p in self.model_params:
            hparams[p.name.split(".", 1)[1]] = p.suggest(trial)
        fixed, params = self.families[family]
        hparams.update(fixed)
        for p in params:
            hparams[p.name.split(".", 1)[1]] = p.suggest(trial)
        return {"data": data, "train": train, "model": {"family": family, "hparams": hparams}}

    def data_section(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``data`` section with one trial's searched preprocessing settings filled in
        (without ``overrides``: each searched setting at its first value)."""
        return {**self.data, **(overrides or {})}

    def data_variants(self) -> list[dict[str, Any]]:
        """Every combination of the searched preprocessing settings ([{}] when none is searched)."""
        return _combinations(self.data_params)

    def params_from_flat(self, flat: dict[str, Any]) -> dict[str, Any]:
        """Rebuild a configuration from a trial's stored (flat) parameters."""

        class _Fixed:
            def suggest_float(self, name: str, *a: Any, **k: Any) -> Any:
                return flat[name]

            suggest_int = suggest_categorical = suggest_float

        return self.suggest(_Fixed())

    def to_json(self) -> str:
        return json.dumps({"source": self.source, "raw": self.raw}, sort_keys=True)


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a YAML search space file."""
    p = Path(path)
    if not p.is_file():
        raise SpaceError(f"{p}: no such search space file")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise SpaceError(f"{p.name}:{where} invalid YAML ({getattr(e, 'problem', e)})") from None
    return space_from_dict(raw, source=p.name, base_dir=p.resolve().parent)


def space_from_dict(
    raw: Any, *, source: str = "<space>", base_dir: Path | None = None, check_paths: bool = True
) -> SearchSpace:
    """Validate an already parsed mapping (``base_dir`` resolves relative data paths).

    ``check_paths=False`` is for a space loaded back from a study on another machine,
    whose data paths need not exist there (the worker passes its own ``--data``).
    """
    v = _Validator(source)
    if not isinstance(raw, dict):
        v.fail("", f"expected a mapping at the top level, got {type(raw).__name__}")
    v.keys("", raw, {"study", "budget", "data", "train", "model", "gate"}, required={"study", "model"})
    study = _study(v, raw["study"])
    budget = _budget(v, raw.get("budget") or {})
    data, data_params = _data(v, raw.get("data") or {}, base_dir, check_paths)
    train_fixed, train_params = _train(v, raw.get("train") or {})
    families, model_fixed, model_params = _model(v, raw["model"])
    gate = _gate(v, raw.get("gate") or {})
    stored = dict(raw)
    stored["data"] = {**data, **{p.name.split(".", 1)[1]: raw["data"][p.name.split(".", 1)[1]] for p in data_params}}
    return SearchSpace(
        source=source,
        study=study,
        budget=budget,
        data=data,
        train_fixed=train_fixed,
        train_params=train_params,
        families=families,
        model_fixed=model_fixed,
        model_params=model_params,
        gate=gate,
        raw=stored,
        data_params=data_params,
    )


class _Validator:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, msg: str) -> None:
        loc = f"{self.source}: {where}: " if where else f"{self.source}: "
        raise SpaceError(loc + msg)

    def keys(self, where: str, d: Any, allowed: set[str], required: set[str] = frozenset()) -> None:
        if not isinstance(d, dict):
            self.fail(where, f"expected a mapping, got {type(d).__name__} {d!r}")
        for k in d:
            if k not in allowed:
                self.fail(_join(where, str(k)), f"unknown key (allowed: {', '.join(sorted(allowed))})")
        for k in sorted(required):
            if k not in d:
                self.fail(_join(where, k), "missing required key")

    def typed(self, where: str, value: Any, typ: type) -> Any:
        if value is None:
            return None
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if typ is float and isinstance(value, str):
            try:  # YAML 1.1 reads 1e-3 (no dot) as a string
                return float(value)
            except ValueError:
                pass
        if typ in (int, float) and isinstance(value, bool) or not isinstance(value, typ):
            self.fail(where, f"expected {typ.__name__}, got {type(value).__name__} {value!r}")
        if typ is float and not math.isfinite(value):
            self.fail(where, f"expected a finite number, got {value!r}")
        return value

    def param(self, where: str, spec: Any, typ: type, name: str) -> Param | Any:
        """A fixed value (returned as is) or a parameter mapping (returned as Param)."""
        if not isinstance(spec, dict):
            if isinstance(spec, list):
                self.fail(where, "a list is not a parameter; use {type: categorical, choices: [...]}")
            return self.typed(where, spec, typ) if typ is not object else spec
        self.keys(where, spec, {"type", "low", "high", "log", "step", "choices"}, required={"type"})
        kind = spec["type"]
        if kind not in ("float", "int", "categorical"):
            self.fail(_join(where, "type"), f"must be float, int or categorical (got {kind!r})")
        if kind == "categorical":
            self.keys(where, spec, {"type", "choices"}, required={"choices"})
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                self.fail(_join(where, "choices"), f"must be a non-empty list (got {choices!r})")
            if typ is not object:
                choices = [self.typed(f"{_join(where, 'choices')}[{i}]", c, typ) for i, c in enumerate(choices)]
            if len(set(map(repr, choices))) != len(choices):
                self.fail(_join(where, "choices"), f"duplicate choices {choices!r}")
            return Param(name, "categorical", choices=tuple(choices))
        self.keys(where, spec, {"type", "low", "high", "log", "step"}, required={"low", "high"})
        if typ is not object and typ is not float and typ is not int:
            self.fail(where, f"a {typ.__name__} cannot be a {kind} range; use categorical")
        if typ is int and kind == "float":
            self.fail(_join(where, "type"), "must be int for an integer setting (got float)")
        num = float if kind == "float" else int
        low = self.typed(_join(where, "low"), spec["low"], num)
        high = self.typed(_join(where, "high"), spec["high"], num)
        log = self.typed(_join(where, "log"), spec.get("log", False), bool)
        step = self.typed(_join(where, "step"), spec.get("step"), num)
        if not low < high:
            self.fail(where, f"low must be < high (got low={low}, high={high})")
        if log and low <= 0:
            self.fail(where, f"log range needs low > 0 (got low={low})")
        if log and step is not None:
            self.fail(where, "log and step cannot be combined")
        if step is not None and step <= 0:
            self.fail(_join(where, "step"), f"must be > 0 (got {step})")
        return Param(name, kind, low=low, high=high, log=log, step=step)


def _join(a: str, b: str) -> str:
    return f"{a}.{b}" if a else b


def _study(v: _Validator, d: Any) -> StudySettings:
    v.keys("study", d, {"name", "metric", "direction", "objectives", "constraints", "sampler", "pruner"},
           required={"name"})
    name = v.typed("study.name", d["name"], str)
    if not name or any(c in name for c in "/\\\n") or name.startswith("."):
        v.fail("study.name", f"must be a plain name without slashes (got {name!r})")
    objectives: list[tuple[str, str]] = []
    if "objectives" in d:
        if "metric" in d or "direction" in d:
            v.fail("study.objectives", "give either metric/direction or objectives, not both")
        objs = d["objectives"]
        if not isinstance(objs, list) or not objs:
            v.fail("study.objectives", f"must be a non-empty list of {{metric, direction}} (got {objs!r})")
        for i, o in enumerate(objs):
            where = f"study.objectives[{i}]"
            v.keys(where, o, {"metric", "direction"}, required={"metric", "direction"})
            m, dr = v.typed(f"{where}.metric", o["metric"], str), v.typed(f"{where}.direction", o["direction"], str)
            if m not in _METRICS + _SIZE_METRICS:
                v.fail(f"{where}.metric", f"must be one of {', '.join(_METRICS + _SIZE_METRICS)} (got {m!r})")
            if dr not in ("maximize", "minimize"):
                v.fail(f"{where}.direction", f"must be maximize or minimize (got {dr!r})")
            objectives.append((m, dr))
        if objectives[0][0] in _SIZE_METRICS:
            v.fail("study.objectives[0].metric", "the first objective must be a validation metric "
                   "(it drives early stopping and pruning)")
        if len({m for m, _ in objectives}) != len(objectives):
            v.fail("study.objectives", "each metric may appear once")
    metric = objectives[0][0] if objectives else v.typed("study.metric", d.get("metric", "f1"), str)
    if metric not in _METRICS:
        v.fail("study.metric", f"must be one of {', '.join(_METRICS)} (got {metric!r})")
    default_dir = "minimize" if metric == "val_loss" else "maximize"
    direction = objectives[0][1] if objectives else v.typed("study.direction", d.get("direction", default_dir), str)
    if direction not in ("maximize", "minimize"):
        v.fail("study.direction", f"must be maximize or minimize (got {direction!r})")
    constraints: dict[str, float] = {}
    if d.get("constraints") is not None:
        v.keys("study.constraints", d["constraints"], set(_CONSTRAINTS))
        for k, val in d["constraints"].items():
            constraints[k] = v.typed(f"study.constraints.{k}", val, float)
            if constraints[k] <= 0:
                v.fail(f"study.constraints.{k}", f"must be > 0 (got {constraints[k]})")
    sampler = dict(d.get("sampler") or {"type": "tpe"})
    v.keys("study.sampler", sampler, set(sampler) | {"type"}, required={"type"})
    if sampler["type"] not in _SAMPLERS:
        v.fail("study.sampler.type", f"must be one of {', '.join(_SAMPLERS)} (got {sampler['type']!r})")
    sampler.setdefault("seed", 0)
    v.typed("study.sampler.seed", sampler["seed"], int)
    _check_kwargs(v, "study.sampler", sampler, sampler_class(sampler["type"]))
    pruner = dict(d.get("pruner") or {"type": "median"})
    v.keys("study.pruner", pruner, set(pruner) | {"type"}, required={"type"})
    if pruner["type"] not in _PRUNERS:
        v.fail("study.pruner.type", f"must be one of {', '.join(_PRUNERS)} (got {pruner['type']!r})")
    _check_kwargs(v, "study.pruner", pruner, _pruner_class(pruner["type"]))
    if len(objectives) > 1 and sampler["type"] in ("cmaes", "gp"):
        v.fail("study.sampler.type", f"{sampler['type']} cannot optimise several objectives (use tpe or nsga2)")
    return StudySettings(name=name, metric=metric, direction=direction, sampler=sampler, pruner=pruner,
                         objectives=tuple(objectives) if len(objectives) > 1 else (), constraints=constraints)


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


def _pruner_class(kind: str) -> Any:
    import optuna

    return {
        "median": optuna.pruners.MedianPruner,
        "asha": optuna.pruners.SuccessiveHalvingPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "none": optuna.pruners.NopPruner,
    }[kind]


def _check_kwargs(v: _Validator, where: str, d: dict[str, Any], cls: Any) -> None:
    import inspect

    sig = inspect.signature(cls.__init__)
    allowed = {n for n in sig.parameters if n != "self"}
    for k, val in d.items():
        if k == "type":
            continue
        if k not in allowed:
            v.fail(_join(where, k), f"unknown setting for {d['type']} (allowed: {', '.join(sorted(allowed))})")
        if isinstance(val, (dict, list)):
            v.fail(_join(where, k), f"expected a scalar, got {val!r}")


def _budget(v: _Validator, d: Any) -> Budget:
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


def _data(v: _Validator, d: Any, base_dir: Path | None,
          check_paths: bool = True) -> tuple[dict[str, Any], tuple[Param, ...]]:
    v.keys("data", d, set(_DATA_KEYS))
    out: dict[str, Any] = {}
    params: list[Param] = []
    for k, (typ, default) in _DATA_KEYS.items():
        val = d.get(k, default)
        if k in _DATA_SEARCHABLE and isinstance(val, dict):
            p = _data_param(v, k, val, typ)
            params.append(p)
            val = p.values()[0]  # stands for the setting in checks that need one value
            if val is not None and typ is not object:
                val = v.typed(f"data.{k}", val, typ)
        elif k not in _DATA_SEARCHABLE and isinstance(val, dict) and "type" in val and typ is not dict:
            v.fail(f"data.{k}", f"cannot be searched (searchable: {', '.join(_DATA_SEARCHABLE)})")
        elif val is not None and typ is not object:
            val = v.typed(f"data.{k}", val, typ)
        out[k] = val
    for k in ("path", "test_path"):
        if out[k] is not None:
            p = Path(out[k]).expanduser()
            if not p.is_absolute() and base_dir is not None:
                p = base_dir / p
            if check_paths and not p.exists():
                v.fail(f"data.{k}", f"no such file or directory: {p}")
            out[k] = str(p.resolve()) if check_paths else str(p)
    for k in ("val_fraction", "test_fraction"):
        if not 0.0 <= out[k] < 1.0:
            v.fail(f"data.{k}", f"must be in [0, 1) (got {out[k]})")
    if out["val_fraction"] <= 0:
        v.fail("data.val_fraction", f"must be > 0: selection needs a validation split (got {out['val_fraction']})")
    if out["val_fraction"] + out["test_fraction"] >= 1.0:
        v.fail("data", "val_fraction + test_fraction must be < 1")
    if out["format"] not in _FORMATS:
        v.fail("data.format", f"must be one of {', '.join(_FORMATS)} (got {out['format']!r})")
    if out["normalize"] not in ("zscore", "none"):
        v.fail("data.normalize", f"must be zscore or none (got {out['normalize']!r})")
    if out["on_bad"] not in ("error", "skip"):
        v.fail("data.on_bad", f"must be error or skip (got {out['on_bad']!r})")
    for k in ("segment_length", "fs", "max_segments"):
        if out[k] is not None and out[k] < 1:
            v.fail(f"data.{k}", f"must be >= 1 (got {out[k]})")
    syn = dict(_SYNTHETIC_KEYS)
    if out["synthetic"] is not None:
        v.keys("data.synthetic", out["synthetic"], set(_SYNTHETIC_KEYS))
        for k, val in out["synthetic"].items():
            syn[k] = v.typed(f"data.synthetic.{k}", val, int)
            if k != "seed" and syn[k] < 1:
                v.fail(f"data.synthetic.{k}", f"must be >= 1 (got {syn[k]})")
    out["synthetic"] = syn
    if len(out["classes"]) < (1 if out["multilabel"] else 2):
        v.fail("data.classes", f"needs at least two names (one with multilabel) (got {out['classes']!r})")
    # The data package owns the remaining rules (preprocessing ranges, label maps); every
    # combination of searched settings must make a valid specification.
    from atml.data import spec_from_section
    from atml.errors import DataError

    combos = _combinations(tuple(params))
    if len(combos) > MAX_DATA_VARIANTS:
        v.fail("data", f"{len(combos)} combinations of searched preprocessing settings "
                       f"({', '.join(p.name for p in params)}); at most {MAX_DATA_VARIANTS} "
                       "(each is preprocessed and cached)")
    for combo in combos:
        try:
            spec_from_section({**out, **combo})
        except DataError as e:
            msg = str(e)
            field = msg.split(" = ", 1)[0].removeprefix("DataSpec.") if msg.startswith("DataSpec.") else ""
            where = f"data.{field}" if field and " " not in field else "data"
            detail = msg.split(": ", 1)[-1] if field else msg
            if combo:
                detail += " (with " + ", ".join(f"{n}={c!r}" for n, c in combo.items()) + ")"
            v.fail(where, detail)
    if out["label_map"] is not None:
        for lab, cls in out["label_map"].items():
            if not isinstance(cls, int) or isinstance(cls, bool) or not 0 <= cls < len(out["classes"]):
                v.fail(f"data.label_map.{lab}", f"must be a class index in [0, {len(out['classes'])}) (got {cls!r})")
    return out, tuple(params)


def _combinations(params: tuple[Param, ...]) -> list[dict[str, Any]]:
    """Every combination of finite parameters, keyed by setting name ([{}] for none)."""
    import itertools

    names = [p.name.split(".", 1)[1] for p in params]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(p.values() for p in params))]


def encode_choices(choices: list[Any] | tuple[Any, ...]) -> tuple[str, ...] | None:
    """Categorical choices as Optuna stores them: None when all are scalars (kept as they
    are), else every choice as JSON text (lists such as bandpass [0.5, 40] or leads [II])."""
    if all(isinstance(c, str | int | float | bool | type(None)) for c in choices):
        return None
    return tuple(json.dumps(c) for c in choices)


def _data_param(v: _Validator, k: str, spec: dict[str, Any], typ: type) -> Param:
    """A searched preprocessing setting: categorical, or a stepped int/float range."""
    where = f"data.{k}"
    if "type" not in spec:
        v.fail(where, "a mapping here is a searched setting and needs type: categorical (or int/float with step)")
    if spec["type"] == "categorical":
        v.keys(where, spec, {"type", "choices"}, required={"choices"})
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            v.fail(_join(where, "choices"), f"must be a non-empty list (got {choices!r})")
        enc = encode_choices(choices)
        if enc is None:
            p = v.param(where, spec, object, where)
            assert isinstance(p, Param)
            return p
        if len(set(enc)) != len(enc):
            v.fail(_join(where, "choices"), f"duplicate choices {choices!r}")
        return Param(where, "categorical", choices=enc, encoded=True)
    if k not in ("target_fs", "window", "stride"):
        v.fail(_join(where, "type"), f"must be categorical for {k} (got {spec['type']!r})")
    p = v.param(where, spec, int if k == "target_fs" else float, where)
    assert isinstance(p, Param)
    if p.step is None:
        v.fail(where, "a searched data setting needs a step (each value is preprocessed and cached once), "
                      "or use categorical choices")
    return p


def _train(v: _Validator, d: Any) -> tuple[dict[str, Any], tuple[Param, ...]]:
    v.keys("train", d, set(TRAIN_DEFAULTS))
    fixed = {k: default for k, (_, default) in TRAIN_DEFAULTS.items()}
    params: list[Param] = []
    for k, spec in d.items():
        typ = TRAIN_DEFAULTS[k][0]
        res = v.param(f"train.{k}", spec, typ, f"train.{k}")
        if isinstance(res, Param):
            params.append(res)
            fixed.pop(k, None)
            values = list(res.choices) if res.kind == "categorical" else [res.low, res.high]
        else:
            fixed[k] = res
            values = [res]
        for val in values:
            _check_train_value(v, k, val)
    return fixed, tuple(params)


def _check_train_value(v: _Validator, k: str, val: Any) -> None:
    if k == "optimizer" and val not in _OPTIMIZERS:
        v.fail("train.optimizer", f"must be one of {', '.join(_OPTIMIZERS)} (got {val!r})")
    positive = {"epochs", "batch_size", "lr", "patience", "lr_patience", "min_epochs"}
    if k in positive and val <= 0:
        v.fail(f"train.{k}", f"must be > 0 (got {val})")
    if k in ("weight_decay", "gap", "momentum", "stretch") and val < 0:
        v.fail(f"train.{k}", f"must be >= 0 (got {val})")
    if k == "augment" and not 0 <= val <= 1:
        v.fail("train.augment", f"must be in [0, 1] (got {val})")
    if k in ("lr_factor", "label_smoothing", "ema") and not 0 <= val < 1:
        v.fail(f"train.{k}", f"must be in [0, 1) (got {val})")


def _model(
    v: _Validator, d: Any
) -> tuple[dict[str, tuple[dict[str, Any], tuple[Param, ...]]], dict[str, Any], tuple[Param, ...]]:
    from atml.models import family_names, family_params  # lazy: pulls in torch

    if not isinstance(d, dict):
        v.fail("model", f"expected a mapping, got {type(d).__name__}")
    if "families" not in d:
        v.fail("model.families", "missing required key")
    fams = d["families"]
    if not isinstance(fams, dict) or not fams:
        v.fail("model.families", "must map at least one family name to its parameters")
    known = family_names()
    families: dict[str, tuple[dict[str, Any], tuple[Param, ...]]] = {}
    for fam, spec in fams.items():
        if fam not in known:
            v.fail(f"model.families.{fam}", f"unknown model family (known: {', '.join(known)})")
        spec = spec or {}
        allowed = family_params(fam)
        v.keys(f"model.families.{fam}", spec, set(allowed))
        fixed: dict[str, Any] = {}
        params: list[Param] = []
        for k, s in spec.items():
            res = v.param(f"model.families.{fam}.{k}", s, _hparam_type(allowed[k]), f"{fam}.{k}")
            (params.append(res) if isinstance(res, Param) else fixed.__setitem__(k, res))
        families[fam] = (fixed, tuple(params))
    shared_fixed: dict[str, Any] = {}
    shared: list[Param] = []
    for k, s in d.items():
        if k == "families":
            continue
        for fam in families:
            if k not in family_params(fam):
                v.fail(f"model.{k}", f"unknown key: not a parameter of family {fam} (shared model "
                       "parameters must exist in every family)")
        res = v.param(f"model.{k}", s, _hparam_type(family_params(next(iter(families)))[k]), f"model.{k}")
        (shared.append(res) if isinstance(res, Param) else shared_fixed.__setitem__(k, res))
    _check_buildable(v, families, shared_fixed, shared)
    return families, shared_fixed, tuple(shared)


def _hparam_type(default: Any) -> type:
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    if isinstance(default, str):
        return str
    return object


def _check_buildable(v: _Validator, families: dict, shared_fixed: dict, shared: list[Param]) -> None:
    """Catch values a model rejects (e.g. width 0) at load time, not in trial 37."""
    from atml.models import build_model

    def validate_hparams(fam: str, hp: dict[str, Any]) -> None:
        build_model(fam, in_channels=1, n_classes=2, **hp)

    for fam, (fixed, params) in families.items():
        for p in [*shared, *params]:
            key = p.name.split(".", 1)[1]
            vals = list(p.choices) if p.kind == "categorical" else [p.low, p.high]
            for val in vals:
                try:
                    validate_hparams(fam, {**shared_fixed, **fixed, key: val})
                except SpaceError as e:
                    where = f"model.{key}" if p.name.startswith("model.") else f"model.families.{p.name}"
                    v.fail(where, str(e))
        try:
            validate_hparams(fam, {**shared_fixed, **fixed})
        except SpaceError as e:
            v.fail(f"model.families.{fam}", str(e))


def _gate(v: _Validator, d: Any) -> GateSettings:
    v.keys("gate", d, set(_GATE_KEYS))
    vals: dict[str, Any] = {}
    for k, (typ, default) in _GATE_KEYS.items():
        vals[k] = v.typed(f"gate.{k}", d.get(k, default), typ)
    for m in vals["metrics"]:
        if m not in _METRICS or m == "val_loss":
            v.fail("gate.metrics", f"unknown metric {m!r} (allowed: f1, accuracy, precision, recall, auroc)")
    for k in ("pass", "avoid_below", "stop_at", "radius"):
        if vals[k] is not None and not 0.0 <= vals[k] <= 1.0:
            v.fail(f"gate.{k}", f"must be in [0, 1] (got {vals[k]})")
    for k in ("keep", "patience_trials"):
        if vals[k] is not None and vals[k] < 1:
            v.fail(f"gate.{k}", f"must be >= 1 (got {vals[k]})")
    if vals["max_onnx_kb"] is not None and vals["max_onnx_kb"] <= 0:
        v.fail("gate.max_onnx_kb", f"must be > 0 (got {vals['max_onnx_kb']})")
    return GateSettings(
        metrics=tuple(vals["metrics"]), pass_=vals["pass"], avoid_below=vals["avoid_below"],
        keep=vals["keep"], stop_at=vals["stop_at"], patience_trials=vals["patience_trials"],
        max_onnx_kb=vals["max_onnx_kb"], radius=vals["radius"],
    )

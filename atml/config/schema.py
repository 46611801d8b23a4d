"""The validated search space as value objects; ``suggest(trial)`` -> :class:`TrialConfig`."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any

from atml.config.training import TrainConfig
from atml.config.trial_config import TrialConfig

__all__ = [
    "Param", "StudySettings", "Budget", "GateSettings", "SearchSpace", "WarmStart", "Distill",
    "combinations", "encode_choices", "field_defaults",
]


def field_defaults(cls: type) -> dict[str, Any]:
    """Field name -> default of a dataclass (a fresh value for a ``default_factory``), in field order;
    fields without a default are left out."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


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

    @property
    def key(self) -> str:
        """The setting's name inside its section (``train.lr`` -> ``lr``, ``afnet.width`` -> ``width``)."""
        return self.name.split(".", 1)[1]


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
class ValidationSettings:
    """How a trial is scored: one subject hold-out (``holdout``) or subject-grouped k-fold CV."""

    scheme: str = "holdout"  # holdout | subject_kfold
    folds: int = 5
    repeats: int = 1  # the fold deal repeated with other seeds (repeat r: seed fold_seed(seed, r))
    seed: int = 0  # the same folds for every trial of a study: their scores are paired
    # Share of the training folds' subjects held out inside each fold for early stopping and
    # the epoch choice (None: data.val_fraction); 0: a fixed train.epochs, nothing held out.
    inner_fraction: float | None = None
    confidence: float = 0.9  # of the one-sided bootstrap bounds (f1_lcb, accuracy_lcb)

    @property
    def cv(self) -> bool:
        return self.scheme == "subject_kfold"

    @property
    def steps(self) -> int:
        """Folds a trial trains (its pruning steps under cross-validation)."""
        return self.folds * self.repeats if self.cv else 0


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
class WarmStart:
    """``model.init``: start every trial from a trained model's weights (:mod:`atml.trial.warmstart`).

    ``checkpoint`` is the source's ``model.pt`` as resolved when the space was loaded (the
    study stores it in place of ``from``); ``fixed`` holds freeze, lr_scale, head and leads
    unless searched (``params``: ``init.freeze``, ``init.lr_scale``).
    """

    source: str  # ``from`` as written
    checkpoint: str
    fixed: dict[str, Any] = field(default_factory=dict)
    params: tuple[Param, ...] = ()

    def suggest(self, trial: Any) -> dict[str, Any]:
        """The trial's warm start: ``{"from": checkpoint, "freeze", "lr_scale", "head", "leads"}``."""
        return {"from": self.checkpoint, **self.fixed, **{p.key: p.suggest(trial) for p in self.params}}


@dataclass(frozen=True)
class Distill:
    """``train.distill``: train on a teacher's soft targets (:mod:`atml.trial.distill`).

    ``teacher`` is the resolved source (a checkpoint ``.pt`` or an ``.onnx`` export, absolute
    when the space was loaded); ``fixed`` holds alpha and temperature unless searched
    (``params``: ``train.distill.alpha``, ``train.distill.temperature``).
    """

    source: str  # ``teacher`` as written
    teacher: str
    fixed: dict[str, Any] = field(default_factory=dict)
    params: tuple[Param, ...] = ()

    def suggest(self, trial: Any) -> dict[str, Any]:
        """The trial's distillation: ``{"teacher", "source", "alpha", "temperature"}``."""
        return {"teacher": self.teacher, "source": self.source, **self.fixed,
                **{p.name.rsplit(".", 1)[1]: p.suggest(trial) for p in self.params}}


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
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    init: WarmStart | None = None  # model.init: a warm start from a trained model
    distill: Distill | None = None  # train.distill: soft targets of a teacher

    @property
    def params(self) -> tuple[Param, ...]:
        """Every parameter that can be suggested, including conditional ones."""
        out = list(self.data_params)
        out.extend(self.train_params)
        out.extend(self.distill.params if self.distill is not None else ())
        if len(self.families) > 1:
            out.append(Param("model.family", "categorical", choices=tuple(self.families)))
        out.extend(self.model_params)
        out.extend(self.init.params if self.init is not None else ())
        for _, params in self.families.values():
            out.extend(params)
        return tuple(out)

    @property
    def precisions(self) -> tuple[str, ...]:
        """Every ``train.precision`` a trial of this space may train with (fp16 needs a CUDA device)."""
        for p in self.train_params:
            if p.key == "precision":
                return tuple(p.values())
        return (str(self.train_fixed.get("precision", TrainConfig.precision)),)

    def suggest(self, trial: Any) -> TrialConfig:
        """Sample one configuration; its ``data`` holds only the searched preprocessing
        settings (merge with :meth:`data_section`)."""
        data = {p.key: p.suggest(trial) for p in self.data_params}
        train = dict(self.train_fixed)
        for p in self.train_params:
            section, _, sub = p.key.partition(".")  # train.prune.amount -> train["prune"]["amount"]
            if sub:
                train[section] = {**(train.get(section) or {}), sub: p.suggest(trial)}
            else:
                train[p.key] = p.suggest(trial)
        if self.distill is not None:
            train["distill"] = self.distill.suggest(trial)
        names = list(self.families)
        family = names[0] if len(names) == 1 else trial.suggest_categorical("model.family", names)
        hparams = dict(self.model_fixed)
        for p in self.model_params:
            hparams[p.key] = p.suggest(trial)
        fixed, params = self.families[family]
        hparams.update(fixed)
        for p in params:
            hparams[p.key] = p.suggest(trial)
        init = self.init.suggest(trial) if self.init is not None else {}
        return TrialConfig(data=data, train=TrainConfig(**train), family=family, hparams=hparams, init=init)

    def data_section(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``data`` section with one trial's searched preprocessing settings filled in
        (without ``overrides``: each searched setting at its first value)."""
        return {**self.data, **(overrides or {})}

    def data_variants(self) -> list[dict[str, Any]]:
        """Every combination of the searched preprocessing settings ([{}] when none is searched)."""
        return combinations(self.data_params)

    def params_from_flat(self, flat: dict[str, Any]) -> TrialConfig:
        """Rebuild a configuration from a trial's stored (flat) parameters."""

        class _Fixed:
            def suggest_float(self, name: str, *a: Any, **k: Any) -> Any:
                return flat[name]

            suggest_int = suggest_categorical = suggest_float

        return self.suggest(_Fixed())

    def to_json(self) -> str:
        """What a study stores (``{"source", "raw"}``); :func:`space_from_stored` reads it back."""
        return json.dumps({"source": self.source, "raw": self.raw}, sort_keys=True)


def combinations(params: tuple[Param, ...]) -> list[dict[str, Any]]:
    """Every combination of finite parameters, keyed by setting name ([{}] for none)."""
    names = [p.key for p in params]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(p.values() for p in params))]


def encode_choices(choices: list[Any] | tuple[Any, ...]) -> tuple[str, ...] | None:
    """Categorical choices as Optuna stores them: None when all are scalars (kept as they
    are), else every choice as JSON text (lists such as bandpass [0.5, 40] or leads [II])."""
    if all(isinstance(c, str | int | float | bool | type(None)) for c in choices):
        return None
    return tuple(json.dumps(c) for c in choices)

"""The search space: YAML -> validated :class:`SearchSpace`; ``suggest(trial)`` -> :class:`TrialConfig`.

A parameter in the ``train`` or ``model`` sections is either a fixed value or a mapping
with a ``type``::

    lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    width: {type: int, low: 4, high: 32, step: 4}
    batch_size: {type: categorical, choices: [32, 64]}
    epochs: 20                      # fixed

Model families are conditional: ``model.families.<family>.<param>`` exists only when
``model.family`` is that family, and is named ``<family>.<param>`` in the study.

Modules: ``schema`` (value objects), ``training`` (TrainConfig), ``trial_config``,
``validator`` (generic checks), ``*_rules`` (one per section), ``build`` (the only checks
that need the model registry and torch), ``load`` (YAML, mappings, stored spaces), ``seeds``.
"""

from __future__ import annotations

from atml.config.data_rules import MAX_DATA_VARIANTS, data_formats
from atml.config.load import load_space, space_from_dict, space_from_stored
from atml.config.schema import (
    Budget,
    GateSettings,
    Param,
    SearchSpace,
    StudySettings,
    ValidationSettings,
    encode_choices,
)
from atml.config.seeds import trial_seed
from atml.config.study_rules import METRICS, pruner_class, sampler_class
from atml.config.training import TRAIN_DEFAULTS, TRAIN_KEYS, TrainConfig
from atml.config.trial_config import TrialConfig
from atml.config.validator import Validator

__all__ = [
    "ValidationSettings",
    "TRAIN_DEFAULTS", "TRAIN_KEYS", "MAX_DATA_VARIANTS", "METRICS",
    "Param", "StudySettings", "Budget", "GateSettings", "SearchSpace", "TrainConfig", "TrialConfig",
    "Validator",
    "load_space", "space_from_dict", "space_from_stored", "sampler_class", "pruner_class",
    "encode_choices", "data_formats", "trial_seed",
]

"""The search space: YAML -> validated :class:`SearchSpace`; trial seeds."""

from __future__ import annotations

from atml.config.seeds import (  # noqa: F401
    trial_seed,
)
from atml.config.space import (  # noqa: F401
    MAX_DATA_VARIANTS,
    TRAIN_DEFAULTS,
    Budget,
    GateSettings,
    Param,
    SearchSpace,
    StudySettings,
    encode_choices,
    load_space,
    sampler_class,
    space_from_dict,
)

__all__ = ['TRAIN_DEFAULTS', 'MAX_DATA_VARIANTS', 'Param', 'StudySettings', 'Budget', 'GateSettings', 'SearchSpace', 'load_space', 'space_from_dict', 'sampler_class', 'encode_choices', 'trial_seed']

"""One trial: the objective, prepared data and variants, the checkpoint format."""

from __future__ import annotations

from atml.trial.objective import (  # noqa: F401
    SKIPPED_ATTR,
    DataVariants,
    Objective,
    PreparedData,
    checkpoint_dir,
    data_spec,
    load_checkpoint,
    prepare_data,
    was_skipped,
)

__all__ = ['data_spec', 'SKIPPED_ATTR', 'was_skipped', 'PreparedData', 'prepare_data', 'DataVariants', 'checkpoint_dir', 'load_checkpoint', 'Objective']

"""One trial: the objective (orchestration only), prepared data and variants, the checkpoint
format, the checks before training, per-epoch pruning and the gate's verdict."""

from __future__ import annotations

from atml.trial.checkpoint import (
    CHECKPOINT_FILE,
    atomic_save,
    checkpoint_dir,
    load_checkpoint,
    save_checkpoint,
)
from atml.trial.data import DataVariants, PreparedData, data_spec, prepare_data
from atml.trial.filing import Trained, apply_gate, file_trial
from atml.trial.objective import Objective, objective_values
from atml.trial.pruning import (
    MEDIAN_STARTUP_TRIALS,
    MEDIAN_WARMUP_STEPS,
    epoch_reporter,
    median_rule,
    should_prune,
)
from atml.trial.screen import check_avoid, check_size, skip

__all__ = [
    "Objective", "objective_values",
    "data_spec", "PreparedData", "prepare_data", "DataVariants",
    "CHECKPOINT_FILE", "checkpoint_dir", "atomic_save", "save_checkpoint", "load_checkpoint",
    "MEDIAN_STARTUP_TRIALS", "MEDIAN_WARMUP_STEPS", "median_rule", "should_prune", "epoch_reporter",
    "skip", "check_avoid", "check_size",
    "Trained", "apply_gate", "file_trial",
]

"""The objective on real data: metrics, checkpoint, pruning, and a trial skipped before training."""

from __future__ import annotations

import optuna
import pytest
from _helpers import small_space

from atml import records
from atml.config import space_from_dict
from atml.search.strategy import make_pruner
from atml.train import evaluate
from atml.trial import Objective, load_checkpoint


def test_objective_stores_metrics_checkpoint_and_pruner_prunes(synthetic, tmp_path):
    raw = small_space("prune", n_trials=3, epochs=3)
    raw["study"]["pruner"] = {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0}
    raw["model"] = {"families": {"afnet": {"width": 8, "depth": 2}}}
    raw["train"]["lr"] = {"type": "float", "low": 1e-7, "high": 5e-3, "log": True}
    raw["train"]["optimizer"] = "adamw"
    space = space_from_dict(raw)
    study = optuna.create_study(direction="maximize", pruner=make_pruner(space.study, 3))
    study.enqueue_trial({"train.lr": 5e-3})
    study.enqueue_trial({"train.lr": 1e-7})
    objective = Objective(space, synthetic, tmp_path)
    study.optimize(objective, n_trials=2)
    good, bad = study.trials
    assert good.state == optuna.trial.TrialState.COMPLETE
    assert good.value == pytest.approx(good.user_attrs["metrics"]["f1"])
    assert set(good.intermediate_values) == {0, 1, 2}
    model, ck = load_checkpoint(tmp_path / "prune" / good.user_attrs["checkpoint"])
    assert ck["family"] == "afnet" and ck["trial"] == good.number
    again = evaluate(model, synthetic.x_val, synthetic.y_val)
    assert again["f1"] == pytest.approx(good.user_attrs["metrics"]["f1"])
    assert bad.state == optuna.trial.TrialState.PRUNED
    assert "pruned by median at epoch 0" in bad.user_attrs["reason"]
    assert list(bad.intermediate_values) == [0]
    # a pruned trial keeps the epochs it ran; only the completed one records its result
    assert len(bad.user_attrs["history"]) == 1 and "metrics" not in bad.user_attrs
    assert len(good.user_attrs["history"]) == good.user_attrs["epochs_run"] == 3
    assert not records.was_skipped(good) and not records.was_skipped(bad)


def test_size_cap_skips_before_training_and_writes_no_checkpoint(synthetic, tmp_path):
    raw = small_space("cap", n_trials=1, epochs=1)
    raw["model"] = {"families": {"afnet": {"width": 8, "depth": 2}}}
    raw["gate"] = {"max_onnx_kb": 0.5}
    space = space_from_dict(raw)
    study = optuna.create_study(direction="maximize")
    study.optimize(Objective(space, synthetic, tmp_path), n_trials=1)
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values == {}
    assert records.was_skipped(t) and records.reason(t).startswith("size limit: ONNX")
    assert t.user_attrs["onnx_kb"] > 0.5 and t.user_attrs["n_params"] > 0
    assert not (tmp_path / "cap" / "trials").exists()
    # the capped point goes on the avoid list, so its neighbourhood is not sampled again
    assert [k for k in study.user_attrs if k.startswith(records.AVOID_PREFIX)] == [f"{records.AVOID_PREFIX}0"]


def test_a_bound_on_a_subject_spread_metric_is_a_constraint(synthetic, tmp_path):
    """min_subject_f1_min: no validation person below it; recorded once trained, the trial
    completes either way and only a feasible one can be the study's best."""
    from atml.errors import SpaceError

    raw = small_space("spread", n_trials=1, epochs=1)
    raw["model"] = {"families": {"afnet": {"width": 4, "depth": 2}}}
    raw["study"]["constraints"] = {"min_subject_f1_min": 0.999, "min_f1": 0.0}
    space = space_from_dict(raw)
    study = optuna.create_study(direction="maximize")
    study.optimize(Objective(space, synthetic, tmp_path), n_trials=1)
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.COMPLETE
    m = t.user_attrs["metrics"]
    assert t.constraints["min_subject_f1_min"] == pytest.approx(0.999 - m["subject_f1_min"])
    assert t.constraints["min_f1"] == pytest.approx(-m["f1"])
    assert records.feasible(t) == (m["subject_f1_min"] >= 0.999)
    raw["study"]["constraints"] = {"min_subject_f1_min": 1.5}
    with pytest.raises(SpaceError, match=r"study.constraints.min_subject_f1_min: must be in \[0, 1\]"):
        space_from_dict(raw)
    raw["study"]["constraints"] = {"min_val_loss": 0.5}
    with pytest.raises(SpaceError, match="study.constraints.min_val_loss: unknown constraint"):
        space_from_dict(raw)

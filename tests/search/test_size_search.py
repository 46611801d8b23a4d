"""Size-aware search: two objectives (F1, ONNX KB), constraints, pruning without Optuna pruners."""

from __future__ import annotations

import subprocess

import optuna
import pytest
from _helpers import small_space

from atml.config import load_space, space_from_dict
from atml.data import DataSpec
from atml.records import best_trial, feasible
from atml.search.strategy import make_pruner, make_sampler
from atml.storage import open_storage
from atml.trial import Objective, median_rule, prepare_data


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    spec = DataSpec(synthetic_subjects=8, synthetic_per_subject=20, synthetic_seed=5, drop_labels=("UNK",))
    return prepare_data(spec, tmp_path_factory.mktemp("cache"))


def _space(**study):
    raw = small_space("size", n_trials=4, epochs=2)
    raw["study"].update(study)
    raw["study"].pop("metric", None)
    raw["study"].pop("direction", None)
    raw["model"] = {"families": {"afnet": {"width": {"type": "int", "low": 3, "high": 16}, "depth": 3}}}
    return space_from_dict(raw)


def test_shipped_small_space_has_two_objectives_and_a_constraint():
    s = load_space("search_spaces/afib_small.yaml")
    assert s.study.all_objectives == (("f1", "maximize"), ("onnx_kb", "minimize"))
    assert s.study.constraints == {"max_onnx_kb": 64.0} and s.study.multi


def test_two_objectives_constraints_and_best_feasible(synthetic, tmp_path):
    space = _space(objectives=[{"metric": "f1", "direction": "maximize"},
                               {"metric": "onnx_kb", "direction": "minimize"}],
                   constraints={"max_onnx_kb": 20})
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(space.study),
                                pruner=make_pruner(space.study, 2))
    for w in (3, 16, 4):
        study.enqueue_trial({"afnet.width": w})
    study.optimize(Objective(space, synthetic, tmp_path), n_trials=3)
    small, big, other = study.trials
    assert small.state == optuna.trial.TrialState.COMPLETE
    assert small.values[1] == pytest.approx(small.user_attrs["onnx_kb"], abs=0.01) and small.values[1] <= 20
    # the wide model breaks the constraint: not trained, but Optuna records the violation
    assert big.state == optuna.trial.TrialState.PRUNED and big.intermediate_values == {}
    assert big.user_attrs["reason"].startswith("constraint:") and big.user_attrs["onnx_kb"] > 20
    assert big.constraints["max_onnx_kb"] > 0 and not feasible(big)
    assert feasible(small)
    bt = best_trial(study)
    assert bt.number in {t.number for t in study.best_trials} and bt.user_attrs["onnx_kb"] <= 20


def test_median_rule_prunes_multi_objective(synthetic):
    space = _space(objectives=[{"metric": "f1", "direction": "maximize"},
                               {"metric": "n_params", "direction": "minimize"}],
                   pruner={"type": "median", "n_startup_trials": 2, "n_warmup_steps": 0})
    study = optuna.create_study(directions=["maximize", "minimize"])
    for f1 in (0.8, 0.9, 0.7):
        t = study.ask()
        t.set_user_attr("history", [{"f1": f1}, {"f1": f1 + 0.05}])
        study.tell(t, [f1, 100])
    assert median_rule(study, space.study, 0, 0.75)       # below the median 0.8
    assert not median_rule(study, space.study, 0, 0.85)
    assert not median_rule(study, space.study, 5, 0.1)    # nobody reached epoch 5
    none = _space(objectives=[{"metric": "f1", "direction": "maximize"},
                              {"metric": "n_params", "direction": "minimize"}], pruner={"type": "none"})
    assert not median_rule(study, none.study, 0, 0.0)


@pytest.mark.slow
def test_small_search_then_export_best_feasible(tmp_path, atml_cmd):
    db = tmp_path / "s.db"
    r = subprocess.run([*atml_cmd, "search", "--space", "search_spaces/afib_small.yaml", "--storage",
                        f"sqlite:///{db}", "--n-trials", "3", "--workers", "2", "--no-progress"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Pareto front" in r.stdout
    study = optuna.load_study(study_name="afib_small", storage=open_storage(f"sqlite:///{db}"))
    assert len(study.directions) == 2
    assert all(t.user_attrs["onnx_kb"] <= 64 for t in study.trials if t.state.name == "COMPLETE")
    out = tmp_path / "best.onnx"
    r = subprocess.run([*atml_cmd, "export", "--storage", f"sqlite:///{db}", "--study", "afib_small",
                        "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size <= 64 * 1024
    assert f"#{best_trial(study).number}" in r.stdout or f"trial {best_trial(study).number}" in r.stdout

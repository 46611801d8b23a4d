"""Trials scored as deployed: int8 size, int8 metrics and latency as objectives, constraints and
gate metrics; MACs known before training; bad names refused before any trial starts."""

from __future__ import annotations

import subprocess

import optuna
import pytest
from _helpers import small_space
from torch import nn

from atml.config import load_space, space_from_dict
from atml.errors import SpaceError
from atml.gate import folder_name
from atml.models import build_model, count_macs
from atml.records import feasible, was_skipped
from atml.storage import open_storage, study_names
from atml.trial import Objective, objective_values
from atml.trial.deployed import wanted

_TWO = [{"metric": "f1", "direction": "maximize"}, {"metric": "int8_kb", "direction": "minimize"}]


def _raw(name: str, **study) -> dict:
    raw = small_space(name, n_trials=2, epochs=1)
    for k in ("metric", "direction"):
        raw["study"].pop(k)
    raw["study"].update(study)
    return raw


def test_macs_counts_conv_and_linear():
    model = nn.Sequential(nn.Conv1d(2, 4, 5, padding=2), nn.ReLU(), nn.Conv1d(4, 4, 3, groups=2, padding=1),
                          nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 3))
    # outputs x in_channels / groups x kernel, per layer, on one segment of 100 samples
    assert count_macs(model, 2, 100) == 4 * 100 * 2 * 5 + 4 * 100 * 2 * 3 + 3 * 4
    net = build_model("afnet", in_channels=1, n_classes=2, width=4, depth=3)
    net.train()
    assert count_macs(net, 1, 1250) > 0 and net.training  # its mode is left as it was


def test_shipped_tiny_space_is_a_deployed_pareto_search():
    s = load_space("search_spaces/afib_tiny.yaml")
    assert s.study.all_objectives == (("f1", "maximize"), ("int8_kb", "minimize"))
    assert set(s.study.constraints) == {"max_macs", "max_int8_kb"}
    assert wanted(s) == {"int8_kb"} and set(s.families) == {"afnet", "sepnet"}


def test_only_a_space_naming_a_deployed_figure_measures_one():
    assert wanted(space_from_dict(small_space("plain"))) == set()
    assert wanted(space_from_dict(_raw("c", constraints={"min_int8_f1": 0.5, "max_params": 9000}))) == {"int8_f1"}
    gate = small_space("g", gate={"metrics": ["f1", "int8_recall"], "pass": 0.9})
    assert wanted(space_from_dict(gate)) == {"int8_recall"}
    # gate metrics the gate never applies (no threshold) are not measured
    assert wanted(space_from_dict(small_space("g2", gate={"metrics": ["int8_f1"]}))) == set()


@pytest.mark.parametrize("study, gate, field", [
    ({"objectives": [_TWO[0], {"metric": "int8_bogus", "direction": "minimize"}]}, None,
     "study.objectives[1].metric"),
    ({"objectives": [{"metric": "int8_f1", "direction": "maximize"}, _TWO[1]]}, None,
     "study.objectives[0].metric: the first objective must be a validation metric"),
    ({"objectives": _TWO, "constraints": {"max_latency_ms": -1}}, None, "study.constraints.max_latency_ms: must be > 0"),
    ({"metric": "f1", "constraints": {"min_int8_f1": 1.5}}, None, "study.constraints.min_int8_f1: must be in [0, 1]"),
    ({"metric": "f1", "constraints": {"min_int8_val_loss": 0.5}}, None, "study.constraints.min_int8_val_loss: unknown"),
    ({"metric": "f1"}, {"metrics": ["int8_bogus"], "pass": 0.5}, "gate.metrics: unknown metric 'int8_bogus'"),
])
def test_bad_deployed_settings_name_the_field(study, gate, field):
    raw = _raw("bad", **study)
    if gate:
        raw["gate"] = gate
    with pytest.raises(SpaceError) as e:
        space_from_dict(raw)
    assert field in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("study, field", [
    ({"objectives": [_TWO[0], {"metric": "int8_bogus", "direction": "minimize"}]}, "study.objectives[1].metric"),
    ({"objectives": _TWO, "constraints": {"max_latency_ms": -1}}, "study.constraints.max_latency_ms"),
])
def test_bad_names_exit_2_before_any_study(study, field, tmp_path, write_space, atml_cmd):
    db = tmp_path / "s.db"
    r = subprocess.run([*atml_cmd, "search", "--space", str(write_space(_raw("bad", **study))), "--storage",
                        f"sqlite:///{db}", "--workers", "1", "--no-progress"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and field in err[0], r.stderr
    assert not db.exists() or study_names(open_storage(f"sqlite:///{db}")) == []
    assert not (tmp_path / "studies" / "bad").exists()


def test_max_macs_rejects_before_training_and_nothing_deployed_is_paid(synthetic, tmp_path):
    limit = count_macs(build_model("afnet", in_channels=1, n_classes=2, width=5, depth=2), 1, 1250)
    raw = _raw("macs", metric="f1", direction="maximize", constraints={"max_macs": limit})
    raw["model"] = {"families": {"afnet": {"width": {"type": "int", "low": 4, "high": 6}, "depth": 2}}}
    space = space_from_dict(raw)
    study = optuna.create_study(study_name="macs", storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize")
    for w in (6, 4):
        study.enqueue_trial({"afnet.width": w})
    study.optimize(Objective(space, synthetic, tmp_path), n_trials=2)
    big, small = study.trials
    assert big.state == optuna.trial.TrialState.PRUNED and was_skipped(big) and big.intermediate_values == {}
    assert big.user_attrs["reason"].startswith("constraint:") and "max_macs" in big.user_attrs["reason"]
    assert big.user_attrs["macs"] > limit and big.constraints["max_macs"] > 0
    assert "checkpoint" not in big.user_attrs and not (tmp_path / "macs" / "trials" / f"{big.number:05d}").exists()
    assert small.state == optuna.trial.TrialState.COMPLETE and feasible(small) and small.user_attrs["macs"] <= limit
    # a space naming no deployed figure exports nothing after training
    assert not {"int8_kb", "latency_ms", "deployed"} & set(small.user_attrs)
    assert not any(k.startswith("int8_") for k in small.user_attrs["metrics"])


@pytest.mark.slow
def test_cross_validated_trial_scores_int8_fold_models_out_of_fold(synthetic, tmp_path):
    raw = _raw("cvq", objectives=_TWO, constraints={"min_int8_f1": 0.99, "max_latency_ms": 1000})
    raw["model"] = {"families": {"afnet": {"width": 4, "depth": 2}}}
    raw["validation"] = {"scheme": "subject_kfold", "folds": 3}
    space = space_from_dict(raw)
    study = optuna.create_study(study_name="cvq", storage=f"sqlite:///{tmp_path / 's.db'}",
                                directions=["maximize", "minimize"])
    study.optimize(Objective(space, synthetic, tmp_path), n_trials=1)
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.COMPLETE
    assert "pooled out-of-fold" in t.user_attrs["deployed"]["scored_on"]
    m = t.user_attrs["metrics"]
    assert 0 <= m["int8_f1"] <= 1 and "int8_accuracy" in m and "int8_subject_accuracy_min" in m
    assert t.values[1] == t.user_attrs["int8_kb"] > 0
    assert t.constraints["min_int8_f1"] == pytest.approx(0.99 - m["int8_f1"])
    assert t.constraints["max_latency_ms"] == pytest.approx(t.user_attrs["latency_ms"] - 1000)


@pytest.mark.slow
def test_search_on_int8_size_records_deployed_figures_and_gates_on_int8_f1(tmp_path, write_space, atml_cmd):
    raw = _raw("dep", objectives=_TWO, constraints={"max_latency_ms": 1000})
    raw["gate"] = {"metrics": ["int8_f1"], "pass": 0.0}  # every trained trial files a folder named from int8_f1
    url = f"sqlite:///{tmp_path / 's.db'}"
    r = subprocess.run([*atml_cmd, "search", "--space", str(write_space(raw)), "--storage", url,
                        "--workers", "1", "--no-progress"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    study = optuna.load_study(study_name="dep", storage=open_storage(url))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done
    for t in done:
        ua, m = t.user_attrs, t.user_attrs["metrics"]
        assert ua["int8_kb"] > 0 and ua["latency_ms"] > 0 and 0 <= m["int8_f1"] <= 1 and ua["macs"] > 0
        assert t.values == [pytest.approx(m["f1"]), ua["int8_kb"]]
        assert ua["deployed"]["latency"]["threads"] == 1 and ua["deployed"]["latency"]["batch"] == 1
        assert feasible(t) and t.constraints["max_latency_ms"] == pytest.approx(ua["latency_ms"] - 1000)
        # the gate took lo/hi over the int8 model's F1
        assert ua["gate"] == {"lo": m["int8_f1"], "hi": m["int8_f1"]}
        folder = tmp_path / "dep" / "gate" / ua["gate_folder"]
        assert ua["gate_folder"].startswith(folder_name(m["int8_f1"], m["int8_f1"]))
        assert "Int8 F1 Score: " in (folder / "evaluation_metrics.txt").read_text()
    # int8_kb is the size of the int8 network `atml export --int8` writes for that trial
    t = done[-1]
    out = tmp_path / "t.onnx"
    r = subprocess.run([*atml_cmd, "export", "--storage", url, "--study", "dep", "--trial", str(t.number), "--out",
                        str(out), "--int8", "--no-preprocessing"], capture_output=True, text=True, timeout=600,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "t.int8.onnx").stat().st_size == round(t.user_attrs["int8_kb"] * 1024)


def test_objective_values_take_deployed_sizes():
    st = space_from_dict(_raw("v", objectives=[_TWO[0], {"metric": "latency_ms", "direction": "minimize"},
                                               {"metric": "int8_f1", "direction": "maximize"}])).study
    got = objective_values(st, {"f1": 0.8, "int8_f1": 0.75}, 10.0, 900, {"int8_kb": 3.5, "latency_ms": 0.2})
    assert got == [0.8, 0.2, 0.75]

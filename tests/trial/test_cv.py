"""A cross-validated trial on real IESD segments (txt_sample: subjects 1, 19, 36, three folds)."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import optuna
import pytest
import yaml

from atml.config import space_from_dict
from atml.data import DataSpec
from atml.metrics import binary_metrics
from atml.search.strategy import make_pruner
from atml.trial import Objective, load_checkpoint, prepare_data
from atml.trial.checkpoint import load_oof


def _space(txt_sample, **validation):
    return {
        "study": {"name": "cv", "metric": "f1", "sampler": {"type": "random", "seed": 3},
                  "pruner": {"type": "median", "n_startup_trials": 1}},
        "budget": {"n_trials": 2},
        "data": {"path": str(txt_sample), "target_fs": 125, "val_fraction": 0.34, "test_fraction": 0},
        "validation": {"scheme": "subject_kfold", "folds": 3, **validation},
        "train": {"epochs": 2, "batch_size": 32, "lr": {"type": "float", "low": 1e-3, "high": 5e-3, "log": True},
                  "patience": 2},
        "model": {"families": {"afnet": {"width": 4, "depth": 2}}},
    }


@pytest.fixture(scope="module")
def txt_data(txt_sample, tmp_path_factory):
    spec = DataSpec(path=txt_sample, target_fs=125, val_fraction=0.34, test_fraction=0.0)
    return prepare_data(spec, tmp_path_factory.mktemp("cache"))


def test_cv_trial_pools_out_of_fold_predictions_and_never_steers_on_the_held_fold(txt_data, txt_sample, tmp_path):
    space = space_from_dict(_space(txt_sample))
    study = optuna.create_study(direction="maximize", pruner=make_pruner(space.study, 2, folds=3))
    study.optimize(Objective(space, txt_data, tmp_path), n_trials=1)
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.COMPLETE
    folds = t.user_attrs["folds"]
    assert [f["fold"] for f in folds] == [0, 1, 2]
    assert sorted(s for f in folds for s in f["held_subjects"]) == ["S1", "S19", "S36"]
    for f in folds:  # early stopping chose the epoch on training-fold subjects only
        assert f["inner_subjects"] and not set(f["inner_subjects"]) & set(f["held_subjects"])
    # the value is the metric of the concatenated out-of-fold predictions of every subject
    oof = load_oof(tmp_path / "cv" / "trials" / "00000")
    assert len(oof["y"]) == 344 and sorted(set(oof["subject"].tolist())) == ["S1", "S19", "S36"]
    assert t.value == pytest.approx(binary_metrics(oof["y"], oof["p"][0])["f1"])
    assert t.value == pytest.approx(t.user_attrs["metrics"]["f1"])
    assert set(t.user_attrs["subjects"]) == {"S1", "S19", "S36"}
    m = t.user_attrs["metrics"]
    assert {"subject_f1_min", "subject_f1_p10", "subject_accuracy_min", "f1_lcb", "f1_fold_std"} <= set(m)
    assert m["f1_lcb"] <= m["f1"] + 1e-9
    # each fold's held-out predictions came from a model that never saw that fold
    for f in folds:
        held = np.isin(oof["subject"], f["held_subjects"])
        assert set(oof["fold"][held].tolist()) == {f["fold"]}
    assert list(t.intermediate_values) == [0, 1, 2]  # one report per fold
    # the checkpoint keeps the three fold models
    _, ck = load_checkpoint(tmp_path / "cv" / t.user_attrs["checkpoint"])
    assert [f["held_subjects"] for f in ck["folds"]] == [f["held_subjects"] for f in folds]


def test_a_poor_configuration_is_pruned_after_its_first_fold(txt_data, txt_sample, tmp_path):
    space = space_from_dict(_space(txt_sample))
    study = optuna.create_study(direction="maximize", pruner=make_pruner(space.study, 2, folds=3))
    dist = {"train.lr": optuna.distributions.FloatDistribution(1e-3, 5e-3, log=True)}
    # a finished trial that scored 1.0 after every fold: anything less after fold 1 is below the median
    study.add_trial(optuna.trial.create_trial(params={"train.lr": 2e-3}, distributions=dist, value=1.0,
                                              intermediate_values={0: 1.0, 1: 1.0, 2: 1.0}))
    study.optimize(Objective(space, txt_data, tmp_path), n_trials=1)
    t = study.trials[1]
    assert t.state == optuna.trial.TrialState.PRUNED
    assert list(t.intermediate_values) == [0]
    assert "after fold 1 of 3" in t.user_attrs["reason"]
    assert len(t.user_attrs["folds"]) == 1


@pytest.mark.parametrize("validation, text", [
    ({"folds": 1}, "validation.folds: must be at least 2 (got 1)"),
    ({"folds": 5}, "validation.folds: 5 folds need at least 5 subjects outside the test split (there are 3)"),
    ({"scheme": "loso"}, "validation.scheme: must be one of holdout, subject_kfold"),
])
def test_bad_validation_settings_are_one_line_and_exit_2(txt_sample, tmp_path, atml_cmd, validation, text):
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(_space(txt_sample, **validation)))
    r = subprocess.run([*atml_cmd, "search", "--space", str(p), "--workers", "0", "--no-progress"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert text in lines[-1] and not any("Traceback" in x for x in lines), r.stderr
    assert not (tmp_path / "studies" / "atml.db").exists()  # nothing written


@pytest.mark.slow
def test_cv_search_end_to_end(txt_sample, tmp_path, atml_cmd):
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(_space(txt_sample)))
    r = subprocess.run([*atml_cmd, "search", "--space", str(p), "--workers", "1", "--no-progress", "--json"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert res["split"]["validation"]["folds"] == 3 and res["split"]["validation"]["subjects"] == 3
    assert res["best"]["metrics"]["f1"] == pytest.approx(res["best"]["value"])
    # atml studies shows the best trial's cross-validated figure with its spread
    r = subprocess.run([*atml_cmd, "studies"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if "cross-validated:" in ln)
    m = res["best"]["metrics"]
    assert f"pooled f1 {m['f1']:.4f}" in line and f"f1 fold s.d. {m['f1_fold_std']:.3f}" in line
    assert f"worst subject {m['subject_f1_min']:.3f}" in line


def test_dashboard_trial_page_shows_folds_subjects_and_readable_ranges(txt_data, txt_sample, tmp_path):
    from fastapi.testclient import TestClient

    from atml.dashboard import create_app
    from atml.storage import open_storage

    url = f"sqlite:///{tmp_path / 'cv.db'}"
    space = space_from_dict(_space(txt_sample))
    study = optuna.create_study(study_name="cv", direction="maximize", storage=open_storage(url, create=True),
                                pruner=make_pruner(space.study, 2, folds=3))
    study.set_user_attr("atml.space", space.to_json())
    study.optimize(Objective(space, txt_data, tmp_path / "art"), n_trials=1)
    with TestClient(create_app(url, artifacts=tmp_path / "art", token="")) as client:
        page = client.get("/studies/cv/trials/0")
        assert page.status_code == 200
        html = page.text
        assert 'id="folds"' in html and 'id="subjects"' in html
        for s in ("S1", "S19", "S36"):
            assert f"<td>{s}</td>" in html
        assert "float in [0.001, 0.005] (log)" in html and "FloatDistribution(" not in html
        detail = client.get("/api/studies/cv/trials/0").json()
        assert [f["fold"] for f in detail["folds"]] == [0, 1, 2]
        assert [r["subject"] for r in detail["subjects"]] == ["S1", "S19", "S36"]


@pytest.fixture(scope="module")
def cv_study(txt_data, txt_sample, tmp_path_factory):
    """A finished cross-validated study in a real SQLite file (one trial), with its artifacts."""
    from atml.storage import open_storage

    root = tmp_path_factory.mktemp("cvstudy")
    url = f"sqlite:///{root / 'atml.db'}"
    space = space_from_dict(_space(txt_sample))
    study = optuna.create_study(study_name="cv", direction="maximize", storage=open_storage(url, create=True),
                                pruner=make_pruner(space.study, 2, folds=3))
    study.set_user_attr("atml.space", space.to_json())
    study.optimize(Objective(space, txt_data, root), n_trials=1)
    return url, root


def test_export_from_folds_ships_the_fold_models_and_the_honest_estimate(cv_study, txt_sample, tmp_path,
                                                                          atml_cmd):
    url, root = cv_study
    out = tmp_path / "folds.onnx"
    r = subprocess.run([*atml_cmd, "export", "--storage", url, "--study", "cv", "--artifacts", str(root),
                        "--out", str(out), "--from-folds", "--int8", "--no-preprocessing"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "3 fold models averaged" in r.stdout and "cross-validated estimate" in r.stdout
    side = json.loads(out.with_name("folds.onnx.json").read_text())
    assert side["fit"]["mode"] == "folds" and side["fit"]["members"] == 3
    assert side["fit"]["subjects_seen"] == ["S1", "S19", "S36"]
    study = optuna.load_study(study_name="cv", storage=url)
    assert side["fit"]["cross_validated"]["metrics"]["f1"] == pytest.approx(study.trials[0].value)
    assert side["validation"]["held_out"] is False
    # the graph is the mean of the fold models' logits
    import torch

    from atml.models import build_model
    from atml.onnx.runtime import ort_session, run_onnx

    _, ck = load_checkpoint(root / "cv" / study.trials[0].user_attrs["checkpoint"])
    x = torch.randn(4, 1, ck["n_samples"])
    logits = []
    for f in ck["folds"]:
        m = build_model(ck["family"], in_channels=1, n_classes=2, **ck["hparams"])
        m.load_state_dict(f["state_dict"])
        logits.append(m.eval()(x).detach())
    expect = torch.stack(logits).mean(0).numpy()
    got = run_onnx(ort_session(out), x.numpy())
    assert np.abs(got - expect).max() < 1e-4
    # and it scores as an ordinary model
    r = subprocess.run([*atml_cmd, "evaluate", "--model", str(out), "--data", str(txt_sample), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    network = json.loads(r.stdout)
    assert network["segments"] == 344
    # the default graph (raw 250 Hz segments in, the preprocessing inside) scores the same
    raw = tmp_path / "folds_raw.onnx"
    r = subprocess.run([*atml_cmd, "export", "--storage", url, "--study", "cv", "--artifacts", str(root),
                        "--out", str(raw), "--from-folds"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads(raw.with_name("folds_raw.onnx.json").read_text())["input"]["kind"] == "raw"
    r = subprocess.run([*atml_cmd, "evaluate", "--model", str(raw), "--data", str(txt_sample), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    scored = json.loads(r.stdout)
    assert scored["segments"] == 344
    assert scored["metrics"]["f1"] == pytest.approx(network["metrics"]["f1"], abs=1e-3)


def test_compare_pairs_two_configurations_on_the_same_folds(txt_sample, tmp_path, atml_cmd):
    a = _space(txt_sample)
    a["train"]["lr"] = 0.002
    a.pop("validation")
    pa, pb = tmp_path / "a.yaml", tmp_path / "b.yaml"
    pa.write_text(yaml.safe_dump(a))
    pb.write_text(yaml.safe_dump(_space(txt_sample)))
    params = tmp_path / "b.json"
    params.write_text(json.dumps({"train.lr": 0.004}))
    out = tmp_path / "cmp.json"
    r = subprocess.run([*atml_cmd, "compare", str(pa), str(pb), "--params-b", str(params), "--folds", "3",
                        "--cache", str(tmp_path / "cache"), "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    a_side, b_side = res["sides"]
    assert [f["held_subjects"] for f in a_side["folds"]] == [f["held_subjects"] for f in b_side["folds"]]
    assert res["diffs"] == pytest.approx([fb["f1"] - fa["f1"] for fa, fb in
                                         zip(a_side["folds"], b_side["folds"], strict=True)])
    assert res["low"] <= res["mean"] <= res["high"]
    assert "95% paired interval" in r.stdout and res["verdict"] in r.stdout
    assert b_side["params"] == {"train.lr": 0.004}
    # a parameter the space does not search is refused, one line, exit 2
    params.write_text(json.dumps({"train.nope": 1}))
    r = subprocess.run([*atml_cmd, "compare", str(pa), str(pb), "--params-b", str(params), "--folds", "3",
                        "--cache", str(tmp_path / "cache")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "not in this space: train.nope" in r.stderr.strip().splitlines()[-1]


def test_compare_scores_the_two_sides_side_by_side(txt_sample, tmp_path, atml_cmd):
    """``--jobs 2`` scores A and B in two processes at once: the same folds and the same figures
    as one after the other; a device the machine lacks is one line, exit 2, nothing written."""
    pa, pb = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a = _space(txt_sample)
    a["train"]["lr"] = 0.002
    pa.write_text(yaml.safe_dump(a))
    pb.write_text(yaml.safe_dump(_space(txt_sample)))
    runs = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"cmp{jobs}.json"
        r = subprocess.run([*atml_cmd, "compare", str(pa), str(pb), "--folds", "3", "--jobs", jobs, "--device", "cpu",
                            "--cache", str(tmp_path / "cache"), "--json", str(out)],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("on cpu ...") == 2
        runs[jobs] = json.loads(out.read_text())
    one, two = runs["1"], runs["2"]
    for s1, s2 in zip(one["sides"], two["sides"], strict=True):
        assert [f["held_subjects"] for f in s1["folds"]] == [f["held_subjects"] for f in s2["folds"]]
        assert [f["f1"] for f in s1["folds"]] == pytest.approx([f["f1"] for f in s2["folds"]], abs=0.02)
    missing = tmp_path / "none.json"
    r = subprocess.run([*atml_cmd, "compare", str(pa), str(pb), "--device", "cuda:99", "--json", str(missing),
                        "--cache", str(tmp_path / "cache")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "cuda" in r.stderr.strip().splitlines()[-1].lower()
    assert len(r.stderr.strip().splitlines()) == 1 and not missing.exists()

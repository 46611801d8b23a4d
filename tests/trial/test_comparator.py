"""Comparator learning (train.mode: comparator) on real ECG: pairs, prototypes, checkpoint, export, bad settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import optuna
import pytest
import torch
import yaml
from _helpers import small_space

from atml.config import space_from_dict
from atml.data import DataSpec
from atml.errors import SpaceError
from atml.models import PrototypeClassifier, build_model
from atml.models.prototype import class_prototypes, draw_partners
from atml.train import TrainConfig, fit, predict_proba
from atml.trial import load_checkpoint, prepare_data

HP = {"width": 6, "depth": 2}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "atml", *args], capture_output=True, text=True, timeout=600)


def _space(name: str, txt_sample: Path, epochs: int = 2, **train: object) -> dict:
    raw = small_space(name, n_trials=1, epochs=epochs)
    raw["data"] = {"path": str(txt_sample), "val_fraction": 0.34, "split_seed": 0}
    raw["model"] = {"families": {"afnet": dict(HP)}}
    raw["train"].update({"lr": 3e-3, "mode": "comparator", **train})
    return raw


@pytest.fixture(scope="module")
def txt_data(tmp_path_factory, txt_sample):
    spec = DataSpec(path=str(txt_sample), val_fraction=0.34, split_seed=0)
    return prepare_data(spec, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def study(tmp_path_factory, txt_sample):
    """A one-trial comparator study on the IESD text segments, made by atml search."""
    tmp = tmp_path_factory.mktemp("cmp")
    space = tmp / "c.yaml"
    space.write_text(yaml.safe_dump(_space("cmp", txt_sample)))
    url = f"sqlite:///{tmp}/c.db"
    r = _run("search", "--space", str(space), "--storage", url, "--workers", "1", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    return url, tmp


def test_partners_are_seeded_balanced_and_from_other_subjects(txt_data):
    y = txt_data.y_train.cpu()
    codes = torch.from_numpy(np.unique(txt_data.subject_train, return_inverse=True)[1].astype(np.int64))
    assert len(codes.unique()) > 1
    anchors = torch.arange(len(y))
    a = draw_partners(y, anchors, torch.Generator().manual_seed(5), codes)
    b = draw_partners(y, anchors, torch.Generator().manual_seed(5), codes)
    c = draw_partners(y, anchors, torch.Generator().manual_seed(6), codes)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert bool((codes[a] != codes).all())  # every class here has segments of both training subjects
    same = (y[a] == y).float().mean()
    assert 0.35 < same < 0.65, same  # about half the pairs share a class, whatever the class balance


def test_fit_sets_prototypes_and_the_same_seed_gives_the_same_weights(txt_data):
    cfg = TrainConfig(epochs=1, batch_size=32, mode="comparator", seed=3)
    states = []
    for _ in range(2):
        torch.manual_seed(3)
        model = PrototypeClassifier(build_model("afnet", in_channels=1, n_classes=2, **HP), 2)
        res = fit(model, txt_data.x_train, txt_data.y_train, txt_data.x_val, txt_data.y_val, cfg,
                  subjects=txt_data.subject_train)
        states.append(res.state_dict)
    assert states[0].keys() == states[1].keys() and "prototypes" in states[0] and "scale" in states[0]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    model.load_state_dict(states[0])
    model.eval()
    with torch.no_grad():
        emb = model.embed(txt_data.x_train)
        want = class_prototypes(emb, txt_data.y_train, 2)
        assert torch.allclose(model.prototypes, want, atol=1e-5)
        assert torch.allclose(model.prototypes.norm(dim=1), torch.ones(2), atol=1e-5)
        x = txt_data.x_val[:8]
        cos = model.embed(x) @ want.t()
        assert torch.allclose(model(x), model.scale * cos, atol=1e-4)
    assert res.metrics["f1"] >= 0 and np.isfinite(res.metrics["val_loss"])


def test_fit_refuses_a_model_without_prototypes(txt_data):
    model = build_model("afnet", in_channels=1, n_classes=2, **HP)
    with pytest.raises(ValueError, match="PrototypeClassifier"):
        fit(model, txt_data.x_train, txt_data.y_train, txt_data.x_val, txt_data.y_val,
            TrainConfig(epochs=1, mode="comparator"))


def test_comparator_trial_checkpoint_export_and_evaluate(study, txt_sample, txt_data, tmp_path):
    url, tmp = study
    t = optuna.load_study(study_name="cmp", storage=url).trials[0]
    assert t.state == optuna.trial.TrialState.COMPLETE
    model, ck = load_checkpoint(tmp / "cmp" / t.user_attrs["checkpoint"])
    assert ck["head"] == "prototype" and isinstance(model, PrototypeClassifier)
    assert ck["params"]["train"]["mode"] == "comparator"
    protos = ck["state_dict"]["prototypes"]
    assert protos.shape == (2, model.dim) and torch.allclose(protos.norm(dim=1), torch.ones(2), atol=1e-5)
    out = tmp_path / "cmp.onnx"
    r = _run("export", "--study", "cmp", "--storage", url, "--out", str(out), "--artifacts", str(tmp),
             "--no-preprocessing")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(Path(f"{out}.json").read_text())["parity"]["max_abs_diff"] < 1e-4
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = txt_data.x_val.numpy()
    z = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    p_onnx = np.exp(z - z.max(1, keepdims=True))
    p_onnx /= p_onnx.sum(1, keepdims=True)
    p_torch, _ = predict_proba(model, txt_data.x_val)
    assert np.abs(p_onnx - p_torch).max() < 1e-4
    r = _run("evaluate", "--model", str(out), "--data", str(txt_sample), "--json", "--runs", "5")
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(r.stdout)
    assert d["segments"] == 344 and 0 <= d["metrics"]["f1"] <= 1


def test_refit_retrains_a_comparator_trial(study, tmp_path):
    url, tmp = study
    out = tmp_path / "refit.onnx"
    r = _run("export", "--study", "cmp", "--storage", url, "--out", str(out), "--artifacts", str(tmp), "--refit")
    assert r.returncode == 0, r.stderr[-2000:]
    side = json.loads(Path(f"{out}.json").read_text())
    assert side["fit"]["mode"] == "refit"


@pytest.mark.parametrize("train, text", [
    ({"mode": "siamese"}, "train.mode: must be one of supervised, comparator (got 'siamese')"),
    ({"mode": {"type": "categorical", "choices": ["supervised", "pairs"]}}, "train.mode: must be one of"),
])
def test_bad_modes_name_the_field(train, text, txt_sample):
    with pytest.raises(SpaceError, match=text.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        space_from_dict(_space("bad", txt_sample, **train))


def test_a_searched_mode_is_a_categorical_train_parameter(txt_sample):
    space = space_from_dict(_space("ok", txt_sample, mode={"type": "categorical",
                                                           "choices": ["supervised", "comparator"]}))
    assert [p.choices for p in space.train_params if p.name == "train.mode"] == [("supervised", "comparator")]


def test_comparator_with_multilabel_data_or_distillation_fails_in_one_line(study, shared_data, txt_sample, tmp_path):
    url, tmp = study
    multilabel = _space("ml", txt_sample)
    multilabel["data"] = {"path": str(shared_data / "cinc2021_sample"), "format": "cinc2020", "multilabel": True,
                          "classes": ["SR", "AF"], "label_map": {"426783006": 0, "164889003": 1},
                          "target_fs": 250, "window": 10.0, "pad_short": True}
    distilled = _space("dist", txt_sample, mode={"type": "categorical", "choices": ["supervised", "comparator"]})
    teacher = next((tmp / "cmp" / "trials").glob("*/model.pt"))
    distilled["train"]["distill"] = {"teacher": str(teacher)}
    for raw, text in ((multilabel, "multilabel"), (distilled, "train.distill")):
        space = tmp_path / f"{raw['study']['name']}.yaml"
        space.write_text(yaml.safe_dump(raw))
        r = _run("search", "--space", str(space), "--storage", f"sqlite:///{tmp_path}/bad.db", "--workers", "1",
                 "--no-progress")
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "train.mode: comparator" in lines[0] and text in lines[0], r.stderr


def test_a_cross_validated_comparator_trial_exports_its_fold_ensemble(txt_sample, tmp_path):
    raw = _space("cmpcv", txt_sample, epochs=1)
    raw["data"] = {"path": str(txt_sample), "target_fs": 125, "val_fraction": 0.34, "test_fraction": 0}
    raw["validation"] = {"scheme": "subject_kfold", "folds": 3}
    space = tmp_path / "cv.yaml"
    space.write_text(yaml.safe_dump(raw))
    url = f"sqlite:///{tmp_path}/cv.db"
    r = _run("search", "--space", str(space), "--storage", url, "--workers", "1", "--no-progress",
             "--artifacts", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    t = optuna.load_study(study_name="cmpcv", storage=url).trials[0]
    assert t.state == optuna.trial.TrialState.COMPLETE
    _, ck = load_checkpoint(tmp_path / "cmpcv" / t.user_attrs["checkpoint"])
    assert ck["head"] == "prototype" and len(ck["folds"]) == 3
    assert all("prototypes" in f["state_dict"] for f in ck["folds"])
    out = tmp_path / "folds.onnx"
    r = _run("export", "--study", "cmpcv", "--storage", url, "--out", str(out), "--artifacts", str(tmp_path),
             "--from-folds")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(Path(f"{out}.json").read_text())["fit"]["members"] == 3

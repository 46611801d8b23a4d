"""Training on a CUDA device: fit in every precision, a cross-validated trial, and a real search whose
trials train on the GPU and whose best model exports to ONNX (on the CPU). Skipped without CUDA."""

from __future__ import annotations

import math
import subprocess

import optuna
import pytest
import torch
from _helpers import small_space

from atml import records
from atml.config import space_from_dict
from atml.data import DataSpec
from atml.models import build_model
from atml.storage import open_storage
from atml.train import TrainConfig, augment, fit, predict_proba
from atml.trial import Objective, prepare_data

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)"),
]


@pytest.fixture(scope="module")
def on_gpu(tmp_path_factory):
    spec = DataSpec(synthetic_subjects=10, synthetic_per_subject=30, synthetic_seed=3)
    return prepare_data(spec, tmp_path_factory.mktemp("cache"), device="cuda")


def test_prepared_data_lives_on_the_gpu(on_gpu):
    d = on_gpu
    assert d.device.type == "cuda" and d.y_val.device.type == "cuda"
    assert d.to("cuda") is d and d.to("cpu").x_train.device.type == "cpu"
    x, y, _ = d.pool()
    assert x.device.type == "cuda" and d.pool()[0] is x  # built once per worker


def test_augment_runs_on_the_device(on_gpu):
    xb = on_gpu.x_train[:16]
    g = torch.Generator(device="cuda").manual_seed(0)
    out = augment(xb, 1.0, torch.Generator().manual_seed(0), g)
    again = augment(xb, 1.0, torch.Generator().manual_seed(0), torch.Generator(device="cuda").manual_seed(0))
    assert out.device.type == "cuda" and torch.equal(out, again) and not torch.equal(out, xb)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_fit_on_cuda_keeps_cpu_weights(on_gpu, precision):
    d = on_gpu
    torch.manual_seed(0)
    model = build_model("afnet", in_channels=1, n_classes=2, width=6, depth=2)
    res = fit(model, d.x_train, d.y_train, d.x_val, d.y_val,
              TrainConfig(epochs=2, precision=precision, augment=0.5, stretch=0.2, ema=0.9))
    assert next(model.parameters()).device.type == "cuda"
    assert math.isfinite(res.metrics["val_loss"]) and res.epochs_run == 2
    assert all(v.device.type == "cpu" for v in res.state_dict.values())
    proba, _ = predict_proba(model, d.x_val, precision=precision)
    assert proba.shape == (len(d.y_val), 2)
    cpu = build_model("afnet", in_channels=1, n_classes=2, width=6, depth=2)
    cpu.load_state_dict(res.state_dict)  # a checkpoint loads with no GPU in sight


def test_cross_validated_trial_on_cuda(on_gpu, tmp_path):
    raw = small_space("cvgpu", n_trials=1, epochs=1)
    raw["validation"] = {"scheme": "subject_kfold", "folds": 3}
    raw["train"]["precision"] = "bf16"
    space = space_from_dict(raw)
    study = optuna.create_study(direction="maximize")
    study.optimize(Objective(space, on_gpu, tmp_path), n_trials=1)
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.COMPLETE, t.user_attrs.get("reason")
    ck = torch.load(tmp_path / "cvgpu" / t.user_attrs["checkpoint"], weights_only=False)
    assert all(v.device.type == "cpu" for f in ck["folds"] for v in f["state_dict"].values())


def test_search_on_the_gpu_then_export(tmp_path, write_space, atml_cmd):
    raw = small_space("gpu", n_trials=3, epochs=2)
    raw["train"]["precision"] = {"type": "categorical", "choices": ["fp32", "bf16", "fp16"]}
    raw["gate"] = {"pass": 0.0, "keep": 1}  # files the best: its ONNX is exported inside the worker
    url = f"sqlite:///{tmp_path / 'atml.db'}"
    r = subprocess.run([*atml_cmd, "search", "--space", str(write_space(raw)), "--storage", url, "--gpus", "0",
                        "--workers-per-gpu", "2", "--no-progress"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    study = optuna.load_study(study_name="gpu", storage=open_storage(url))
    name = torch.cuda.get_device_name(0)
    assert all((records.device(t) or "").startswith(f"cuda:0 ({name})") for t in study.trials)
    assert len({t.user_attrs["worker"] for t in study.trials}) <= 2
    assert any(t.user_attrs.get("gate_folder") for t in study.trials)
    out = tmp_path / "best.onnx"
    r = subprocess.run([*atml_cmd, "export", "--storage", url, "--study", "gpu", "--out", str(out), "--int8"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.stat().st_size > 0

"""Each shipped WFDB space runs a real two-trial search (multi-class, multi-label, windows)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import optuna
import pytest
import yaml
from _wfdb_folders import build_cinc2017, build_ptbxl

from atml.storage import open_storage

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:The inplace keyword")]


def _search(space_file: str, data: Path, tmp_path: Path, atml_cmd: list[str],
            **data_overrides: object) -> list[optuna.trial.FrozenTrial]:
    raw = yaml.safe_load(Path(space_file).read_text())
    raw["data"].update(data_overrides)
    raw["train"]["epochs"] = 1  # two real trials, kept short
    raw["budget"] = {"n_trials": 2}
    raw["data"]["path"] = str(data)  # the copy lives elsewhere: no relative path
    p = tmp_path / Path(space_file).name
    p.write_text(yaml.safe_dump(raw))
    url = f"sqlite:///{tmp_path}/s.db"
    r = subprocess.run([*atml_cmd, "search", "--space", str(p), "--storage", url, "--data", str(data),
                        "--workers", "1", "--no-progress"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-2000:]
    trials = optuna.load_study(study_name=raw["study"]["name"], storage=open_storage(url)).get_trials()
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == 2
    return trials


def _shape(tmp_path: Path, study: str, t: optuna.trial.FrozenTrial) -> tuple[int, int, int]:
    import torch

    ck = torch.load(tmp_path / study / t.user_attrs["checkpoint"], weights_only=False)
    return ck["in_channels"], ck["n_samples"], ck["n_classes"]


def test_physionet2017_space_four_classes(shared_data, tmp_path, atml_cmd):
    folder, _ = build_cinc2017(shared_data / "cinc2021_sample", tmp_path / "training2017")
    trials = _search("search_spaces/physionet2017.yaml", folder, tmp_path, atml_cmd)
    t = next(t for t in trials if t.state.name == "COMPLETE")
    m = t.user_attrs["metrics"]
    assert {"f1_N", "f1_A", "f1_O", "f1_~", "physionet2017"} <= set(m)
    assert m["physionet2017"] == pytest.approx((m["f1_N"] + m["f1_A"] + m["f1_O"]) / 3)
    assert t.value == pytest.approx(m["physionet2017"])
    assert _shape(tmp_path, "physionet2017", t) == (1, 2700, 4)  # 9 s at 300 Hz, four classes


def test_cinc2021_space_twelve_leads_multilabel(shared_data, tmp_path, atml_cmd):
    trials = _search("search_spaces/cinc2021_12lead.yaml", shared_data / "cinc2021_sample", tmp_path, atml_cmd)
    t = next(t for t in trials if t.state.name == "COMPLETE")
    m = t.user_attrs["metrics"]
    assert {"f1_SR", "f1_AF", "auroc"} <= set(m) and 0.0 <= m["auroc"] <= 1.0
    assert _shape(tmp_path, "cinc2021_12lead", t) == (12, 2500, 5)  # 10 s at 250 Hz


def test_ptbxl_space_superclasses(shared_data, tmp_path, atml_cmd):
    folder = build_ptbxl(shared_data / "cinc2021_sample", tmp_path / "ptbxl")
    # 10 records of 8 patients: a larger validation share so AUROC is defined
    trials = _search("search_spaces/ptbxl_superclass.yaml", folder, tmp_path, atml_cmd,
                     val_fraction=0.35, test_fraction=0.0)
    t = next(t for t in trials if t.state.name == "COMPLETE")
    assert {"f1_NORM", "f1_MI", "f1_STTC", "f1_CD", "f1_HYP"} <= set(t.user_attrs["metrics"])
    assert _shape(tmp_path, "ptbxl_superclass", t) == (12, 1000, 5)  # 10 s at 100 Hz


def test_cpsc2021_space_af_windows(shared_data, tmp_path, atml_cmd):
    trials = _search("search_spaces/cpsc2021_af.yaml", shared_data / "cpsc2021_sample", tmp_path, atml_cmd)
    t = next(t for t in trials if t.state.name == "COMPLETE")
    assert {"f1", "auroc", "tp", "tn"} <= set(t.user_attrs["metrics"])
    assert _shape(tmp_path, "cpsc2021_af", t) == (2, 1250, 2)


def test_dataset_space_without_path_asks_for_data(tmp_path, atml_cmd):
    r = subprocess.run([*atml_cmd, "search", "--space", "search_spaces/ptbxl_superclass.yaml", "--storage",
                        f"sqlite:///{tmp_path}/s.db", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "data.path: format ptbxl" in r.stderr
    assert not (tmp_path / "s.db").exists()


def test_export_multilabel_model(shared_data, tmp_path, atml_cmd):
    import json

    _search("search_spaces/cinc2021_12lead.yaml", shared_data / "cinc2021_sample", tmp_path, atml_cmd)
    out = tmp_path / "m.onnx"
    r = subprocess.run([*atml_cmd, "export", "--storage", f"sqlite:///{tmp_path}/s.db", "--study", "cinc2021_12lead",
                        "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    side = json.loads(Path(f"{out}.json").read_text())
    assert side["task"] == "multilabel" and side["input"]["shape"] == ["batch", 12, 5000]  # raw, 500 Hz
    assert side["network"]["shape"] == ["batch", 12, 2500]
    assert side["classes"] == ["SR", "AF", "TAb", "STach", "PAC"] and "sigmoid" in side["output"]["meaning"]
    assert side["parity"]["max_abs_diff"] < 1e-4 and "f1_AF" in side["metrics"]["float"]

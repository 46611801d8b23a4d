"""search_spaces/cpsc2018.yaml: the CPSC 2018 diagnoses from CinC-format `# Dx:` codes,
on the real 12-lead records of the CinC 2021 sample, and a real search with ResNet-18."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from atml.config import load_space
from atml.data import load_dataset, spec_from_section
from atml.storage import open_storage

SPACE = "search_spaces/cpsc2018.yaml"
CLASSES = ["Normal", "AF", "IAVB", "LBBB", "RBBB", "PAC", "PVC", "STD", "STE"]

# The CPSC 2018 classes and their SNOMED-CT codes in the CinC 2020/2021 headers, with
# the codes the challenge scored as the same class.
CPSC_CODES = {
    "Normal": {"426783006"}, "AF": {"164889003"}, "IAVB": {"270492004"},
    "LBBB": {"164909002", "733534002"}, "RBBB": {"59118001", "713427006"},
    "PAC": {"284470004", "63593006"}, "PVC": {"164884008", "427172004", "17338001"},
    "STD": {"429622005"}, "STE": {"164931005"},
}


def _dx(header: Path) -> set[str]:
    line = next(line for line in header.read_text().splitlines() if line.startswith("# Dx:"))
    return {c.strip() for c in line.removeprefix("# Dx:").split(",") if c.strip()}


def _expected(header: Path) -> set[str]:
    codes = _dx(header)
    return {name for name, ours in CPSC_CODES.items() if codes & ours}


def test_space_is_multilabel_resnet18_under_the_size_cap() -> None:
    from atml.models import build_model
    from atml.onnx.convert import onnx_size_kb

    space = load_space(SPACE)
    data = space.data_section()
    assert data["format"] == "cinc2020" and data["multilabel"] is True
    assert list(data["classes"]) == CLASSES
    assert {code: CLASSES[i] for code, i in data["label_map"].items()} == {
        code: name for name, codes in CPSC_CODES.items() for code in codes}
    assert space.study.metric == "auroc" and space.budget.n_trials <= 40
    fixed, params = space.families["resnet1d"]
    assert list(space.families) == ["resnet1d"] and fixed == {"preset": "resnet18"}
    mult = next(p for p in params if p.key == "width_multiplier")
    # the widest model the space can draw fits its ONNX constraint
    widest = build_model("resnet1d", in_channels=12, n_classes=9, preset="resnet18",
                         width_multiplier=mult.high, kernel_size=15).eval()
    assert onnx_size_kb(widest, 12, 2500) <= space.study.constraints["max_onnx_kb"]


def test_labels_of_real_records(shared_data, tmp_path) -> None:
    sample = shared_data / "cinc2021_sample"
    section = {**load_space(SPACE).data_section(), "path": str(sample)}
    ds = load_dataset(spec_from_section(section), tmp_path / "cache")
    assert ds.task == "multilabel" and list(ds.classes) == CLASSES
    assert ds.x.shape[1:] == (12, 2500) and ds.fs == 250  # 12 leads, 10 s at 250 Hz
    got = {str(s): {CLASSES[c] for c in np.flatnonzero(row)} for s, row in zip(ds.subject, ds.y, strict=True)}
    headers = sorted(sample.glob("*.hea"))
    expected = {h.stem: _expected(h) for h in headers}
    # drop_empty: records without any CPSC class are not CPSC records
    assert set(got) == {r for r, e in expected.items() if e}
    assert got == {r: e for r, e in expected.items() if e}
    # spot checks read off the headers
    assert _dx(sample / "E07509.hea") == {"59118001", "426177001"} and got["E07509"] == {"RBBB"}
    assert "713426002" in _dx(sample / "HR06002.hea") and got["HR06002"] == {"Normal"}  # incomplete RBBB is not RBBB
    assert "427172004" in _dx(sample / "JS20003.hea") and got["JS20003"] == {"PAC", "PVC"}
    assert "E07500" not in got  # sinus bradycardia and a code outside the nine
    counts = dict(zip(CLASSES, ds.y.sum(axis=0).astype(int).tolist(), strict=True))
    assert counts == {"Normal": 15, "AF": 0, "IAVB": 0, "LBBB": 0, "RBBB": 2, "PAC": 20, "PVC": 5,
                      "STD": 0, "STE": 0}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The inplace keyword")
def test_search_trains_resnet18_and_exports_onnx(shared_data, tmp_path, atml_cmd) -> None:
    import torch

    sample = shared_data / "cinc2021_sample"
    raw = yaml.safe_load(Path(SPACE).read_text())
    raw["train"]["epochs"] = 1
    raw["budget"] = {"n_trials": 1}
    raw["data"]["path"] = str(sample)  # the copy lives elsewhere: no relative path
    space = tmp_path / "cpsc2018.yaml"
    space.write_text(yaml.safe_dump(raw))
    url = f"sqlite:///{tmp_path}/s.db"
    r = subprocess.run([*atml_cmd, "search", "--space", str(space), "--storage", url, "--data", str(sample),
                        "--workers", "1", "--no-progress"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-2000:]
    (t,) = optuna.load_study(study_name="cpsc2018", storage=open_storage(url)).get_trials()
    assert t.state.name == "COMPLETE", t.user_attrs
    assert {f"f1_{c}" for c in CLASSES} | {"auroc"} <= set(t.user_attrs["metrics"])
    ck = torch.load(tmp_path / "cpsc2018" / t.user_attrs["checkpoint"], weights_only=False)
    assert (ck["in_channels"], ck["n_samples"], ck["n_classes"]) == (12, 2500, 9)
    assert ck["family"] == "resnet1d" and ck["hparams"]["preset"] == "resnet18"
    assert "blocks.3.1.conv2.0.weight" in ck["state_dict"]  # stage 4, second basic block

    out = tmp_path / "cpsc2018.onnx"
    r = subprocess.run([*atml_cmd, "export", "--storage", url, "--study", "cpsc2018", "--data", str(sample),
                        "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    side = json.loads(Path(f"{out}.json").read_text())
    assert side["task"] == "multilabel" and side["classes"] == CLASSES
    # raw records in (10 s at 500 Hz), the network at 250 Hz behind the in-graph preprocessing
    assert side["input"]["kind"] == "raw" and side["input"]["shape"] == ["batch", 12, 5000]
    assert side["network"]["shape"] == ["batch", 12, 2500] and side["network"]["fs"] == 250
    assert side["parity"]["max_abs_diff"] < 1e-4 and side["parity"]["raw"]["max_prob_diff"] < 1e-4
    assert side["network"]["size_bytes"] <= raw["study"]["constraints"]["max_onnx_kb"] * 1024

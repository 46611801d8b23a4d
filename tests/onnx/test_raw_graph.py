"""The raw graph (preprocessing inside the ONNX file) against the Python preprocessing + torch,
on real segments of every shipped dataset, and `atml export` / `atml evaluate` with it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
import yaml
from _helpers import small_space

from atml.data import DataSpec, load_dataset
from atml.errors import ExportError
from atml.models import build_model
from atml.onnx.convert import export_onnx, quantize_int8
from atml.onnx.preprocess_graph import raw_graph, raw_plan, raw_spec, reference_preprocess
from atml.onnx.raw_export import probabilities
from atml.onnx.runtime import ort_session

TOLERANCE = 1e-4  # on probabilities, as the issue asks and the export checks

_CINC = {"format": "cinc2020", "multilabel": True, "classes": ["SR", "AF", "TAb", "STach", "PAC"],
         "label_map": {"426783006": 0, "164889003": 1, "164934002": 2, "427084000": 3, "284470004": 4,
                       "63593006": 4},
         "target_fs": 250, "window": 10.0, "pad_short": True, "bandpass": [0.5, 45.0], "on_bad": "skip"}
_CPSC = {"format": "wfdb_rhythm", "window": 5.0, "stride": 2.5, "target_fs": 250, "bandpass": [0.5, 40.0]}
# (data folder, the data section of a shipped space (search_spaces/*.yaml) or a variant it searches)
CASES = {
    "iesd-txt-250hz-1-25": ("iesd2024/txt_sample", {"bandpass": [1.0, 25.0]}),  # afib.yaml
    "iesd-txt-125hz-1-25": ("iesd2024/txt_sample", {"bandpass": [1.0, 25.0], "target_fs": 125}),  # afib_iesd_final
    "iesd-txt-0.5-40": ("iesd2024/txt_sample", {"bandpass": [0.5, 40.0]}),  # afib_iesd_pre
    "iesd-txt-zscore": ("iesd2024/txt_sample", {}),  # afib_iesd.yaml
    "iesd-npz-125hz": ("iesd2024/train.npz", {"bandpass": [1.0, 25.0], "target_fs": 125, "max_segments": 600}),
    "cinc2021-12-leads": ("cinc2021_sample", _CINC),  # cinc2021_12lead.yaml
    "cinc2021-3-leads": ("cinc2021_sample", {**_CINC, "leads": ["V1", "I", "II"]}),  # its reduced-lead variant
    "cpsc2021-windows": ("cpsc2021_sample", _CPSC),  # cpsc2021_af.yaml
    "cpsc2021-lead-II": ("cpsc2021_sample", {**_CPSC, "leads": ["II"]}),
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("raw-cache")


def _spread_logits(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Rescale the classifier so the logits on ``x`` have mean 0 and std 3 per class.

    An untrained model's probabilities sit near 0.5, where parity is easy; spread ones are
    as sensitive to the input as a trained model's.
    """
    with torch.no_grad():
        z = model(x)
        fc = model.head.fc
        mu, sd = z.mean(0), z.std(0) + 1e-9
        fc.weight.mul_((3 / sd)[:, None])
        fc.bias.copy_((fc.bias - mu) * 3 / sd)


def _case(shared_data: Path, cache: Path, name: str) -> SimpleNamespace:
    folder, data = CASES[name]
    spec = DataSpec(path=str(shared_data / folder), drop_labels=("UNK",), **data)
    raw = load_dataset(raw_spec(spec), cache)
    net = load_dataset(spec, cache)
    plan = raw_plan(spec, raw.fs, raw.n_leads, raw.n_samples, tuple(raw.leads))
    idx = np.unique(np.linspace(0, len(raw) - 1, 128).round().astype(np.int64))
    x_raw = np.asarray(raw.x[idx], dtype=np.float32)
    x_net = reference_preprocess(x_raw, plan)
    torch.manual_seed(0)
    model = build_model("afnet", in_channels=plan.n_leads_net, n_classes=len(spec.classes), width=6, depth=3).eval()
    _spread_logits(model, torch.from_numpy(x_net))
    return SimpleNamespace(spec=spec, raw=raw, net=net, plan=plan, idx=idx, x_raw=x_raw, x_net=x_net, model=model,
                           net_blob=export_onnx(model, plan.n_leads_net, plan.samples_net))


def _torch_probs(c: SimpleNamespace, x_net: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return probabilities(c.model(torch.from_numpy(x_net)).numpy(), c.spec.task)


@pytest.mark.parametrize("name", list(CASES))
def test_raw_graph_matches_python_preprocessing_and_torch(shared_data, cache, name):
    c = _case(shared_data, cache, name)
    blob = raw_graph(c.net_blob, c.plan, c.spec.task)
    model = onnx.load_from_string(blob)
    onnx.checker.check_model(model, full_check=True)
    (inp,) = model.graph.input
    assert inp.name == "ecg" and [o.name for o in model.graph.output] == ["logits", "probabilities"]
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim][1:] == list(c.x_raw.shape[1:])
    session = ort_session(blob)
    logits, probs = session.run(None, {"ecg": c.x_raw})
    expected = _torch_probs(c, c.x_net)
    assert expected.std() > 0.3, "probabilities spread over (0, 1): parity is not trivially easy"
    assert np.abs(probs - expected).max() < TOLERANCE
    assert np.allclose(probabilities(logits, c.spec.task), probs, atol=1e-6)
    # one item at a time gives the same (the batch dimension is dynamic)
    one = session.run(None, {"ecg": c.x_raw[3:4]})[1]
    assert np.abs(one - probs[3:4]).max() < 1e-6
    if c.spec.window is None or name.startswith("cinc"):
        # the reference is what the cache holds: the preprocessing the model was trained on
        # (CinC records are exactly one 10 s window; CPSC windows are cut from whole records)
        assert np.array_equal(c.x_net, np.asarray(c.net.x[c.idx]))


def test_what_the_graph_is_told_to_do(shared_data, cache):
    c = _case(shared_data, cache, "cinc2021-3-leads")
    assert c.plan.lead_index == (6, 0, 1) and c.plan.lead_names_net == ("V1", "I", "II")
    assert (c.plan.fs_in, c.plan.fs_net, c.plan.up, c.plan.down) == (500, 250, 1, 2)
    steps = c.plan.steps()
    assert steps["leads"] == {"from": list(c.plan.lead_names_in), "rows": [6, 0, 1]}
    assert steps["resample"]["from_hz"] == 500 and steps["bandpass"]["band_hz"] == [0.5, 45.0]
    c = _case(shared_data, cache, "cpsc2021-windows")
    assert (c.plan.samples_in, c.plan.samples_net, c.plan.up, c.plan.down) == (1000, 1250, 5, 4)


@pytest.mark.parametrize("name", ["cinc2021-12-leads", "iesd-txt-250hz-1-25", "iesd-txt-zscore"])
def test_flat_and_disconnected_leads(shared_data, cache, name):
    """Python filters a constant lead to exact zeros in float64 and never divides it; the
    graph's float32 rounding noise on it must not be blown up to unit variance. (Resampled,
    a constant is no longer flat: resample_poly pads with zeros, so its ends ramp.)"""
    c = _case(shared_data, cache, name)
    x = c.x_raw[:8].copy()
    x[:, -1] = 1.7  # a constant lead (an offset, no signal)
    x[4:, 0] = 0.0  # a disconnected one
    x_net = reference_preprocess(x, c.plan)
    assert not x_net[4:, 0].any()
    if c.plan.up == c.plan.down:
        assert np.abs(x_net[:, -1]).max() < 1e-6  # centred, never divided
    _, probs = ort_session(raw_graph(c.net_blob, c.plan, c.spec.task)).run(None, {"ecg": x})
    assert np.abs(probs - _torch_probs(c, x_net)).max() < TOLERANCE


def test_int8_quantises_the_network_only(shared_data, cache):
    c = _case(shared_data, cache, "iesd-txt-125hz-1-25")
    q_net = quantize_int8(c.net_blob, c.x_net[:64])
    q_raw = raw_graph(q_net, c.plan, c.spec.task)
    onnx.checker.check_model(onnx.load_from_string(q_raw), full_check=True)

    def quantize_nodes(blob: bytes) -> int:
        return sum(n.op_type == "QuantizeLinear" for n in onnx.load_from_string(blob).graph.node)

    assert quantize_nodes(q_raw) == quantize_nodes(q_net) > 0  # nothing of the preprocessing is quantised
    _, p_float = ort_session(raw_graph(c.net_blob, c.plan, "binary")).run(None, {"ecg": c.x_raw})
    _, p_int8 = ort_session(q_raw).run(None, {"ecg": c.x_raw})
    # the int8 raw graph is the int8 network behind the float preprocessing: the same
    # outputs, except where the in-graph preprocessing (within ~1e-7 of Python's) puts an
    # input on the other side of an int8 rounding boundary, which moves it one step
    (z_int8,) = ort_session(q_net).run(None, {"ecg": c.x_net})
    diff = np.abs(p_int8 - probabilities(z_int8, "binary")).max(axis=1)
    assert np.mean(diff < TOLERANCE) >= 0.9 and diff.max() < 0.05, np.sort(diff)[-5:]
    assert np.mean((p_int8[:, 1] >= 0.5) == (p_float[:, 1] >= 0.5)) > 0.9


def test_a_plan_that_cannot_be_one_graph_is_an_export_error():
    spec = DataSpec(leads=("II",), format="wfdb_rhythm", path=".")
    with pytest.raises(ExportError, match=r"names leads, but the source items have no lead names"):
        raw_plan(spec, 250, 1, 1250)
    with pytest.raises(ExportError, match=r"source leads \['I'\] have no \['II'\]"):
        raw_plan(spec, 250, 1, 1250, ("I",))
    with pytest.raises(ExportError, match=r"pads 27 samples at each end; items of 20 samples are too short"):
        raw_plan(DataSpec(bandpass=(1.0, 25.0)), 250, 1, 20)
    with pytest.raises(ExportError, match=r"shorter than one data.window=5.0 s window"):
        raw_plan(DataSpec(window=5.0), 250, 1, 1000)


# --------------------------------------------------------------------------- the CLI, end to end


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def _search(root: Path, atml_cmd: list[str], name: str, data: dict) -> str:
    cfg = small_space(name, n_trials=1, epochs=2)
    cfg["data"] = data
    cfg["model"]["families"] = {"afnet": {"width": 4, "depth": 2}}
    space = root / "space.yaml"
    space.write_text(yaml.safe_dump(cfg))
    url = f"sqlite:///{root}/s.db"
    _run([*atml_cmd, "search", "--space", str(space), "--storage", url, "--workers", "1", "--no-progress"], cwd=root)
    return url


@pytest.fixture(scope="module")
def iesd_exports(tmp_path_factory, txt_sample, atml_cmd_module) -> SimpleNamespace:
    """A real tiny search on IESD text segments resampled to 125 Hz and band-passed, exported
    as the raw graph (default) and as the network alone, both with int8."""
    cmd = atml_cmd_module
    root = tmp_path_factory.mktemp("raw-e2e")
    url = _search(root, cmd, "raw", {"path": str(txt_sample), "target_fs": 125, "bandpass": [1.0, 25.0],
                                     "val_fraction": 0.3, "drop_labels": ["UNK"]})
    out = {}
    for kind, extra in (("raw", []), ("net", ["--no-preprocessing"])):
        model = root / f"{kind}.onnx"
        r = _run([*cmd, "export", "--storage", url, "--study", "raw", "--out", str(model), "--int8", *extra])
        out[kind] = SimpleNamespace(model=model, int8=root / f"{kind}.int8.onnx", stdout=r.stdout,
                                    side=json.loads(Path(f"{model}.json").read_text()),
                                    int8_side=json.loads(Path(f"{root}/{kind}.int8.onnx.json").read_text()))
    return SimpleNamespace(cmd=cmd, **out)


@pytest.mark.slow
def test_export_writes_the_raw_graph_by_default(iesd_exports):
    raw, net = iesd_exports.raw, iesd_exports.net
    s = raw.side
    assert s["input"] == {"name": "ecg", "kind": "raw", "shape": ["batch", 1, 1250], "leads": 1, "samples": 1250,
                          "fs": 250, "lead_names": [], "dtype": "float32"}
    assert s["fs"] == 250 and s["network"]["shape"] == ["batch", 1, 625] and s["network"]["fs"] == 125
    assert s["probabilities"]["name"] == "probabilities" and s["preprocessing"]["in_graph"] is True
    graph = s["preprocessing"]["graph"]
    assert graph["resample"]["from_hz"] == 250 and graph["resample"]["to_hz"] == 125
    assert graph["bandpass"]["band_hz"] == [1.0, 25.0] and graph["normalize"] == "zscore"
    assert 0 < graph["size_bytes"] < 10_000
    assert s["parity"]["raw"]["max_prob_diff"] < TOLERANCE and s["parity"]["raw"]["segments"] > 0
    assert "input ecg [batch, 1, 1250] float32 raw @ 250 Hz, outputs logits [batch, 2], probabilities [batch, 2]" \
        in raw.stdout
    assert "preprocessing in the graph: resample 250 -> 125 Hz, band-pass 1-25 Hz, z-score per lead; network " \
           "input [batch, 1, 625] @ 125 Hz" in raw.stdout
    assert "raw graph vs Python preprocessing + torch on" in raw.stdout
    m = onnx.load(raw.model)
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim][1:] == [1, 1250]
    # the int8 variant: the network quantised, the preprocessing float; agreement reported as before
    q = raw.int8_side
    assert q["input"]["kind"] == "raw" and q["quantization"]["agreement_with_float"] > 0.9
    assert q["quantization"]["preprocessing"] == "float32, not quantised"
    assert q["quantization"]["calibration_segments"] > 0
    # the same trial, the same validation figures, whichever graph
    for k, v in s["metrics"]["float"].items():
        assert v == pytest.approx(net.side["metrics"]["float"][k], abs=1e-6), k


@pytest.mark.slow
def test_no_preprocessing_keeps_the_network_graph_and_states_its_rate(iesd_exports):
    net = iesd_exports.net
    s = net.side
    assert s["input"]["kind"] == "network" and s["input"]["shape"] == ["batch", 1, 625]
    # a 125 Hz model: its input is at 125 Hz, whatever rate the source segments had
    assert s["fs"] == 125 and s["input"]["fs"] == 125 and s["preprocessing"]["fs"] == 250
    assert s["probabilities"] is None and s["preprocessing"]["in_graph"] is False and s["parity"]["raw"] is None
    assert "input ecg [batch, 1, 625] float32 @ 125 Hz, output logits [batch, 2]; onnx.checker ok" in net.stdout
    assert "input must be preprocessed: resampled to 125 Hz, band-pass 1-25 Hz, z-score per lead" in net.stdout
    m = onnx.load(net.model)
    assert [o.name for o in m.graph.output] == ["logits"]
    assert s["size_bytes"] == s["network"]["size_bytes"] == iesd_exports.raw.side["network"]["size_bytes"]


@pytest.mark.slow
def test_evaluate_scores_both_graphs_alike(iesd_exports, txt_sample):
    def evaluate(model: Path) -> dict:
        r = _run([*iesd_exports.cmd, "evaluate", "--model", str(model), "--data", str(txt_sample), "--json",
                  "--runs", "5"])
        return json.loads(r.stdout)

    for attr in ("model", "int8"):
        a, b = evaluate(getattr(iesd_exports.raw, attr)), evaluate(getattr(iesd_exports.net, attr))
        assert a["input_kind"] == "raw" and a["input_shape"] == ["batch", 1, 1250] and a["input_fs"] == 250
        assert b["input_kind"] == "network" and b["input_shape"] == ["batch", 1, 625] and b["input_fs"] == 125
        assert a["segments"] == b["segments"] == 344 and a["confusion"] == b["confusion"]
        for k, v in a["metrics"].items():
            assert v == pytest.approx(b["metrics"][k], abs=1e-6), (attr, k)


@pytest.mark.slow
def test_windowed_records_export_and_evaluate(tmp_path, shared_data, atml_cmd):
    """CPSC 2021: raw 5 s windows of two 200 Hz leads, one lead picked, resampled to 250 Hz
    and filtered inside; the export says how far a window filtered on its own is from the
    training windows (cut from whole filtered records)."""
    data = {"path": str(shared_data / "cpsc2021_sample"), **_CPSC, "leads": ["II"], "max_segments": 300,
            "val_fraction": 0.3}
    url = _search(tmp_path, atml_cmd, "cpsc", data)
    out = tmp_path / "cpsc.onnx"
    r = _run([*atml_cmd, "export", "--storage", url, "--study", "cpsc", "--out", str(out)])
    s = json.loads(Path(f"{out}.json").read_text())
    assert s["input"]["shape"] == ["batch", 2, 1000] and s["input"]["fs"] == 200
    assert s["input"]["lead_names"] == ["I", "II"] and s["network"]["lead_names"] == ["II"]
    assert s["network"]["shape"] == ["batch", 1, 1250] and s["network"]["fs"] == 250
    assert s["parity"]["raw"]["max_prob_diff"] < TOLERANCE
    match = s["parity"]["raw"]["training_match"]
    assert match["segments"] == s["validation"]["segments"] and 0 <= match["agreement"] <= 1
    assert "note: each raw window is preprocessed on its own" in r.stdout
    r = _run([*atml_cmd, "evaluate", "--model", str(out), "--data", str(shared_data / "cpsc2021_sample"), "--json",
              "--runs", "5"])
    ev = json.loads(r.stdout)
    assert ev["input_kind"] == "raw" and ev["input_shape"] == ["batch", 2, 1000] and ev["segments"] > 100

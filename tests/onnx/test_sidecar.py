"""The sidecar schema: what atml export builds is what atml evaluate reads back."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from atml.data import DataSpec
from atml.errors import ExportError
from atml.onnx.sidecar import (
    ExportFacts,
    build_sidecars,
    encode_sidecar,
    input_fs,
    input_kind,
    json_ready,
    load_sidecar,
    quantization_entry,
    recorded_test_subjects,
    recorded_validation,
    sidecar_path,
    sidecar_spec,
)

# The order a sidecar's entries are written in (the float model's; the int8 one adds float_file).
KEYS = ["format", "input", "network", "output", "probabilities", "task", "fs", "preprocessing", "classes", "positive_class", "positive_labels",
        "drop_labels", "label_map", "metrics", "validation", "fit", "test", "parity", "study", "trial", "family",
        "hparams", "n_params", "compression", "opset", "atml_version", "exported_at", "file", "precision", "quantization",
        "size_bytes", "size_kb", "sha256"]


def _facts(**changes) -> ExportFacts:
    base = dict(
        study="exp", trial=3, value=0.91, params={"model.family": "afnet", "afnet.width": 5}, family="afnet",
        hparams={"width": 5, "depth": 2}, n_params=1234, task="binary", leads=1, samples=1250, n_classes=2,
        spec=DataSpec(drop_labels=("UNK",), bandpass=(0.5, 40.0)), classes=("non-AFIB", "AFIB"),
        source="synthetic", val_segments=32, val_subjects=("s1", "s2"), test_segments=16, test_subjects=("s7",),
        fit={"mode": "checkpoint", "members": 1}, held_out=True, parity_diff=2e-8, parity_segments=32,
        parity_tolerance=1e-4,
        metrics_float={"f1": 0.5, "auroc": float("nan"), "tn": 3, "f1_AFIB": 0.5, "loss": 0.7},
        metrics_int8={"f1": 0.4, "accuracy": np.float64(0.75)},
    )
    base.update(changes)
    return ExportFacts(**base)


def _write(sides: dict[Path, dict]) -> None:
    for path, side in sides.items():
        sidecar_path(path).write_bytes(encode_sidecar(side))


def test_build_then_load_round_trips(tmp_path):
    model, q = tmp_path / "best.onnx", tmp_path / "best.int8.onnx"
    quant = quantization_entry({"method": "m"}, 8, np.array([0.9, 0.2]), np.array([0.8, 0.6]))
    sides = build_sidecars(_facts(), model, b"float", int8_path=q, int8_blob=b"int8!", quantization=quant)
    assert list(sides) == [model, q]
    _write(sides)
    for path, side in sides.items():
        assert load_sidecar(path) == side
        text = sidecar_path(path).read_text()
        assert text.endswith("}\n") and json.loads(text) == side
    s, i = sides[model], sides[q]
    assert list(s) == KEYS
    assert list(i) == [*KEYS[:-3], "float_file", *KEYS[-3:]]
    assert s["file"] == "best.onnx" and s["precision"] == "float32" and s["quantization"] is None
    assert s["size_bytes"] == 5 and s["sha256"] == hashlib.sha256(b"float").hexdigest()
    assert i["file"] == "best.int8.onnx" and i["float_file"] == "best.onnx" and i["precision"] == "int8"
    assert i["quantization"] == {"method": "m", "calibration_segments": 8, "calibration_split": "train",
                                 "agreement_with_float": 0.5, "max_prob_diff": pytest.approx(0.4)}
    # Both files describe the same export: everything but the per-file entries is shared.
    assert {k: v for k, v in s.items() if k in KEYS[:-6]} == {k: v for k, v in i.items() if k in KEYS[:-6]}
    # Strict JSON (NaN -> null), numpy scalars as Python numbers, only reported metrics kept.
    assert s["metrics"]["float"] == {"f1": 0.5, "auroc": None, "tn": 3, "f1_AFIB": 0.5}
    assert s["metrics"]["int8"] == {"f1": 0.4, "accuracy": 0.75}
    assert s["input"] == {"name": "ecg", "kind": "network", "shape": ["batch", 1, 1250], "leads": 1, "samples": 1250,
                          "fs": 250, "lead_names": [], "dtype": "float32"}
    assert s["network"] == {"shape": ["batch", 1, 1250], "leads": 1, "samples": 1250, "fs": 250, "lead_names": [],
                            "size_bytes": None, "size_kb": None}
    assert s["probabilities"] is None and s["preprocessing"]["in_graph"] is False and s["parity"]["raw"] is None
    assert s["output"]["meaning"] == "raw logits; softmax gives class probabilities"
    assert s["preprocessing"]["per"] == "segment and lead" and s["preprocessing"]["bandpass"] == [0.5, 40.0]
    assert s["positive_class"] == "AFIB" and s["drop_labels"] == ["UNK"] and s["opset"] == 17
    assert s["trial"] == {"number": 3, "value": 0.91, "params": {"model.family": "afnet", "afnet.width": 5}}


def test_without_int8_there_is_one_sidecar(tmp_path):
    sides = build_sidecars(_facts(task="multilabel", metrics_int8=None), tmp_path / "m.onnx", b"x")
    (side,) = sides.values()
    assert side["metrics"]["int8"] is None and side["positive_class"] is None
    assert side["output"]["meaning"] == "raw logits; sigmoid gives per-class probabilities"


def test_what_evaluate_reads_back(tmp_path):
    facts = _facts()
    model = tmp_path / "best.onnx"
    _write(build_sidecars(facts, model, b"float"))
    side = load_sidecar(model)
    spec = sidecar_spec(side, model, tmp_path / "data", facts.samples)
    assert spec.path == str(tmp_path / "data")
    assert spec.signal_settings() == facts.spec.signal_settings()
    assert (spec.positive, spec.classes, spec.drop_labels) == (("AFIB",), facts.classes, ("UNK",))
    assert recorded_test_subjects(side, model) == ["s7"]
    assert recorded_validation(side) == (side["metrics"]["float"], True)
    refit = {**side, "precision": "int8", "validation": {"held_out": False}}
    assert recorded_validation(refit) == (side["metrics"]["int8"], False)


def test_a_raw_graph_states_both_inputs(tmp_path):
    """A 125 Hz model of 250 Hz segments: the file takes 250 Hz, its network 125 Hz."""
    spec = DataSpec(drop_labels=("UNK",), target_fs=125, bandpass=(1.0, 25.0))
    raw = {"leads": 1, "samples": 1250, "fs": 250, "lead_names": [], "steps": {"normalize": "zscore"},
           "parity": {"max_prob_diff": 3e-7, "segments": 32, "tolerance": 1e-4}, "training_match": None}
    side = build_sidecars(_facts(spec=spec, samples=625, fs_net=125, network_bytes=2048, raw=raw),
                          tmp_path / "m.onnx", b"raw")[tmp_path / "m.onnx"]
    assert side["input"] == {"name": "ecg", "kind": "raw", "shape": ["batch", 1, 1250], "leads": 1, "samples": 1250,
                             "fs": 250, "lead_names": [], "dtype": "float32"}
    assert side["network"] == {"shape": ["batch", 1, 625], "leads": 1, "samples": 625, "fs": 125, "lead_names": [],
                               "size_bytes": 2048, "size_kb": 2.0}
    assert side["fs"] == 250 and side["preprocessing"]["fs"] == 250 and side["preprocessing"]["target_fs"] == 125
    assert side["preprocessing"]["in_graph"] is True and side["preprocessing"]["graph"] == {"normalize": "zscore"}
    assert side["probabilities"]["name"] == "probabilities"
    assert side["parity"]["raw"] == {**raw["parity"], "training_match": None}
    assert (input_kind(side), input_fs(side)) == ("raw", 250)
    net = build_sidecars(_facts(spec=spec, samples=625, fs_net=125), tmp_path / "n.onnx", b"n")[tmp_path / "n.onnx"]
    assert (input_kind(net), input_fs(net), net["fs"]) == ("network", 125, 125)
    # sidecars from before raw graphs: the network's input, at target_fs when there was one
    old = {"input": {"name": "ecg", "shape": ["batch", 1, 625]}, "preprocessing": {"fs": 250, "target_fs": 125}}
    assert (input_kind(old), input_fs(old)) == ("network", 125)
    assert input_fs({"input": {}, "preprocessing": {"fs": 250, "target_fs": None}}) == 250


def test_load_of_a_missing_or_invalid_sidecar(tmp_path):
    model = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match=rf"^sidecar {model}\.json not found \(atml export writes it next to "
                                          r"the model; it holds the segment length, fs, normalisation and class "
                                          r"names evaluate needs\)$"):
        load_sidecar(model)
    sidecar_path(model).write_text("{not json")
    with pytest.raises(ExportError, match=rf"^sidecar {model}\.json: not readable JSON \("):
        load_sidecar(model)
    sidecar_path(model).write_text("[]")
    with pytest.raises(ExportError, match=rf"^sidecar {model}\.json: missing field\(s\) input, preprocessing, classes$"):
        load_sidecar(model)
    sidecar_path(model).write_text(json.dumps({"input": {}, "classes": []}))
    with pytest.raises(ExportError, match=r"missing field\(s\) preprocessing$"):
        load_sidecar(model)


def test_bad_recorded_values_name_the_sidecar(tmp_path):
    model = tmp_path / "m.onnx"
    side = json.loads(encode_sidecar(build_sidecars(_facts(test_subjects=()), model, b"x")[model]))
    with pytest.raises(ExportError, match=rf"^sidecar {model}\.json records no test subjects"):
        recorded_test_subjects(side, model)
    side["preprocessing"]["normalize"] = "bogus"
    with pytest.raises(ExportError, match=rf"^sidecar {model}\.json: .*normalize"):
        sidecar_spec(side, model, tmp_path, 1250)


def test_json_ready():
    got = json_ready({1: (np.float32(0.5), float("inf")), "n": [np.int64(2), -math.inf, None]})
    assert got == {"1": [0.5, None], "n": [2, None, None]}
    assert type(got["n"][0]) is int


def test_reading_and_running_an_export_loads_no_torch():
    """evaluate runs where only onnxruntime is installed; the trial imports convert, which
    must not import the trial back."""
    code = ("import sys, atml.onnx.evaluate, atml.onnx.runtime, atml.onnx.sidecar; "
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "False"
    r = subprocess.run([sys.executable, "-c", "import sys, atml.onnx.convert; print('atml.trial' in sys.modules)"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr[-2000:]

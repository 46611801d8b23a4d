"""The JSON sidecar of an exported model: its one schema, built and read here.

An ONNX file carries its graph but not what a user needs to feed it: segment length,
sampling rate, normalisation, how text labels map to its classes, which subjects it was
checked on. ``input.kind`` says what the graph takes: ``raw`` items as the source has them
(the preprocessing is inside the graph; ``network`` gives the network's own input, shape
and rate) or ``network`` (preprocessed input, ``atml export --no-preprocessing``). ``atml export`` writes that next to the model as ``<model>.json``
(:func:`build_sidecars`, :func:`encode_sidecar`); ``atml evaluate`` reads it back
(:func:`load_sidecar`, :func:`sidecar_spec`). No torch here.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atml import __version__
from atml.data import DataSpec
from atml.data.spec import SIGNAL_FIELDS
from atml.errors import DataError, ExportError
from atml.metrics import METRIC_NAMES

__all__ = [
    "OPSET", "INPUT_NAME", "OUTPUT_NAME", "PROBABILITIES_NAME", "SIDECAR_FORMAT", "REQUIRED_FIELDS",
    "sidecar_path", "json_ready", "file_info", "reported_metrics", "quantization_entry",
    "ExportFacts", "build_sidecars", "encode_sidecar", "load_sidecar",
    "sidecar_fs", "input_kind", "input_fs", "sidecar_spec", "recorded_test_subjects", "recorded_validation",
]

# The exported file's contract, which the sidecar records: one input, one output, opset.
OPSET = 17
INPUT_NAME = "ecg"
OUTPUT_NAME = "logits"
PROBABILITIES_NAME = "probabilities"  # the raw graph's second output
SIDECAR_FORMAT = "atml-onnx/1"
REQUIRED_FIELDS = ("input", "preprocessing", "classes")  # what evaluate cannot do without

# Confusion counts, per-class F1 and the PhysioNet 2017 score join the metric names.
_EXTRA_METRICS = ("tn", "fp", "fn", "tp", "physionet2017")


def sidecar_path(model_path: str | Path) -> Path:
    """``best.onnx`` -> ``best.onnx.json``."""
    return Path(f"{model_path}.json")


def json_ready(obj: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def file_info(blob: bytes) -> dict[str, Any]:
    """Size in bytes and KB and sha256 of a file's bytes."""
    return {"size_bytes": len(blob), "size_kb": round(len(blob) / 1024, 2),
            "sha256": hashlib.sha256(blob).hexdigest()}


def reported_metrics(m: dict[str, float] | None) -> dict[str, Any] | None:
    """The entries of a metrics dict a sidecar keeps (None stays None)."""
    return None if m is None else {k: v for k, v in m.items()
                                   if k in (*METRIC_NAMES, *_EXTRA_METRICS) or k.startswith("f1_")}


def quantization_entry(scheme: dict[str, Any], calibration_segments: int, p_int8: np.ndarray,
                       p_float: np.ndarray) -> dict[str, Any]:
    """The int8 sidecar's ``quantization``: the scheme, its calibration and how far it moved
    the probabilities of the validation segments from the float model's."""
    return {**scheme, "calibration_segments": calibration_segments, "calibration_split": "train",
            "agreement_with_float": float(np.mean((p_int8 >= 0.5) == (p_float >= 0.5))),
            "max_prob_diff": float(np.abs(p_int8 - p_float).max())}


@dataclass(frozen=True)
class ExportFacts:
    """What every sidecar of one export records: the trial, the model, its data and checks."""

    study: str
    trial: int
    value: float | None
    params: dict[str, Any]
    family: str
    hparams: dict[str, Any]
    n_params: int
    task: str
    leads: int
    samples: int
    n_classes: int
    spec: DataSpec  # the trial's data settings (preprocessing, label mapping)
    classes: tuple[str, ...]
    source: str
    val_segments: int
    val_subjects: tuple[str, ...]
    test_segments: int
    test_subjects: tuple[str, ...]
    fit: dict[str, Any]  # the final fit (atml.onnx.refit.FinalFit.info)
    held_out: bool  # False after a refit: the validation subjects were trained on
    parity_diff: float
    parity_segments: int
    parity_tolerance: float
    metrics_float: dict[str, float]
    metrics_int8: dict[str, float] | None = None
    fs_net: int | None = None  # rate of the network's input (None: data.target_fs, else data.fs)
    lead_names: tuple[str, ...] = ()  # the network's leads, when the format names them
    network_bytes: int | None = None  # size of the network's own float graph
    # The raw graph (None: the file takes the network's input): leads, samples, fs, lead_names
    # of its input, its preprocessing steps, its parity entry and the training_match entry.
    raw: dict[str, Any] | None = None
    # train.prune / train.qat of the trial: {"prune": {amount, epochs, steps} | None, "qat_epochs"}; None: neither
    compression: dict[str, Any] | None = None

    def network(self) -> dict[str, Any]:
        """The network's input: shape, leads, samples, rate and lead names, and its graph's size."""
        fs = self.fs_net if self.fs_net is not None else int(self.spec.target_fs or self.spec.fs)
        size = self.network_bytes
        return {"shape": ["batch", self.leads, self.samples], "leads": self.leads, "samples": self.samples,
                "fs": int(fs), "lead_names": list(self.lead_names), "size_bytes": size,
                "size_kb": None if size is None else round(size / 1024, 2)}

    def graph_input(self) -> dict[str, Any]:
        """The file's input: the raw items (raw graph) or the network's input."""
        net, raw = self.network(), self.raw
        if raw is None:
            return {"name": INPUT_NAME, "kind": "network", "shape": net["shape"], "leads": self.leads,
                    "samples": self.samples, "fs": net["fs"], "lead_names": net["lead_names"], "dtype": "float32"}
        return {"name": INPUT_NAME, "kind": "raw", "shape": ["batch", raw["leads"], raw["samples"]],
                "leads": raw["leads"], "samples": raw["samples"], "fs": raw["fs"],
                "lead_names": list(raw["lead_names"]), "dtype": "float32"}

    def common(self) -> dict[str, Any]:
        """The entries the float and the int8 sidecar share, in the order they are written."""
        spec, task, raw = self.spec, self.task, self.raw
        meaning = "sigmoid gives per-class probabilities" if task == "multilabel" else \
            "softmax gives class probabilities"
        inp = self.graph_input()
        probs = None if raw is None else {
            "name": PROBABILITIES_NAME, "shape": ["batch", self.n_classes],
            "meaning": ("sigmoid of the logits: per-class probabilities" if task == "multilabel"
                        else "softmax of the logits: class probabilities")}
        parity_raw = None if raw is None else {**raw["parity"], "training_match": raw.get("training_match")}
        return {
            "format": SIDECAR_FORMAT,
            "input": inp,
            "network": self.network(),
            "output": {"name": OUTPUT_NAME, "shape": ["batch", self.n_classes], "meaning": "raw logits; " + meaning},
            "probabilities": probs,
            "task": task,
            "fs": inp["fs"],  # the rate of the file's input
            "preprocessing": {**spec.signal_settings(),
                              "per": "segment and lead" if spec.normalize == "zscore" else None,
                              "in_graph": raw is not None, "graph": None if raw is None else raw["steps"]},
            "classes": list(self.classes),
            "positive_class": self.classes[1] if task == "binary" else None,
            "positive_labels": list(spec.positive),
            "drop_labels": list(spec.drop_labels),
            "label_map": spec.label_map,
            "metrics": {"float": reported_metrics(self.metrics_float), "int8": reported_metrics(self.metrics_int8)},
            "validation": {"segments": self.val_segments, "subjects": list(self.val_subjects), "source": self.source,
                           # a refit trains on these subjects: its validation figures are then in-sample
                           "held_out": self.held_out},
            "fit": self.fit,
            # held out by the search (never used for selection): `atml evaluate --subjects test`
            "test": {"segments": self.test_segments, "subjects": list(self.test_subjects)},
            # the network's logits against torch; raw: the whole graph against Python + torch
            "parity": {"max_abs_diff": self.parity_diff, "segments": self.parity_segments,
                       "tolerance": self.parity_tolerance, "raw": parity_raw},
            "study": self.study,
            "trial": {"number": self.trial, "value": self.value, "params": self.params},
            "family": self.family,
            "hparams": self.hparams,
            "n_params": self.n_params,
            "compression": self.compression,
            "opset": OPSET,
            "atml_version": __version__,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def build_sidecars(facts: ExportFacts, path: Path, blob: bytes, *, int8_path: Path | None = None,
                   int8_blob: bytes | None = None, quantization: dict[str, Any] | None = None
                   ) -> dict[Path, dict[str, Any]]:
    """``{model path: its sidecar}``: the float model's, then the int8 model's (if given)."""
    base = facts.common()
    out = {path: json_ready({**base, "file": path.name, "precision": "float32", "quantization": None,
                             **file_info(blob)})}
    if int8_path is not None and int8_blob is not None:
        out[int8_path] = json_ready({**base, "file": int8_path.name, "precision": "int8",
                                     "quantization": quantization, "float_file": path.name,
                                     **file_info(int8_blob)})
    return out


def encode_sidecar(side: dict[str, Any]) -> bytes:
    """The bytes of a sidecar file: indented strict JSON and a final newline."""
    return json.dumps(side, indent=2, allow_nan=False).encode() + b"\n"


def load_sidecar(model_path: str | Path) -> dict[str, Any]:
    """The JSON sidecar of ``model_path``; ExportError naming the file when missing or bad."""
    p = sidecar_path(model_path)
    if not p.is_file():
        raise ExportError(f"sidecar {p} not found (atml export writes it next to the model; it holds the "
                          "segment length, fs, normalisation and class names evaluate needs)")
    try:
        side = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"sidecar {p}: not readable JSON ({e})") from None
    missing = [k for k in REQUIRED_FIELDS if not isinstance(side, dict) or k not in side]
    if missing:
        raise ExportError(f"sidecar {p}: missing field(s) {', '.join(missing)}")
    return side


def sidecar_fs(side: dict[str, Any]) -> int:
    """The source rate of txt/npz/synthetic segments the export read (``DataSpec.fs``)."""
    return int(side["preprocessing"].get("fs", side.get("fs", 250)))


def input_kind(side: dict[str, Any]) -> str:
    """``raw`` (the preprocessing is in the graph) or ``network``; sidecars before raw graphs: network."""
    return str((side.get("input") or {}).get("kind", "network"))


def input_fs(side: dict[str, Any]) -> int:
    """The sampling rate of the file's input (older sidecars: data.target_fs, else data.fs)."""
    fs = (side.get("input") or {}).get("fs")
    if fs is not None:
        return int(fs)
    return int(side["preprocessing"].get("target_fs") or sidecar_fs(side))


def sidecar_spec(side: dict[str, Any], model_path: str | Path, data_path: str | Path, samples: int) -> DataSpec:
    """How to read ``data_path`` for the model: the exported trial's preprocessing and labels.

    Sidecars older than some fields keep the defaults; ``samples`` (the model's input
    length) stands in for a missing segment length. A bad value is an ExportError naming
    the sidecar.
    """
    pre = side["preprocessing"]
    try:
        signal = {k: pre[k] for k in SIGNAL_FIELDS if k in pre}
        signal.update(segment_length=int(pre.get("segment_length") or samples), fs=sidecar_fs(side))
        return DataSpec(path=str(data_path), format="auto",
                        positive=tuple(side.get("positive_labels") or ("AFIB",)),
                        classes=tuple(side["classes"]), drop_labels=tuple(side.get("drop_labels", ("UNK",))),
                        label_map=side.get("label_map"), **signal)
    except DataError as e:
        raise ExportError(f"sidecar {sidecar_path(model_path)}: {e}") from None


def recorded_test_subjects(side: dict[str, Any], model_path: str | Path) -> list[str]:
    """The held-out test subjects the export recorded from the study's split."""
    test = (side.get("test") or {}).get("subjects")
    if not test:
        raise ExportError(f"sidecar {sidecar_path(model_path)} records no test subjects (the study had no test split)")
    return list(test)


def recorded_validation(side: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """The validation metrics of this file's precision, and whether they are held out."""
    metrics = (side.get("metrics") or {}).get("int8" if side.get("precision") == "int8" else "float")
    return metrics, bool((side.get("validation") or {}).get("held_out", True))

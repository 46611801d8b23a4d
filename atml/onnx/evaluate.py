"""Score an exported ONNX model: metrics of a session, and ``atml evaluate``.

``atml evaluate`` is ATML's official test: an ONNX file and its JSON sidecar (written by
:mod:`atml.onnx.export`, schema in :mod:`atml.onnx.sidecar`) are all it needs. The sidecar
supplies what the model cannot carry: segment length, sampling rate, normalisation and how
text labels map to its classes. A raw graph (sidecar ``input.kind: raw``) is fed the items
as the source has them (the same segments or windows, unfiltered, at the source rate): its
preprocessing is inside it. No torch here: evaluation runs where only onnxruntime is
installed.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from atml.data import DataSpec, load_dataset
from atml.errors import DataError, ExportError
from atml.metrics import METRIC_NAMES, binary_metrics, per_subject_metrics, task_metrics
from atml.onnx.preprocess_graph import raw_spec
from atml.onnx.runtime import measure_latency, model_input_shape, ort_session, run_onnx, softmax
from atml.onnx.sidecar import (
    file_info,
    input_fs,
    input_kind,
    json_ready,
    load_sidecar,
    recorded_test_subjects,
    recorded_validation,
    sidecar_path,
    sidecar_spec,
)

__all__ = ["onnx_metrics", "Evaluation", "evaluate_model"]

log = logging.getLogger(__name__)

# Latency: batch 1 on this many real segments; batch_latency adds these batch sizes.
_LATENCY_SEGMENTS = 64
_BATCHES = (16, 128)
_SAMPLE_SEGMENTS = 256  # real segments kept in memory for the timed runs


def onnx_metrics(session: Any, x: np.ndarray, y: np.ndarray, task: str = "binary",
                 classes: tuple[str, ...] = ()) -> tuple[dict[str, float], np.ndarray]:
    """Metrics of an ONNX model on (x, y): binary (class 1 positive) returns P(class 1) per
    segment; multi-class/multi-label return the probability matrix."""
    logits = run_onnx(session, x)
    if task == "binary":
        if logits.ndim != 2 or logits.shape[1] != 2:
            raise ExportError(f"metrics need a binary model (2 logits); its output has shape {list(logits.shape)}")
        p = softmax(logits.astype(np.float64))[:, 1]
        return binary_metrics(y, p), p
    z = logits.astype(np.float64)
    proba = 1 / (1 + np.exp(-z)) if task == "multilabel" else softmax(z)
    return task_metrics(task, y, proba, classes), proba


@dataclass(frozen=True)
class Evaluation:
    """Result of :func:`evaluate_model`; ``to_dict()`` is what ``--json`` prints."""

    model: str
    precision: str
    size_bytes: int
    size_kb: float
    data: str
    format: str
    input_shape: list[Any]
    input_kind: str  # raw (preprocessing in the graph) | network
    input_fs: int
    segments: int
    subjects: int
    skipped: int
    classes: list[str]
    metrics: dict[str, float]
    confusion: dict[str, Any]
    per_subject: list[dict[str, Any]]
    latency: dict[str, Any]
    batch_latency: list[dict[str, Any]] = field(default_factory=list)
    validation_metrics: dict[str, Any] | None = None  # from the sidecar, for comparison
    validation_held_out: bool = True  # False after `atml export --refit` (validation subjects trained on)
    sha256_matches_sidecar: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return json_ready(asdict(self))


@dataclass(frozen=True)
class _Scored:
    """What scoring the model on the data produced (read while the data's cache exists)."""

    metrics: dict[str, float]
    p: np.ndarray
    y: np.ndarray
    subject: np.ndarray
    sample: np.ndarray  # up to _SAMPLE_SEGMENTS real segments, for the latency runs
    source: str
    format: str
    skipped: int


def _open(mp: Path) -> tuple[dict[str, Any], bytes, Any, int, int]:
    """The sidecar, bytes, session and (leads, samples) of a model, checked to belong together."""
    if not mp.is_file():
        raise ExportError(f"model file not found: {mp}")
    side = load_sidecar(mp)
    blob = mp.read_bytes()
    session = ort_session(blob, what=str(mp))
    leads, samples = model_input_shape(session)
    s_leads, s_samples = side["input"].get("leads"), side["input"].get("samples")
    if (s_leads, s_samples) != (leads, samples):
        raise ExportError(f"sidecar {sidecar_path(mp)} describes input [batch, {s_leads}, {s_samples}] but "
                          f"model {mp} takes [batch, {leads}, {samples}]; they do not belong together")
    return side, blob, session, leads, samples


def _score(session: Any, spec: DataSpec, expect: str, leads: int, samples: int, subjects: str | None,
           side: dict[str, Any], mp: Path) -> _Scored:
    """Load the data as the sidecar says, keep ``subjects``, and score the model on it."""
    with tempfile.TemporaryDirectory(prefix="atml-eval-") as cache:
        try:
            ds = load_dataset(spec, cache)
        except DataError as e:
            # The model's input shape explains a wrong segment length, not a bad file name or an undecodable file.
            shape_problem = any(w in str(e) for w in ("samples, expected", " leads", "segment length"))
            raise DataError(f"{e} ({expect})" if shape_problem else str(e)) from None
        if (ds.n_leads, ds.n_samples) != (leads, samples):
            raise DataError(f"data {ds.source} has segments [{ds.n_leads}, {ds.n_samples}] but {expect}")
        # Scored while the temporary cache exists: x is a memmap over it, never copied whole.
        y, subject = np.asarray(ds.y, dtype=np.int64), np.asarray(ds.subject).astype(str)
        source, x = ds.source, ds.x
        if subjects is not None:
            keep = recorded_test_subjects(side, mp) if subjects == "test" else \
                [s.strip() for s in subjects.split(",") if s.strip()]
            missing = sorted(set(keep) - set(subject.tolist()))
            if missing:
                raise DataError(f"data {ds.source} has no subject(s) {', '.join(missing[:5])}")
            mask = np.isin(subject, keep)
            x, y, subject = np.asarray(ds.x[mask]), y[mask], subject[mask]
            source = f"{source} (subjects: {subjects if subjects != 'test' else 'test split'})"
        metrics, p = onnx_metrics(session, x, y)
        sample = np.array(x[: min(len(y), _SAMPLE_SEGMENTS)], dtype=np.float32)
        return _Scored(metrics, p, y, subject, sample, source, spec.resolved_format(), int(ds.skipped))


def evaluate_model(model_path: str | Path, data_path: str | Path, *, batch_latency: bool = False,
                   runs: int = 200, warmup: int = 20, subjects: str | None = None,
                   on_bad: str | None = None) -> Evaluation:
    """Score an exported ONNX model on a labelled dataset (any format atml.data reads).

    Preprocessing and label mapping come from the model's sidecar: the same segment
    length, fs and normalisation as in the search (a raw graph gets the items unprocessed:
    its preprocessing is inside), labels in ``positive_labels`` (default AFIB) are class 1,
    ``drop_labels`` are removed. Latency is per segment at batch 1 on
    one intra-op thread (``batch_latency`` adds batches of 16 and 128). ``subjects`` keeps
    only some subjects: ``test`` (the held-out test subjects the sidecar recorded from the
    study's split) or a comma-separated list. ``on_bad="skip"`` scores the readable segments
    and counts the bad ones (``Evaluation.skipped``) instead of stopping at the first.
    """
    mp = Path(model_path)
    side, blob, session, leads, samples = _open(mp)
    kind, fs = input_kind(side), input_fs(side)
    if side.get("task", "binary") != "binary":
        raise ExportError(f"sidecar {sidecar_path(mp)}: task {side['task']}: atml evaluate scores binary models "
                          "only; multi-class and multi-label models are scored by atml export on validation data")
    spec = sidecar_spec(side, mp, data_path, samples)
    if kind == "raw":  # the same items, as the source has them
        spec = raw_spec(spec, side["input"].get("lead_names") or None)
    if on_bad is not None:
        spec = dataclasses.replace(spec, on_bad=on_bad)  # DataSpec checks the value
    expect = f"model {mp.name} expects [batch, {leads}, {samples}] (leads, samples) at {fs} Hz" + \
        (" (raw: its preprocessing is in the graph)" if kind == "raw" else "")
    r = _score(session, spec, expect, leads, samples, subjects, side, mp)
    pred = (r.p >= 0.5).astype(np.int64)
    lat = measure_latency(blob, r.sample[:_LATENCY_SEGMENTS], batch=1, runs=runs, warmup=warmup)
    batches = [measure_latency(blob, r.sample, batch=b, runs=max(5, runs // 10), warmup=3)
               for b in _BATCHES] if batch_latency else []
    m = r.metrics
    cm = {"labels": list(side["classes"]), "rows": "true", "columns": "predicted",
          "matrix": [[m["tn"], m["fp"]], [m["fn"], m["tp"]]]}
    info = file_info(blob)
    sha = side.get("sha256")
    if sha is not None and info["sha256"] != sha:
        log.warning("%s differs from the file its sidecar describes (sha256); preprocessing may not match", mp)
    val_metrics, held_out = recorded_validation(side)
    return Evaluation(
        model=str(mp), precision=str(side.get("precision", "float32")), size_bytes=info["size_bytes"],
        size_kb=info["size_kb"], data=r.source, format=r.format, input_shape=["batch", leads, samples],
        input_kind=kind, input_fs=fs,
        segments=len(r.y), subjects=len(set(r.subject.tolist())), skipped=r.skipped,
        classes=list(side["classes"]), metrics={k: m[k] for k in METRIC_NAMES}, confusion=cm,
        per_subject=per_subject_metrics(r.subject, r.y, pred), latency=lat, batch_latency=batches,
        validation_metrics=val_metrics, validation_held_out=held_out,
        sha256_matches_sidecar=None if sha is None else info["sha256"] == sha,
    )

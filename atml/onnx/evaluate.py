"""Run an exported ONNX model with onnxruntime: sessions, metrics, latency, ``atml evaluate``.

``atml evaluate`` is ATML's official test: an ONNX file and its JSON sidecar (written by
:mod:`atml.onnx.export`) are all it needs. The sidecar supplies what the model cannot carry:
segment length, sampling rate, normalisation and how text labels map to its classes.
No torch here: evaluation runs where only onnxruntime is installed.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from atml.errors import DataError, ExportError
from atml.metrics import METRIC_NAMES, binary_metrics, task_metrics

__all__ = [
    "ort_session", "run_onnx", "softmax", "onnx_metrics", "sidecar_path", "json_ready",
    "load_sidecar", "model_input_shape", "measure_latency", "Evaluation", "evaluate_model",
]

log = logging.getLogger(__name__)

_SIDECAR_FIELDS = ("input", "preprocessing", "classes")


def ort_session(model: bytes | str | Path, threads: int | None = None, what: str | None = None) -> Any:
    """An onnxruntime CPU session; ``threads`` pins intra-op threads (latency runs)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only: ORT's warnings would break the one-line contract
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    src = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        name = what or (str(model) if isinstance(model, (str, Path)) else "model")
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"{name}: not a valid ONNX model for onnxruntime ({msg[:200]})") from None


def run_onnx(session: Any, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of ``session`` for float32 ``x`` (N, leads, samples), in batches."""
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32)})[0]
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.empty((0, 2), np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


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
    missing = [k for k in _SIDECAR_FIELDS if not isinstance(side, dict) or k not in side]
    if missing:
        raise ExportError(f"sidecar {p}: missing field(s) {', '.join(missing)}")
    return side


def model_input_shape(session: Any) -> tuple[int, int]:
    """(leads, samples) of a model's single [batch, leads, samples] input."""
    inputs = session.get_inputs()
    shape = list(inputs[0].shape) if len(inputs) == 1 else []
    if len(shape) != 3 or not all(isinstance(d, int) for d in shape[1:]):
        raise ExportError(f"model input must be one tensor [batch, leads, samples] with fixed leads and "
                          f"samples; got {[(i.name, i.shape) for i in inputs]}")
    return int(shape[1]), int(shape[2])


def measure_latency(model: bytes | str | Path, x: np.ndarray, batch: int = 1, runs: int = 200,
                    warmup: int = 20) -> dict[str, Any]:
    """Per-segment latency (ms) of ``batch``-sized calls on one intra-op thread.

    ``x`` holds real segments; they are cycled so every call sees real input.
    """
    session = ort_session(model, threads=1)
    name = session.get_inputs()[0].name
    reps = -(-batch // len(x))
    pool = np.ascontiguousarray(np.concatenate([x] * reps) if reps > 1 else x, dtype=np.float32)
    starts = [(i * batch) % max(1, len(pool) - batch + 1) for i in range(warmup + runs)]
    times = []
    for k, s in enumerate(starts):
        feed = {name: pool[s:s + batch]}
        t = time.perf_counter_ns()
        session.run(None, feed)
        if k >= warmup:
            times.append((time.perf_counter_ns() - t) / 1e6 / batch)
    a = np.asarray(times)
    return {"batch": batch, "runs": runs, "warmup": warmup, "threads": 1, "mean_ms": float(a.mean()),
            "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95))}


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


def _subject_key(s: str) -> tuple[str, int, str]:
    m = re.match(r"^(\D*)(\d+)(.*)$", s)
    return (m.group(1), int(m.group(2)), m.group(3)) if m else (s, -1, "")


def _per_subject(subject: np.ndarray, y: np.ndarray, pred: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for s in sorted(set(subject.tolist()), key=_subject_key):
        k = subject == s
        yt, yp = y[k], pred[k]
        tp = int(((yt == 1) & (yp == 1)).sum())
        fp = int(((yt == 0) & (yp == 1)).sum())
        fn = int(((yt == 1) & (yp == 0)).sum())
        # F1 of the positive class means nothing for a subject without positive segments.
        f1 = 2 * tp / (2 * tp + fp + fn) if yt.sum() else None
        rows.append({"subject": s, "segments": int(k.sum()), "positives": int(yt.sum()),
                     "predicted_positive": int(yp.sum()), "accuracy": float((yt == yp).mean()), "f1": f1})
    return rows


def _subject_list(subjects: str, side: dict[str, Any], mp: Path) -> list[str]:
    if subjects != "test":
        return [s.strip() for s in subjects.split(",") if s.strip()]
    test = (side.get("test") or {}).get("subjects")
    if not test:
        raise ExportError(f"sidecar {sidecar_path(mp)} records no test subjects (the study had no test split)")
    return list(test)


def evaluate_model(model_path: str | Path, data_path: str | Path, *, batch_latency: bool = False,
                   runs: int = 200, warmup: int = 20, subjects: str | None = None) -> Evaluation:
    """Score an exported ONNX model on a labelled dataset (any format atml.data reads).

    Preprocessing and label mapping come from the model's sidecar: the same segment
    length, fs and normalisation as in the search, labels in ``positive_labels`` (default
    AFIB) are class 1, ``drop_labels`` are removed. Latency is per segment at batch 1 on
    one intra-op thread (``batch_latency`` adds batches of 16 and 128). ``subjects`` keeps
    only some subjects: ``test`` (the held-out test subjects the sidecar recorded from the
    study's split) or a comma-separated list.
    """
    import hashlib

    from atml.data import DataSpec, load_dataset
    from atml.data.preprocess import SIGNAL_FIELDS

    mp = Path(model_path)
    if not mp.is_file():
        raise ExportError(f"model file not found: {mp}")
    side = load_sidecar(mp)
    blob = mp.read_bytes()
    session = ort_session(blob, what=str(mp))
    leads, samples = model_input_shape(session)
    pre = side["preprocessing"]
    s_leads, s_samples = side["input"].get("leads"), side["input"].get("samples")
    if (s_leads, s_samples) != (leads, samples):
        raise ExportError(f"sidecar {sidecar_path(mp)} describes input [batch, {s_leads}, {s_samples}] but "
                          f"model {mp} takes [batch, {leads}, {samples}]; they do not belong together")
    fs = int(pre.get("fs", side.get("fs", 250)))
    if side.get("task", "binary") != "binary":
        raise ExportError(f"sidecar {sidecar_path(mp)}: task {side['task']}: atml evaluate scores binary models "
                          "only; multi-class and multi-label models are scored by atml export on validation data")
    try:
        # the exported trial's preprocessing; sidecars older than some fields keep the defaults
        signal = {k: pre[k] for k in SIGNAL_FIELDS if k in pre}
        signal.update(segment_length=int(pre.get("segment_length") or samples), fs=fs)
        spec = DataSpec(path=str(data_path), format="auto", positive=tuple(side.get("positive_labels") or ("AFIB",)),
                        classes=tuple(side["classes"]), drop_labels=tuple(side.get("drop_labels", ("UNK",))),
                        label_map=side.get("label_map"), **signal)
    except DataError as e:
        raise ExportError(f"sidecar {sidecar_path(mp)}: {e}") from None
    expect = f"model {mp.name} expects [batch, {leads}, {samples}] (leads, samples) at {fs} Hz"
    with tempfile.TemporaryDirectory(prefix="atml-eval-") as cache:
        try:
            ds = load_dataset(spec, cache)
        except DataError as e:
            raise DataError(f"{e} ({expect})") from None
        if (ds.n_leads, ds.n_samples) != (leads, samples):
            raise DataError(f"data {ds.source} has segments [{ds.n_leads}, {ds.n_samples}] but {expect}")
        # Scored while the temporary cache exists: x is a memmap over it, never copied whole.
        y, subject = np.asarray(ds.y, dtype=np.int64), np.asarray(ds.subject).astype(str)
        fmt, source, skipped = spec.resolved_format(), ds.source, ds.skipped
        x = ds.x
        if subjects is not None:
            keep = _subject_list(subjects, side, mp)
            missing = sorted(set(keep) - set(subject.tolist()))
            if missing:
                raise DataError(f"data {ds.source} has no subject(s) {', '.join(missing[:5])}")
            mask = np.isin(subject, keep)
            x, y, subject = np.asarray(ds.x[mask]), y[mask], subject[mask]
            source = f"{source} (subjects: {subjects if subjects != 'test' else 'test split'})"
        metrics, p = onnx_metrics(session, x, y)
        sample = np.array(x[: min(len(y), 256)], dtype=np.float32)
    pred = (p >= 0.5).astype(np.int64)
    lat = measure_latency(blob, sample[:64], batch=1, runs=runs, warmup=warmup)
    batches = [measure_latency(blob, sample, batch=b, runs=max(5, runs // 10), warmup=3)
               for b in (16, 128)] if batch_latency else []
    cm = {"labels": list(side["classes"]), "rows": "true", "columns": "predicted",
          "matrix": [[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]]}
    sha = side.get("sha256")
    if sha is not None and hashlib.sha256(blob).hexdigest() != sha:
        log.warning("%s differs from the file its sidecar describes (sha256); preprocessing may not match", mp)
    return Evaluation(
        model=str(mp), precision=str(side.get("precision", "float32")), size_bytes=len(blob),
        size_kb=round(len(blob) / 1024, 2), data=source, format=fmt, input_shape=["batch", leads, samples],
        segments=len(y), subjects=len(set(subject.tolist())), skipped=int(skipped), classes=list(side["classes"]),
        metrics={k: metrics[k] for k in METRIC_NAMES}, confusion=cm, per_subject=_per_subject(subject, y, pred),
        latency=lat, batch_latency=batches,
        validation_metrics=(side.get("metrics") or {}).get("int8" if side.get("precision") == "int8" else "float"),
        validation_held_out=bool((side.get("validation") or {}).get("held_out", True)),
        sha256_matches_sidecar=None if sha is None else hashlib.sha256(blob).hexdigest() == sha,
    )

"""Run an ONNX model with onnxruntime: sessions, logits, the input shape, latency.

No torch here: exported models run where only onnxruntime is installed. onnxruntime
itself is imported only when a session is made.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from atml.errors import ExportError

__all__ = ["ort_session", "run_onnx", "softmax", "model_input_shape", "measure_latency"]


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

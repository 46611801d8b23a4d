"""The raw graph of an export: its items, its parity check and its figures.

``atml export`` (without ``--no-preprocessing``) ships :func:`atml.onnx.preprocess_graph.raw_graph`.
This module reads the trial's data as raw items (:func:`~atml.onnx.preprocess_graph.raw_spec`:
the same segments or windows, at the source rate, unfiltered, not normalised), checks the
graph against the Python preprocessing + the torch model on validation items (within
:data:`PROB_TOLERANCE` on probabilities) and, for windowed data, measures how far a window
preprocessed on its own (what the graph does) moves the model from the windows it was trained
on (cut from whole filtered records).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from atml.data import DataSpec, load_dataset
from atml.errors import ExportError
from atml.onnx.convert import check_onnx
from atml.onnx.preprocess_graph import RawPlan, raw_graph, raw_plan, raw_spec, reference_preprocess
from atml.onnx.runtime import ort_session, softmax
from atml.onnx.sidecar import INPUT_NAME

__all__ = ["PROB_TOLERANCE", "RawItems", "spread", "probabilities", "load_raw_items", "verified_raw",
           "training_match"]

PROB_TOLERANCE = 1e-4  # max |probability difference| between the raw graph and Python + torch


def spread(n: int, k: int) -> np.ndarray:
    """Up to ``k`` evenly spaced positions in range(n): every subject of a split is covered."""
    return np.unique(np.linspace(0, n - 1, num=min(n, k)).round().astype(np.int64)) if n else np.empty(0, np.int64)


def probabilities(logits: np.ndarray, task: str) -> np.ndarray:
    """Softmax of logits (sigmoid for multi-label), as the raw graph's second output."""
    z = np.asarray(logits, dtype=np.float64)
    return 1 / (1 + np.exp(-z)) if task == "multilabel" else softmax(z)


@dataclass(frozen=True)
class RawItems:
    """The trial's data as the raw graph takes it, split by the study's subjects."""

    plan: RawPlan
    ds: Any  # atml.data.Dataset of raw items
    val: np.ndarray  # sorted indices of validation subjects' items
    train: np.ndarray
    aligned: bool  # item i is the network dataset's item i (same subject and label)

    def x(self, idx: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.ds.x[idx], dtype=np.float32)

    def y(self, idx: np.ndarray, task: str) -> np.ndarray:
        return np.asarray(self.ds.y[idx], dtype=np.float32 if task == "multilabel" else np.int64)


def load_raw_items(spec: DataSpec, cache: str | Path, net_ds: Any, split: Any,
                   shape: tuple[int, int]) -> RawItems:
    """Raw items of ``spec``'s data and the plan that turns them into the network's ``shape``."""
    ds = load_dataset(raw_spec(spec), cache)
    try:
        plan = raw_plan(spec, ds.fs, ds.n_leads, ds.n_samples, tuple(ds.leads))
    except ExportError as e:
        raise ExportError(f"{e} (--no-preprocessing exports the network alone)") from None
    if (plan.n_leads_net, plan.samples_net) != tuple(shape):
        raise ExportError(f"raw items [{ds.n_leads}, {ds.n_samples}] at {ds.fs} Hz preprocess to "
                          f"[{plan.n_leads_net}, {plan.samples_net}] but the model takes [{shape[0]}, {shape[1]}]")
    subject = np.asarray(ds.subject).astype(str)
    val = np.flatnonzero(np.isin(subject, list(split.val_subjects)))
    train = np.flatnonzero(np.isin(subject, list(split.train_subjects)))
    if len(val) == 0:
        raise ExportError(f"no raw items of the validation subjects in {ds.source}")
    aligned = len(ds) == len(net_ds) and np.array_equal(subject, np.asarray(net_ds.subject).astype(str)) \
        and np.array_equal(np.asarray(ds.y), np.asarray(net_ds.y))
    return RawItems(plan, ds, val, train, bool(aligned))


def verified_raw(model: nn.Module, net_blob: bytes, items: RawItems, task: str, number: int,
                 parity_segments: int) -> tuple[bytes, Any, dict[str, Any]]:
    """The raw graph of ``net_blob``, checked by onnx.checker and against the Python
    preprocessing + torch on validation items; returns (bytes, session, parity entry)."""
    blob = raw_graph(net_blob, items.plan, task)
    check_onnx(blob, "exported raw graph")
    session = ort_session(blob, what=f"exported raw graph of trial #{number}")
    idx = items.val[spread(len(items.val), parity_segments)]
    x = items.x(idx)
    model.eval()
    with torch.no_grad():
        expected = torch.cat([model(torch.from_numpy(reference_preprocess(x[i:i + 64], items.plan)))
                              for i in range(0, len(x), 64)]).numpy()
    outs = [session.run(None, {INPUT_NAME: x[i:i + 64]}) for i in range(0, len(x), 64)]
    logits, probs = np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])
    d_prob = float(np.abs(probs - probabilities(expected, task)).max())
    d_logit = float(np.abs(logits - expected).max())
    if not d_prob < PROB_TOLERANCE:
        raise ExportError(f"raw graph parity check failed: its probabilities differ from the Python preprocessing "
                          f"+ torch by up to {d_prob:.3g} on {len(x)} validation items (tolerance {PROB_TOLERANCE:g})")
    return blob, session, {"reference": "atml.data preprocessing of the same raw items (scipy) + torch",
                           "max_prob_diff": d_prob, "max_logit_diff": d_logit, "segments": len(x),
                           "tolerance": PROB_TOLERANCE}


def training_match(items: RawItems, p_raw: np.ndarray, p_net: np.ndarray) -> dict[str, Any] | None:
    """For windowed data: how far the raw graph (each window preprocessed on its own) is from the
    network on the cached validation windows (cut from whole preprocessed records or segments).

    None without windows (the two are then the same inputs, held by the parity check) or when the
    raw windows do not pair one to one with the cached ones.
    """
    if items.plan.spec.window is None or not items.aligned or p_raw.shape != p_net.shape:
        return None
    return {"note": "each raw window is preprocessed on its own; training windows were cut from whole "
                    "preprocessed records, so their edges differ",
            "segments": int(len(p_raw)), "max_prob_diff": float(np.abs(p_raw - p_net).max()),
            "agreement": float(np.mean((p_raw >= 0.5) == (p_net >= 0.5)))}

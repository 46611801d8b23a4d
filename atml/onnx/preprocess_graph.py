"""The raw graph: a trial's preprocessing as fixed ONNX nodes in front of its network.

``atml export`` ships by default a graph that takes one item as the source has it
(``[batch, source leads, samples]`` at the source rate) and does inside what
:mod:`atml.data` does in Python before caching: lead selection, resampling, the band-pass,
the window cut and per-segment normalisation; then the network, and a softmax (sigmoid
for multi-label) output ``probabilities`` beside the ``logits``.

Each step reproduces the Python one on a fixed-length item rather than approximating it:

- lead selection is a Gather of the source rows (:func:`atml.data.transforms.select_leads`);
- ``resample_poly`` is upsampling by zeros, its Kaiser low-pass FIR and downsampling:
  a zero-stuffing reshape and one strided Conv with the same float32 taps;
- ``sosfiltfilt`` on an item of ``n`` samples is an odd extension by ``edge`` samples,
  the IIR run forward from the state ``zi * ext[0]``, backward from ``zi * y[-1]``, and
  the extension cut off. The IIR runs by blocks of 32 samples: within a block a 32-tap
  FIR, across blocks its state (8 numbers for a band-pass), whose recurrence is solved by a prefix scan
  in log2(blocks) MatMuls (no loop). The block matrices are probed from ``sosfilt``
  itself and moved to balanced state coordinates (float32 error ~1e-6 instead of ~1e-4
  in sosfilt's own). A plain FIR would not do: the Butterworth responses decay too
  slowly (0.5 Hz at 250 Hz: ~2800 taps to 1e-6), and a full-length kernel costs n^2
  multiply-adds per pass (4 ms per 5 s segment on one core against 0.3 ms by blocks);
- z-score normalisation is ReduceMean / Sqrt with the same 1e-8 floor on the deviation,
  plus a floor relative to the raw lead's RMS, so that a flat lead, which Python filters
  in float64 to exact zeros, is not float32 rounding noise blown up to unit variance.

A windowed item (``data.window``) is one window of raw samples, filtered on its own:
:func:`reference_preprocess` is the Python pipeline applied to exactly that item, the
reference the export checks the graph against. Only :func:`raw_graph` loads torch (through
:func:`atml.onnx.convert.compact`); evaluate reads :func:`raw_spec`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from atml.data import DataSpec
from atml.data.preprocess import normalize
from atml.data.transforms import bandpass_sos, resample_ratio, transform_segments, window_plan
from atml.errors import DataError, ExportError
from atml.onnx.sidecar import INPUT_NAME, OUTPUT_NAME, PROBABILITIES_NAME
from atml.onnx.signal_nodes import (
    FLAT_ABSOLUTE,
    FLAT_RELATIVE,
    IIR_BLOCK,
    PREFIX,
    Nodes,
    bandpass_nodes,
    resample_nodes,
    zscore_nodes,
)

__all__ = ["RawPlan", "raw_plan", "raw_spec", "reference_preprocess",
           "raw_graph"]



@dataclass(frozen=True)
class RawPlan:
    """What the raw graph does to one item, derived from the trial's DataSpec and the source."""

    spec: DataSpec
    fs_in: int  # source rate of the graph's input
    n_leads_in: int
    samples_in: int
    lead_names_in: tuple[str, ...]  # () when the format names no leads (txt, npz, synthetic)
    lead_index: tuple[int, ...] | None  # source rows the network takes, in order; None: all
    up: int  # resampling factors (1, 1: none)
    down: int
    fs_net: int
    samples_resampled: int
    samples_net: int  # after the window cut: the network's input length

    @property
    def n_leads_net(self) -> int:
        return self.n_leads_in if self.lead_index is None else len(self.lead_index)

    @property
    def lead_names_net(self) -> tuple[str, ...]:
        if not self.lead_names_in or self.lead_index is None:
            return self.lead_names_in
        return tuple(self.lead_names_in[i] for i in self.lead_index)

    def edge(self) -> int:
        """sosfiltfilt's padding at the network rate (0 without a band-pass)."""
        if self.spec.bandpass is None:
            return 0
        sos = bandpass_sos(self.fs_net, self.spec.bandpass)
        ntaps = 2 * len(sos) + 1 - min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
        return 3 * ntaps

    def steps(self) -> dict[str, Any]:
        """The graph's preprocessing steps as the sidecar records them."""
        sel = None if self.lead_index is None else {"from": list(self.lead_names_in) or self.n_leads_in,
                                                     "rows": list(self.lead_index)}
        rs = None
        if (self.up, self.down) != (1, 1):
            rs = {"from_hz": self.fs_in, "to_hz": self.fs_net, "up": self.up, "down": self.down,
                  "fir_taps": 2 * 10 * max(self.up, self.down) + 1, "as": "zero-stuffing + strided Conv"}
        bp = None
        if self.spec.bandpass is not None:
            n_ext = self.samples_resampled + 2 * self.edge()
            bp = {"band_hz": list(self.spec.bandpass), "edge": self.edge(), "extended_samples": n_ext,
                  "block": IIR_BLOCK, "as": "odd extension + the IIR forward and backward, in blocks of "
                                         f"{IIR_BLOCK} samples (FIR within a block, state across blocks)"}
        return {"leads": sel, "resample": rs, "bandpass": bp,
                "window": None if self.samples_net == self.samples_resampled else [0, self.samples_net],
                "normalize": self.spec.normalize, "flat_lead_floor": {"absolute": FLAT_ABSOLUTE,
                                                                       "relative_to_raw_rms": FLAT_RELATIVE}}


def raw_spec(spec: DataSpec, lead_names: tuple[str, ...] | list[str] | None = None) -> DataSpec:
    """How to read the raw items of ``spec``'s data: the same items (and windows, in seconds),
    at the source rate, unfiltered and not normalised; ``lead_names`` picks source leads by
    name (None: every lead in stored order)."""
    return dataclasses.replace(spec, target_fs=None, bandpass=None, normalize="none",
                               leads=tuple(lead_names) if lead_names else None)


def raw_plan(spec: DataSpec, fs_in: int, n_leads_in: int, samples_in: int,
             lead_names_in: tuple[str, ...] = ()) -> RawPlan:
    """The raw graph's plan for items of ``[n_leads_in, samples_in]`` at ``fs_in`` Hz.

    ExportError when the preprocessing cannot be one fixed graph for such items.
    """
    lead_index: tuple[int, ...] | None = None
    if spec.leads is not None:
        if not lead_names_in:
            raise ExportError(f"data.leads {list(spec.leads)} names leads, but the source items have no lead names")
        index = {n.strip().lower(): i for i, n in enumerate(lead_names_in)}
        missing = [n for n in spec.leads if n.strip().lower() not in index]
        if missing:
            raise ExportError(f"data.leads: source leads {list(lead_names_in)} have no {missing}")
        lead_index = tuple(index[n.strip().lower()] for n in spec.leads)
        if lead_index == tuple(range(n_leads_in)):
            lead_index = None
    try:
        up, down = (1, 1) if spec.target_fs in (None, fs_in) else resample_ratio(fs_in, int(spec.target_fs))
    except DataError as e:
        raise ExportError(str(e)) from None
    fs_net = int(spec.target_fs or fs_in)
    n_res = samples_in if (up, down) == (1, 1) else -(-samples_in * up // down)
    n_net = n_res
    if spec.window is not None:
        plan = window_plan(n_res, fs_net, spec.window, spec.stride, spec.pad_short)
        if len(plan.starts) == 0 or plan.pad:
            raise ExportError(f"a raw item of {samples_in} samples at {fs_in} Hz is {n_res} samples at {fs_net} Hz, "
                              f"shorter than one data.window={spec.window} s window ({plan.length} samples)")
        n_net = plan.length
    out = RawPlan(spec=spec, fs_in=int(fs_in), n_leads_in=int(n_leads_in), samples_in=int(samples_in),
                  lead_names_in=tuple(lead_names_in), lead_index=lead_index, up=up, down=down, fs_net=fs_net,
                  samples_resampled=n_res, samples_net=n_net)
    try:
        edge = out.edge()
    except DataError as e:
        raise ExportError(str(e)) from None
    if edge and n_res <= edge:
        raise ExportError(f"the band-pass pads {edge} samples at each end; items of {n_res} samples are too short")
    return out


def reference_preprocess(x_raw: np.ndarray, plan: RawPlan) -> np.ndarray:
    """What :mod:`atml.data` does to raw items ``(N, leads, samples)``: the network's input
    float32 ``(N, leads, samples)``, the reference the raw graph is checked against."""
    x = np.array(x_raw, dtype=np.float32)  # a copy: normalize works in place
    if plan.lead_index is not None:
        x = np.ascontiguousarray(x[:, list(plan.lead_index)])
    x, k, _ = transform_segments(x, plan.fs_in, plan.spec, "raw items")
    if k != 1:
        raise ExportError(f"a raw item became {k} windows; the raw graph takes one window per item")
    return normalize(np.array(x, dtype=np.float32), plan.spec.normalize)


def _preprocessing(g: Nodes, plan: RawPlan, out: str) -> None:
    """Nodes from the graph input ``ecg`` (raw) to ``out`` (the network's input)."""
    x = INPUT_NAME
    if plan.lead_index is not None:
        x = g.op("Gather", x, g.ints(*plan.lead_index), axis=1)
    raw = x
    c, n = plan.n_leads_net, plan.samples_in
    steps = (plan.up, plan.down) != (1, 1) or plan.spec.bandpass is not None or plan.samples_net != n
    if steps:
        x = g.op("Reshape", x, g.ints(-1, 1, n))  # one signal per row: the kernels stay single-channel
        if (plan.up, plan.down) != (1, 1):
            x = resample_nodes(g, x, n, plan.up, plan.down)
            n = plan.samples_resampled
        if plan.spec.bandpass is not None:
            x = bandpass_nodes(g, x, n, plan.fs_net, plan.spec.bandpass, plan.edge())
        if plan.samples_net != n:
            x = g.slice(x, 0, plan.samples_net)
        x = g.op("Reshape", x, g.ints(-1, c, plan.samples_net))
    if plan.spec.normalize == "zscore":
        x = zscore_nodes(g, x, raw)
    g.op("Identity", x, out=out)


def raw_graph(net_blob: bytes, plan: RawPlan, task: str) -> bytes:
    """The network ONNX ``net_blob`` (float or int8) behind the plan's preprocessing nodes.

    Input ``ecg`` float32 ``[batch, source leads, source samples]``; outputs ``logits`` and
    ``probabilities`` (softmax; sigmoid for ``task`` multilabel), both ``[batch, classes]``.
    The preprocessing stays float32 in an int8 graph. Tensor names are shortened
    (:func:`atml.onnx.convert.compact` does the same to int8 models).
    """
    import onnx
    from onnx import TensorProto, helper

    from atml.onnx.convert import compact

    model = onnx.load_from_string(net_blob)
    graph = model.graph
    if len(graph.input) != 1 or [o.name for o in graph.output] != [OUTPUT_NAME]:
        raise ExportError(f"the network graph must have one input and the output {OUTPUT_NAME!r}")
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim][1:]
    if dims != [plan.n_leads_net, plan.samples_net]:
        raise ExportError(f"the network takes [batch, {', '.join(map(str, dims))}] but the preprocessing gives "
                          f"[batch, {plan.n_leads_net}, {plan.samples_net}]")
    features = f"{PREFIX}features"
    old = graph.input[0].name
    for node in graph.node:
        node.input[:] = [features if i == old else i for i in node.input]
    g = Nodes()
    _preprocessing(g, plan, features)
    head = helper.make_node("Sigmoid" if task == "multilabel" else "Softmax", [OUTPUT_NAME], [PROBABILITIES_NAME],
                            name=f"{PREFIX}head", **({} if task == "multilabel" else {"axis": 1}))
    nodes = [*g.nodes, *graph.node, head]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(g.inits)
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT,
                                                     ["batch", plan.n_leads_in, plan.samples_in]))
    out_dims = [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    graph.output.append(helper.make_tensor_value_info(PROBABILITIES_NAME, TensorProto.FLOAT, out_dims))
    compact(model)
    return model.SerializeToString()


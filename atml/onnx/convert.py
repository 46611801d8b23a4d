"""torch model -> ONNX bytes: export, size, checker, parity with torch, int8 quantisation.

The exporter is torch's TorchScript-based one (``dynamo=False``). It is deprecated, but
it takes 50-300 ms for our models where the torch.export path takes 2-7 s (and could not
down-convert some of them to opset 17), which matters because the objective sizes every
trial with :func:`onnx_size_kb`; its constant folding also folds BatchNorm into the convs.
onnx and onnxruntime are imported only where used, so sizing a trial loads neither.
This module imports no :mod:`atml.trial` (the trial imports it).
"""

from __future__ import annotations

import copy
import io
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atml.errors import ExportError
from atml.onnx.runtime import run_onnx
from atml.onnx.sidecar import INPUT_NAME, OPSET, OUTPUT_NAME

__all__ = [
    "OPSET", "INPUT_NAME", "OUTPUT_NAME", "PARITY_TOLERANCE", "INT8_SCHEME",
    "export_onnx", "onnx_size_kb", "check_onnx", "parity", "quantize_int8", "compact", "compacted", "int8_path",
]

PARITY_TOLERANCE = 1e-4  # max |logit difference| allowed between onnxruntime and torch

# What quantize_int8 does, as the int8 sidecar records it.
INT8_SCHEME: dict[str, Any] = {
    "method": "onnxruntime static quantisation, QDQ format", "weights": "int8 per channel",
    "activations": "uint8 per tensor", "calibration": "MinMax",
}


def export_onnx(model: torch.nn.Module, n_leads: int, n_samples: int) -> bytes:
    """Serialise ``model`` to ONNX (opset 17) in memory.

    Input ``ecg`` float32 ``[batch, n_leads, n_samples]``, output ``logits``
    ``[batch, n_classes]``; the batch dimension is dynamic. The model is exported in
    eval mode and left in the mode it was in.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dummy = torch.zeros(1, n_leads, n_samples, device=device)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and tracer warnings; nothing actionable
        try:
            torch.onnx.export(
                model, (dummy,), buf, opset_version=OPSET, dynamo=False, do_constant_folding=True,
                training=torch.onnx.TrainingMode.EVAL, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
        except Exception as e:  # torch raises many types here; the user needs one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(
                f"ONNX export of {type(model).__name__} with input [batch, {n_leads}, {n_samples}] failed: {first}"
            ) from None
    return buf.getvalue()


def onnx_size_kb(model: torch.nn.Module, n_leads: int, n_samples: int) -> float:
    """Size in KB (1024 bytes) of ``model`` exported as by ``atml export`` (float32), once trained.

    A freshly initialised model exports smaller than the same model trained: its BatchNorm
    layers fold into identical bias tensors (all zeros) that the exporter stores once. The
    size is measured on a copy whose floating-point weights and statistics all differ, as
    trained ones do, so a trial's figure (known before training) is the exported file's.
    """
    probe = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in (*probe.parameters(), *probe.buffers()):
            if t.is_floating_point():
                # Positive and distinct: a perturbed running variance stays a variance.
                t.add_(1e-3 * torch.rand(t.shape, generator=gen).to(t.device))
    return len(export_onnx(probe, n_leads, n_samples)) / 1024.0


def check_onnx(blob: bytes, what: str = "exported model") -> None:
    """``onnx.checker.check_model`` with full checks; ExportError on failure."""
    import onnx

    try:
        onnx.checker.check_model(onnx.load_from_string(blob), full_check=True)
    except Exception as e:
        raise ExportError(f"{what} fails onnx.checker: {str(e).strip().splitlines()[0]}") from None


def parity(model: torch.nn.Module, session: Any, x: np.ndarray) -> float:
    """Max absolute difference between torch and onnxruntime logits on ``x``."""
    model.eval()
    with torch.no_grad():
        expected = torch.cat([model(torch.from_numpy(np.ascontiguousarray(x[i:i + 256])))
                              for i in range(0, len(x), 256)]).numpy()
    got = run_onnx(session, x)
    return float(np.abs(got - expected).max())


def quantize_int8(blob: bytes, calibration: np.ndarray) -> bytes:
    """Static QDQ int8 quantisation of a float ONNX model, calibrated on ``calibration``.

    Static rather than dynamic: dynamic quantisation re-derives activation scales on
    every call and ran ~3x slower than float on our CPU, static ~1.4x. QDQ rather than
    QOperator: onnxruntime fuses QDQ into QLinearConv on CPU at load time (same speed)
    and other providers (TensorRT, QNN, XNNPACK) accept only QDQ; QOperator files are
    ~20% smaller. Weights int8 per output channel (conv filters differ in range by
    orders of magnitude); activations uint8 per tensor, MinMax-calibrated on unlabelled
    segments (U8S8 is onnxruntime's fast x86 path: 0.09 vs 0.13 ms/segment for S8S8
    on AVX2, same agreement with float). Tensor names are shortened afterwards: QDQ adds
    a scale and a zero point per tensor named after it, and for models of a few thousand
    parameters those names would outweigh the int8 weights (-50% file size).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(np.ascontiguousarray(calibration[i:i + 32], dtype=np.float32)
                            for i in range(0, len(calibration), 32))

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {INPUT_NAME: x}

    if len(calibration) == 0:
        raise ExportError("int8 quantisation needs calibration segments; the training split is empty")
    with tempfile.TemporaryDirectory(prefix="atml-int8-") as tmp:
        src, pre, dst = (Path(tmp) / n for n in ("float.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(blob)
        try:
            quant_pre_process(str(src), str(pre))  # shape inference + fusions, as ORT advises
            quantize_static(str(pre), str(dst), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                            calibrate_method=CalibrationMethod.MinMax)
            model = onnx.load(str(dst))
        except Exception as e:
            raise ExportError(f"int8 quantisation failed: {str(e).strip().splitlines()[0][:200]}") from None
    compact(model)
    return model.SerializeToString()


def compact(model: Any) -> None:
    """Short tensor/node names, no value_info or doc strings (graph inputs/outputs kept)."""
    import onnx

    g = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        return  # subgraphs would need renaming too; our models have none
    keep = {v.name for v in (*g.input, *g.output)}
    names: dict[str, str] = {}

    def short(n: str) -> str:
        if not n or n in keep:
            return n
        return names.setdefault(n, f"t{len(names)}")

    for t in g.initializer:
        t.name = short(t.name)
    for i, node in enumerate(g.node):
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
        node.name = f"n{i}"
        node.doc_string = ""
    del g.value_info[:]
    model.doc_string = ""


def compacted(blob: bytes) -> bytes:
    """The ONNX bytes ``blob`` after :func:`compact`."""
    import onnx

    model = onnx.load_from_string(blob)
    compact(model)
    return model.SerializeToString()


def int8_path(model_path: str | Path) -> Path:
    """``best.onnx`` -> ``best.int8.onnx``."""
    p = Path(model_path)
    return p.with_name(p.name[:-5] + ".int8.onnx") if p.name.endswith(".onnx") else Path(f"{p}.int8.onnx")

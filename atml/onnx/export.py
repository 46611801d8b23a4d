"""A study's trial -> verified ONNX file (+ int8 variant) with a JSON sidecar; model size.

The exporter is torch's TorchScript-based one (``dynamo=False``). It is deprecated, but
it takes 50-300 ms for our models where the torch.export path takes 2-7 s (and could not
down-convert some of them to opset 17), which matters because the objective sizes every
trial with :func:`onnx_size_kb`; its constant folding also folds BatchNorm into the convs.

Nothing is written until the float model passed ``onnx.checker`` and the parity check
against torch on real validation segments (and the int8 model was built and scored):
all files then go to temporary names and are renamed into place, so a failed export
leaves no half-written ``.onnx`` behind.

Layering: :mod:`atml.trial` imports this module (for ``onnx_size_kb``), so the
objective's helpers are imported inside :func:`export_trial`, and the study lookup uses
:mod:`atml.storage` / :mod:`atml.config` directly rather than the higher :mod:`atml.search.worker`.
onnx and onnxruntime are imported only where used, so sizing a trial loads neither.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atml import __version__
from atml.config import space_from_dict
from atml.errors import DataError, ExportError, StorageError
from atml.metrics import METRIC_NAMES
from atml.onnx.evaluate import json_ready, onnx_metrics, ort_session, run_onnx, sidecar_path
from atml.storage import SPACE_ATTR, default_artifacts, open_storage, study_names

__all__ = [
    "OPSET", "INPUT_NAME", "OUTPUT_NAME", "PARITY_TOLERANCE", "TrialRef", "ExportResult",
    "export_onnx", "onnx_size_kb", "check_onnx", "quantize_int8", "int8_path", "file_info",
    "write_files", "locate_trial", "export_trial", "sidecar_path",
]

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "ecg"
OUTPUT_NAME = "logits"
PARITY_TOLERANCE = 1e-4
SIDECAR_FORMAT = "atml-onnx/1"


# --------------------------------------------------------------------------- ONNX bytes

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
    """Size in KB (1024 bytes) of ``model`` exported as by ``atml export`` (float32)."""
    return len(export_onnx(model, n_leads, n_samples)) / 1024.0


def check_onnx(blob: bytes, what: str = "exported model") -> None:
    """``onnx.checker.check_model`` with full checks; ExportError on failure."""
    import onnx

    try:
        onnx.checker.check_model(onnx.load_from_string(blob), full_check=True)
    except Exception as e:
        raise ExportError(f"{what} fails onnx.checker: {str(e).strip().splitlines()[0]}") from None


def _parity(model: torch.nn.Module, session: Any, x: np.ndarray) -> float:
    """Max absolute difference between torch and onnxruntime logits on ``x``."""
    model.eval()
    with torch.no_grad():
        expected = torch.cat([model(torch.from_numpy(np.ascontiguousarray(x[i:i + 256])))
                              for i in range(0, len(x), 256)]).numpy()
    got = run_onnx(session, x)
    return float(np.abs(got - expected).max())


# --------------------------------------------------------------------------- int8

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
    _compact(model)
    return model.SerializeToString()


def _compact(model: Any) -> None:
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


# --------------------------------------------------------------------------- files

def int8_path(model_path: str | Path) -> Path:
    """``best.onnx`` -> ``best.int8.onnx``."""
    p = Path(model_path)
    return p.with_name(p.name[:-5] + ".int8.onnx") if p.name.endswith(".onnx") else Path(f"{p}.int8.onnx")


def file_info(blob: bytes) -> dict[str, Any]:
    """Size in bytes and KB and sha256 of a file's bytes."""
    return {"size_bytes": len(blob), "size_kb": round(len(blob) / 1024, 2),
            "sha256": hashlib.sha256(blob).hexdigest()}


def write_files(files: dict[Path, bytes]) -> None:
    """Write files as one unit: all to temporary names, then rename each into place.

    Renames follow the dict's order (put sidecars before models, so a model never appears
    without its sidecar); if one fails, the files already renamed by this call are removed
    again. Temporary names are opened with ``open(..., "xb")`` rather than mkstemp so the
    results get the usual umask permissions instead of 0600.
    """
    temps: list[tuple[Path, Path]] = []
    done: list[Path] = []
    path = next(iter(files), Path("."))
    try:
        for path, data in files.items():
            tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
            with open(tmp, "xb") as fh:
                temps.append((tmp, path))
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        for tmp, path in temps:
            os.replace(tmp, path)
            done.append(path)
    except OSError as e:
        for p in done:
            p.unlink(missing_ok=True)
        raise ExportError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- study -> trial

@dataclass(frozen=True)
class TrialRef:
    """A completed trial and where its checkpoint is on this machine."""

    study: str
    number: int
    value: float | None
    params: dict[str, Any]
    checkpoint: Path
    data: dict[str, Any]  # the study's validated ``data`` section
    artifacts: Path
    settings: Any = None  # the study's StudySettings (seed, metric, direction): refits train as the trial did
    user_attrs: dict[str, Any] = field(default_factory=dict)


def locate_trial(storage_url: str, study: str, number: int | None = None,
                 artifacts: str | Path | None = None) -> TrialRef:
    """The trial ``number`` (default: the best) of ``study`` and its checkpoint path."""
    import optuna
    from optuna.trial import TrialState

    storage = open_storage(storage_url)
    names = study_names(storage)
    if study not in names:
        raise StorageError(f"study {study!r} not found in {storage_url} (studies: {', '.join(names) or 'none'})")
    attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(study))
    if SPACE_ATTR not in attrs:
        raise StorageError(f"study {study!r} was not created by atml search (no stored search space)")
    stored = json.loads(attrs[SPACE_ATTR])
    space = space_from_dict(stored["raw"], source=stored["source"], check_paths=False)
    st = optuna.load_study(study_name=study, storage=storage)
    trials = st.get_trials(deepcopy=False)
    if number is None:
        from atml.records import best_trial

        t = best_trial(st, trials)
        if t is None:
            raise ExportError(f"study {study!r} has no completed trial to export ({len(trials)} trials)")
    else:
        found = [t for t in trials if t.number == number]
        if not found:
            span = f"0..{len(trials) - 1}" if trials else "none"
            raise ExportError(f"study {study!r} has no trial #{number} (trials: {span})")
        t = found[0]
    ck = t.user_attrs.get("checkpoint")
    if t.state != TrialState.COMPLETE or not ck:
        reason = t.user_attrs.get("reason")
        raise ExportError(f"trial #{t.number} of study {study!r} is {t.state.name} and has no checkpoint"
                          + (f" ({reason})" if reason else "") + "; only completed trials can be exported")
    if artifacts is None:
        artifacts = default_artifacts(storage_url)
    path = Path(artifacts) / study / ck
    if not path.is_file():
        raise ExportError(f"checkpoint of trial #{t.number} not found on this machine: {path} "
                          "(pass --artifacts DIR, the folder holding <study>/trials/)")
    return TrialRef(study=study, number=t.number, value=t.values[0] if t.values else None, params=dict(t.params),
                    checkpoint=path, data=space.data, artifacts=Path(artifacts), settings=space.study,
                    user_attrs=dict(t.user_attrs))


# --------------------------------------------------------------------------- export

@dataclass(frozen=True)
class ExportResult:
    """What ``atml export`` wrote: paths and the sidecar(s) as written."""

    path: Path
    sidecar: dict[str, Any]
    int8_path: Path | None = None
    int8_sidecar: dict[str, Any] | None = None
    seconds: float = 0.0


def _spread(n: int, k: int) -> np.ndarray:
    """Up to ``k`` evenly spaced positions in range(n): every subject of a split is covered."""
    return np.unique(np.linspace(0, n - 1, num=min(n, k)).round().astype(np.int64)) if n else np.empty(0, np.int64)


def export_trial(storage: str, study: str, out: str | Path, *, trial: int | None = None, int8: bool = False,
                 artifacts: str | Path | None = None, data_path: str | None = None, refit: bool = False,
                 ensemble: int = 1, parity_segments: int = 256, calibration_segments: int = 256) -> ExportResult:
    """Export a trial's checkpoint (default: the best trial) to a verified ONNX file.

    ``refit`` retrains the trial's configuration on training + validation subjects and
    ``ensemble`` > 1 exports K seeds' members averaged as one model (:mod:`atml.onnx.refit`).

    Checks ``onnx.checker`` and parity (max |logit difference| < 1e-4) against torch on up
    to ``parity_segments`` validation segments of the study's own subject split, scores the
    ONNX model on the whole validation split, optionally builds ``<out>.int8.onnx``, and
    writes each model with a ``.json`` sidecar. Raises AtmlError subclasses on bad input.
    """
    from atml.data import load_dataset
    from atml.onnx.refit import final_model
    from atml.trial import data_spec, load_checkpoint  # here: objective imports this module

    t0 = time.perf_counter()
    if ensemble < 1:
        raise ExportError(f"--ensemble must be >= 1 (got {ensemble})")
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"--out {out} is a folder; give a file name such as {out / 'best.onnx'}")
    if not out.parent.is_dir():
        raise ExportError(f"--out {out}: folder {out.parent} does not exist")
    ref = locate_trial(storage, study, trial, artifacts)
    try:
        model, ck = load_checkpoint(ref.checkpoint)
    except Exception as e:
        raise ExportError(f"checkpoint {ref.checkpoint} of trial #{ref.number} is unreadable: "
                          f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}") from None
    leads, samples = int(ck["in_channels"]), int(ck["n_samples"])
    # The trial's own searched preprocessing settings, if the space searched any.
    searched = (ck.get("params") or {}).get("data") or {}
    spec = data_spec({**ref.data, **searched}, data_path)
    if spec.path is not None and not Path(spec.path).exists():
        raise DataError(f"data path {spec.path} of study {study!r} does not exist on this machine (pass --data)")
    ds = load_dataset(spec, ref.artifacts / "cache")
    if (ds.n_leads, ds.n_samples) != (leads, samples):
        raise ExportError(f"model of trial #{ref.number} takes input [batch, {leads}, {samples}] "
                          f"(leads, samples) but data {ds.source} has segments [{ds.n_leads}, {ds.n_samples}]")
    split = ds.split(spec)
    val = np.sort(split.val)
    if len(val) == 0:
        raise DataError(f"study {study!r}: the validation split of {ds.source} is empty")
    x_val = np.ascontiguousarray(ds.x[val], dtype=np.float32)
    task = str(ck.get("task", "binary"))
    y_val = np.asarray(ds.y[val], dtype=np.float32 if task == "multilabel" else np.int64)

    final = final_model(model, ck, ref, ds.x, ds.y, split.train, split.val, refit=refit, members=ensemble)
    model = final.model
    blob = export_onnx(model, leads, samples)
    check_onnx(blob)
    session = ort_session(blob, what=f"exported model of trial #{ref.number}")
    px = x_val[_spread(len(x_val), parity_segments)]
    diff = _parity(model, session, px)
    if not diff < PARITY_TOLERANCE:
        raise ExportError(f"parity check failed: onnxruntime and torch logits differ by up to {diff:.3g} "
                          f"on {len(px)} validation segments (tolerance {PARITY_TOLERANCE:g})")
    m_float, p_float = onnx_metrics(session, x_val, y_val, task, tuple(ds.classes))
    log.info("trial #%d exported: parity %.3g on %d segments", ref.number, diff, len(px))

    qblob: bytes | None = None
    m_int8: dict[str, float] | None = None
    quant: dict[str, Any] | None = None
    if int8:
        tr = np.sort(split.train)
        cal = np.ascontiguousarray(ds.x[tr[_spread(len(tr), calibration_segments)]], dtype=np.float32)
        qblob = quantize_int8(blob, cal)
        check_onnx(qblob, "int8 model")
        m_int8, p_int8 = onnx_metrics(ort_session(qblob, what="int8 model"), x_val, y_val, task,
                                      tuple(ds.classes))
        quant = {
            "method": "onnxruntime static quantisation, QDQ format", "weights": "int8 per channel",
            "activations": "uint8 per tensor", "calibration": "MinMax",
            "calibration_segments": len(cal), "calibration_split": "train",
            "agreement_with_float": float(np.mean((p_int8 >= 0.5) == (p_float >= 0.5))),
            "max_prob_diff": float(np.abs(p_int8 - p_float).max()),
        }

    def metrics(m: dict[str, float] | None) -> dict[str, Any] | None:
        return None if m is None else {k: v for k, v in m.items()
                                       if k in (*METRIC_NAMES, "tn", "fp", "fn", "tp") or k.startswith("f1_")
                                       or k == "physionet2017"}

    base = {
        "format": SIDECAR_FORMAT,
        "input": {"name": INPUT_NAME, "shape": ["batch", leads, samples], "leads": leads, "samples": samples,
                  "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", int(ck["n_classes"])],
                   "meaning": "raw logits; " + ("sigmoid gives per-class probabilities" if task == "multilabel"
                                                 else "softmax gives class probabilities")},
        "task": task,
        "fs": int(spec.fs),
        "preprocessing": {**spec.signal_settings(),
                          "per": "segment and lead" if spec.normalize == "zscore" else None},
        "classes": list(ds.classes),
        "positive_class": ds.classes[1] if task == "binary" else None,
        "positive_labels": list(spec.positive),
        "drop_labels": list(spec.drop_labels),
        "label_map": spec.label_map,
        "metrics": {"float": metrics(m_float), "int8": metrics(m_int8)},
        "validation": {"segments": len(val), "subjects": list(split.val_subjects), "source": ds.source,
                       # a refit trains on these subjects: its validation figures are then in-sample
                       "held_out": final.validation_held_out},
        "fit": final.info,
        # held out by the search (never used for selection): `atml evaluate --subjects test`
        "test": {"segments": len(split.test), "subjects": list(split.test_subjects)},
        "parity": {"max_abs_diff": diff, "segments": len(px), "tolerance": PARITY_TOLERANCE},
        "study": study,
        "trial": {"number": ref.number, "value": ref.value, "params": ref.params},
        "family": ck["family"],
        "hparams": ck["hparams"],
        "n_params": sum(int(v.numel()) for v in model.parameters()),
        "opset": OPSET,
        "atml_version": __version__,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    side = json_ready({**base, "file": out.name, "precision": "float32", "quantization": None, **file_info(blob)})
    sidecars = {sidecar_path(out): side}
    models = {out: blob}
    q_path = q_side = None
    if qblob is not None:
        q_path = int8_path(out)
        q_side = json_ready({**base, "file": q_path.name, "precision": "int8", "quantization": quant,
                             "float_file": out.name, **file_info(qblob)})
        sidecars[sidecar_path(q_path)] = q_side
        models[q_path] = qblob
    # Sidecars first: a model file never appears without the sidecar that describes it.
    write_files({**{p: json.dumps(d, indent=2, allow_nan=False).encode() + b"\n" for p, d in sidecars.items()},
                 **models})
    return ExportResult(path=out, sidecar=side, int8_path=q_path, int8_sidecar=q_side,
                        seconds=time.perf_counter() - t0)

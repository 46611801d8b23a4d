"""A study's trial -> verified ONNX file (+ int8 variant) with its JSON sidecar.

By default the file is the raw graph (:mod:`atml.onnx.preprocess_graph`): raw items in,
the trial's preprocessing, the network, logits and probabilities out; ``preprocessing=False``
(``--no-preprocessing``) ships the network alone, fed preprocessed input.

Nothing is written until the network passed ``onnx.checker`` and the parity check against
torch on real validation segments, the raw graph its parity check against the Python
preprocessing + torch (:mod:`atml.onnx.raw_export`), and the int8 model was built and
scored: all files then go to temporary names and are renamed into place, so a failed
export leaves no half-written ``.onnx`` behind.

The study lookup uses :mod:`atml.storage`, :mod:`atml.records` and :mod:`atml.config`
directly rather than the higher :mod:`atml.search.worker`; the checkpoint format and the
trial's data come from :mod:`atml.trial`, the conversion from :mod:`atml.onnx.convert`,
the sidecar schema from :mod:`atml.onnx.sidecar`.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from atml import records
from atml.config import space_from_stored
from atml.data import DataSpec, load_dataset
from atml.errors import DataError, ExportError, StorageError
from atml.metrics import subject_sort_key
from atml.onnx.convert import (
    INT8_SCHEME,
    PARITY_TOLERANCE,
    check_onnx,
    compacted,
    export_onnx,
    int8_path,
    parity,
    quantize_int8,
)
from atml.onnx.evaluate import onnx_metrics
from atml.onnx.preprocess_graph import raw_graph
from atml.onnx.raw_export import RawItems, load_raw_items, spread, training_match, verified_raw
from atml.onnx.refit import FinalFit, final_model
from atml.onnx.runtime import ort_session
from atml.onnx.sidecar import ExportFacts, build_sidecars, encode_sidecar, quantization_entry, sidecar_path
from atml.storage import default_artifacts, open_storage, study_names
from atml.trial import attributes, data_spec, load_checkpoint

__all__ = ["TrialRef", "ExportResult", "locate_trial", "write_files", "export_trial"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- files

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


def _pick(st: optuna.Study, study: str, number: int | None) -> FrozenTrial:
    """Trial ``number`` of the study, or its best; ExportError when there is none."""
    trials = st.get_trials(deepcopy=False)
    if number is None:
        t = records.best_trial(st, trials)
        if t is None:
            raise ExportError(f"study {study!r} has no completed trial to export ({len(trials)} trials)")
        return t
    found = [t for t in trials if t.number == number]
    if not found:
        span = f"0..{len(trials) - 1}" if trials else "none"
        raise ExportError(f"study {study!r} has no trial #{number} (trials: {span})")
    return found[0]


def _checkpoint(t: FrozenTrial, study: str, artifacts: Path) -> Path:
    """Where the checkpoint of a completed trial is on this machine."""
    ck = t.user_attrs.get(attributes.CHECKPOINT)
    if t.state != TrialState.COMPLETE or not ck:
        reason = records.reason(t)
        raise ExportError(f"trial #{t.number} of study {study!r} is {t.state.name} and has no checkpoint"
                          + (f" ({reason})" if reason else "") + "; only completed trials can be exported")
    path = artifacts / study / ck
    if not path.is_file():
        raise ExportError(f"checkpoint of trial #{t.number} not found on this machine: {path} "
                          "(pass --artifacts DIR, the folder holding <study>/trials/)")
    return path


def locate_trial(storage_url: str, study: str, number: int | None = None,
                 artifacts: str | Path | None = None) -> TrialRef:
    """The trial ``number`` (default: the best) of ``study`` and its checkpoint path."""
    storage = open_storage(storage_url)
    names = study_names(storage)
    if study not in names:
        raise StorageError(f"study {study!r} not found in {storage_url} (studies: {', '.join(names) or 'none'})")
    stored = records.stored_space(storage.get_study_user_attrs(storage.get_study_id_from_name(study)))
    if stored is None:
        raise StorageError(f"study {study!r} was not created by atml search (no stored search space)")
    space = space_from_stored(stored)
    t = _pick(optuna.load_study(study_name=study, storage=storage), study, number)
    home = Path(default_artifacts(storage_url) if artifacts is None else artifacts)
    path = _checkpoint(t, study, home)
    return TrialRef(study=study, number=t.number, value=t.values[0] if t.values else None, params=dict(t.params),
                    checkpoint=path, data=space.data, artifacts=home, settings=space.study,
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


@dataclass(frozen=True)
class _Trial:
    """A trial's checkpoint and its data, checked to fit each other."""

    model: nn.Module
    ck: dict[str, Any]
    spec: DataSpec
    ds: Any  # atml.data.Dataset
    split: Any  # atml.data.Split
    val: np.ndarray  # sorted validation indices
    x_val: np.ndarray
    y_val: np.ndarray

    @property
    def task(self) -> str:
        return str(self.ck.get("task", "binary"))

    @property
    def shape(self) -> tuple[int, int]:
        """(leads, samples) the model takes."""
        return int(self.ck["in_channels"]), int(self.ck["n_samples"])


def _check_out(out: Path, ensemble: int) -> None:
    if ensemble < 1:
        raise ExportError(f"--ensemble must be >= 1 (got {ensemble})")
    if out.is_dir():
        raise ExportError(f"--out {out} is a folder; give a file name such as {out / 'best.onnx'}")
    if not out.parent.is_dir():
        raise ExportError(f"--out {out}: folder {out.parent} does not exist")


def _load(ref: TrialRef, data_path: str | None) -> _Trial:
    """The trial's checkpoint and the study's data (the trial's own preprocessing), split as in the search."""
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
        raise DataError(f"data path {spec.path} of study {ref.study!r} does not exist on this machine (pass --data)")
    ds = load_dataset(spec, ref.artifacts / "cache")
    if (ds.n_leads, ds.n_samples) != (leads, samples):
        raise ExportError(f"model of trial #{ref.number} takes input [batch, {leads}, {samples}] "
                          f"(leads, samples) but data {ds.source} has segments [{ds.n_leads}, {ds.n_samples}]")
    split = ds.split(spec)
    val = np.sort(split.val)
    if len(val) == 0:
        raise DataError(f"study {ref.study!r}: the validation split of {ds.source} is empty")
    x_val = np.ascontiguousarray(ds.x[val], dtype=np.float32)
    task = str(ck.get("task", "binary"))
    y_val = np.asarray(ds.y[val], dtype=np.float32 if task == "multilabel" else np.int64)
    return _Trial(model, ck, spec, ds, split, val, x_val, y_val)


def _verified(model: nn.Module, tr: _Trial, number: int, parity_segments: int) -> tuple[bytes, Any, float, int]:
    """The model's ONNX bytes, checked by onnx.checker and for parity with torch on
    validation segments; returns (bytes, session, max |diff|, segments compared)."""
    blob = export_onnx(model, *tr.shape)
    check_onnx(blob)
    session = ort_session(blob, what=f"exported model of trial #{number}")
    px = tr.x_val[spread(len(tr.x_val), parity_segments)]
    diff = parity(model, session, px)
    if not diff < PARITY_TOLERANCE:
        raise ExportError(f"parity check failed: onnxruntime and torch logits differ by up to {diff:.3g} "
                          f"on {len(px)} validation segments (tolerance {PARITY_TOLERANCE:g})")
    return blob, session, diff, len(px)


def _int8(blob: bytes, tr: _Trial, calibration_segments: int, p_float: np.ndarray,
          items: RawItems | None) -> tuple[bytes, dict[str, float], dict[str, Any]]:
    """The int8 model (calibrated on training segments), its validation metrics and its
    sidecar's ``quantization`` entry. With raw ``items`` only the network is quantised (its
    input is the preprocessed signal it was calibrated on) and the preprocessing stays float."""
    train = np.sort(tr.split.train)
    cal = np.ascontiguousarray(tr.ds.x[train[spread(len(train), calibration_segments)]], dtype=np.float32)
    qblob = quantize_int8(blob, cal)
    x, y = tr.x_val, tr.y_val
    if items is not None:
        qblob = raw_graph(qblob, items.plan, tr.task)
        x, y = items.x(items.val), items.y(items.val, tr.task)
    check_onnx(qblob, "int8 model")
    m_int8, p_int8 = onnx_metrics(ort_session(qblob, what="int8 model"), x, y, tr.task, tuple(tr.ds.classes))
    scheme = INT8_SCHEME if items is None else {**INT8_SCHEME, "preprocessing": "float32, not quantised"}
    return qblob, m_int8, quantization_entry(scheme, len(cal), p_int8, p_float)


def _facts(ref: TrialRef, tr: _Trial, final: FinalFit, diff: float, parity_n: int,
           m_float: dict[str, float], m_int8: dict[str, float] | None, network_bytes: int,
           raw: dict[str, Any] | None) -> ExportFacts:
    leads, samples = tr.shape
    split, ck = tr.split, tr.ck
    return ExportFacts(
        study=ref.study, trial=ref.number, value=ref.value, params=ref.params, family=ck["family"],
        hparams=ck["hparams"], n_params=sum(int(v.numel()) for v in final.model.parameters()), task=tr.task,
        leads=leads, samples=samples, n_classes=int(ck["n_classes"]), spec=tr.spec, classes=tuple(tr.ds.classes),
        source=tr.ds.source, val_segments=len(tr.val), val_subjects=tuple(split.val_subjects),
        test_segments=len(split.test), test_subjects=tuple(split.test_subjects), fit=final.info,
        held_out=final.validation_held_out, parity_diff=diff, parity_segments=parity_n,
        parity_tolerance=PARITY_TOLERANCE, metrics_float=m_float, metrics_int8=m_int8, fs_net=int(tr.ds.fs),
        lead_names=tuple(tr.ds.leads), network_bytes=network_bytes, raw=raw, compression=_compression(ck),
    )


def _compression(ck: dict[str, Any]) -> dict[str, Any] | None:
    """What the trial did after training (``train.prune``, ``train.qat``), for the sidecar."""
    train = (ck.get("params") or {}).get("train") or {}
    prune, qat = train.get("prune"), int(train.get("qat") or 0)
    if not (prune and float(prune.get("amount", 0)) > 0) and not qat:
        return None
    return {"prune": prune or None, "qat_epochs": qat, "layers_resized": len(ck.get("shapes") or {})}


def _record_subjects(final: FinalFit, tr: _Trial, ref: TrialRef) -> None:
    """Which subjects the exported model saw, and (cross-validated trial) the honest estimate."""
    split = tr.split
    seen = set(split.train_subjects)
    if final.info.get("subjects") == "train+validation":
        seen |= set(split.val_subjects)
    folds = tr.ck.get("folds")
    if folds and final.info.get("mode") == "checkpoint":  # fold 0's model: all non-test subjects but its own fold
        seen = (set(split.train_subjects) | set(split.val_subjects)) - set(folds[0].get("held_subjects") or [])
        final.validation_held_out = not seen & set(split.val_subjects)
    final.info["subjects_seen"] = sorted(seen, key=subject_sort_key)
    if tr.ck.get("init"):  # warm-started: the source model's training data shaped these weights too
        final.info["warm_start"] = tr.ck["init"]
    if tr.ck.get("distill"):  # trained on a teacher's soft targets
        final.info["distilled_from"] = tr.ck["distill"]
    if folds:
        m = ref.user_attrs.get(attributes.METRICS) or {}
        final.info["cross_validated"] = {
            "note": "pooled out-of-fold figures of the trial: the honest estimate for new subjects",
            "folds": len(folds), "metrics": {k: v for k, v in m.items() if isinstance(v, int | float)},
        }


def _raw(final: FinalFit, tr: _Trial, ref: TrialRef, blob: bytes, parity_segments: int,
         p_net: np.ndarray) -> tuple[bytes, RawItems, dict[str, float], np.ndarray, dict[str, Any]]:
    """The raw graph around ``blob``, checked; its items, validation metrics and probabilities,
    and the sidecar's ``raw`` facts."""
    items = load_raw_items(tr.spec, ref.artifacts / "cache", tr.ds, tr.split, tr.shape)
    rblob, session, parity_entry = verified_raw(final.model, blob, items, tr.task, ref.number, parity_segments)
    m, p = onnx_metrics(session, items.x(items.val), items.y(items.val, tr.task), tr.task, tuple(tr.ds.classes))
    plan = items.plan
    # what the preprocessing adds: the raw graph against the network with names shortened alike
    steps = {**plan.steps(), "size_bytes": len(rblob) - len(compacted(blob))}
    facts = {"leads": plan.n_leads_in, "samples": plan.samples_in, "fs": plan.fs_in,
             "lead_names": list(plan.lead_names_in), "steps": steps, "parity": parity_entry,
             "training_match": training_match(items, p, p_net)}
    log.info("raw graph of trial #%d: probabilities within %.3g of Python + torch on %d items", ref.number,
             parity_entry["max_prob_diff"], parity_entry["segments"])
    return rblob, items, m, p, facts


def export_trial(storage: str, study: str, out: str | Path, *, trial: int | None = None, int8: bool = False,
                 artifacts: str | Path | None = None, data_path: str | None = None, refit: bool = False,
                 ensemble: int = 1, parity_segments: int = 256, calibration_segments: int = 256,
                 from_folds: bool = False, preprocessing: bool = True, device: str = "cpu") -> ExportResult:
    """Export a trial's checkpoint (default: the best trial) to a verified ONNX file.

    ``refit`` retrains the trial's configuration on training + validation subjects and
    ``ensemble`` > 1 exports K seeds' members averaged as one model (:mod:`atml.onnx.refit`).
    ``preprocessing`` (default) ships the raw graph: source items in, the trial's
    preprocessing inside, logits and probabilities out; False ships the network alone.
    ``device`` is where ``refit``/``ensemble`` members train; export and int8 run on the CPU.

    Checks ``onnx.checker`` and parity (max |logit difference| < 1e-4) against torch on up
    to ``parity_segments`` validation segments of the study's own subject split; the raw
    graph also against the Python preprocessing + torch (max |probability difference| <
    1e-4) on as many raw validation items. Scores the file on the whole validation split,
    optionally builds ``<out>.int8.onnx``, and writes each model with a ``.json`` sidecar.
    Raises AtmlError subclasses on bad input.
    """
    t0 = time.perf_counter()
    out = Path(out)
    _check_out(out, ensemble)
    ref = locate_trial(storage, study, trial, artifacts)
    tr = _load(ref, data_path)
    if from_folds and (refit or ensemble > 1):
        raise ExportError("--from-folds ships the trial's fold models as they are: not with --refit or --ensemble")
    final = final_model(tr.model, tr.ck, ref, tr.ds.x, tr.ds.y, tr.split.train, tr.split.val, refit=refit,
                        members=ensemble, from_folds=from_folds, device=device)
    _record_subjects(final, tr, ref)
    net_blob, session, diff, parity_n = _verified(final.model, tr, ref.number, parity_segments)
    m_float, p_float = onnx_metrics(session, tr.x_val, tr.y_val, tr.task, tuple(tr.ds.classes))
    log.info("trial #%d exported: parity %.3g on %d segments", ref.number, diff, parity_n)
    blob, items, raw = net_blob, None, None
    if preprocessing:
        blob, items, m_float, p_float, raw = _raw(final, tr, ref, net_blob, parity_segments, p_float)
    qblob, m_int8, quant = _int8(net_blob, tr, calibration_segments, p_float, items) if int8 else (None, None, None)
    q_path = int8_path(out) if qblob is not None else None
    facts = _facts(ref, tr, final, diff, parity_n, m_float, m_int8, len(net_blob), raw)
    sides = build_sidecars(facts, out, blob, int8_path=q_path, int8_blob=qblob, quantization=quant)
    # Sidecars first: a model file never appears without the sidecar that describes it.
    files = {sidecar_path(p): encode_sidecar(s) for p, s in sides.items()}
    files[out] = blob
    if q_path is not None and qblob is not None:
        files[q_path] = qblob
    write_files(files)
    return ExportResult(path=out, sidecar=sides[out], int8_path=q_path,
                        int8_sidecar=sides[q_path] if q_path is not None else None,
                        seconds=time.perf_counter() - t0)

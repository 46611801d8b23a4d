"""The threshold gate: metric-named folders, the shared avoid list, and stop rules.

ATML's semantics, made safe for many workers on many machines:

* After a trial, its gate metrics (validation split only) give ``hi`` (highest) and
  ``lo`` (lowest). ``lo >= pass`` files a folder ``int(100*hi)-int(100*lo)`` (``95-94``)
  holding ``model.onnx``, ``model.pt``, ``evaluation_metrics.txt``, ``metrics.json`` and
  ``params.yaml``. The folder is written under a temporary name and renamed, so it
  appears whole or not at all. Only the best ``keep`` folders (by ``lo``, then ``hi``)
  stay.
* ``lo < avoid_below`` (or a crash, or a size limit broken) puts the trial's parameter
  point on the avoid list. The list and the gate records live in the study storage as
  study user attributes (``atml.avoid.<trial>``, ``atml.gate.<trial>``; a null value is a
  removed record), so every worker on every machine sees them.
* A newly sampled point inside an entry's neighbourhood is not trained: numeric
  parameters match within ``radius`` x their range (log space for log parameters),
  categorical ones must be equal.
* ``stop_at`` (a ``lo`` that ends the study) and ``patience_trials`` (trials without a
  better ``lo``) set the study's stop reason, which every worker honours.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from atml.config import GateSettings, Param

__all__ = [
    "AvoidEntry",
    "AVOID_PREFIX",
    "GATE_PREFIX",
    "STOP_ATTR",
    "param_radius",
    "matches",
    "find_match",
    "avoid_entries",
    "add_avoid",
    "clear_avoid",
    "lo_hi",
    "folder_name",
    "evaluation_metrics_txt",
    "file_folder",
    "gate_records",
    "enforce_keep",
    "stop_reason",
    "record_folder",
    "clean_partial",
]

log = logging.getLogger(__name__)

AVOID_PREFIX = "atml.avoid."
GATE_PREFIX = "atml.gate."
STOP_ATTR = "atml.stop_reason"
DEFAULT_RADIUS = 0.02  # continuous parameters: 2 % of the range (log range for log ones)


@dataclass(frozen=True)
class AvoidEntry:
    trial: int
    params: dict[str, Any]
    reason: str
    metrics: dict[str, float] | None = None

    def to_json(self) -> str:
        return json.dumps({"trial": self.trial, "params": self.params, "reason": self.reason,
                           "metrics": self.metrics}, sort_keys=True)


def param_radius(p: Param, radius: float | None) -> float:
    """Neighbourhood half-width as a fraction of ``p``'s range.

    Without an explicit radius a stepped parameter gets two steps (ATML skipped learning
    rates within two steps of an avoided one) and a continuous one 2 % of its range.
    """
    if radius is not None:
        return radius
    if p.kind == "categorical":
        return 0.0
    step = p.step if p.step is not None else (1 if p.kind == "int" and not p.log else None)
    if step is not None and p.high > p.low:
        return 2 * step / (p.high - p.low)
    return DEFAULT_RADIUS


def _scaled(p: Param, v: float) -> float:
    if p.log:
        return (math.log(v) - math.log(p.low)) / (math.log(p.high) - math.log(p.low))
    return (v - p.low) / (p.high - p.low)


def matches(point: dict[str, Any], entry: AvoidEntry, params: dict[str, Param], radius: float | None) -> bool:
    """Whether ``point`` lies inside ``entry``'s neighbourhood (every entry parameter near)."""
    if not entry.params:
        return False
    for name, ev in entry.params.items():
        if name not in point:
            return False
        pv = point[name]
        p = params.get(name)
        if p is None or p.kind == "categorical" or isinstance(pv, (str, bool)) or isinstance(ev, (str, bool)):
            if pv != ev:
                return False
            continue
        r = param_radius(p, radius)
        # a hair of tolerance: "two steps" must include the point exactly two steps away
        if abs(_scaled(p, float(pv)) - _scaled(p, float(ev))) > r + 1e-9:
            return False
    return True


def find_match(point: dict[str, Any], entries: list[AvoidEntry], params: dict[str, Param],
               radius: float | None) -> AvoidEntry | None:
    for e in entries:
        if matches(point, e, params, radius):
            return e
    return None


def avoid_entries(user_attrs: dict[str, Any]) -> list[AvoidEntry]:
    """Avoid-list entries from a study's user attributes (cleared ones left out)."""
    out = []
    for k, v in user_attrs.items():
        if k.startswith(AVOID_PREFIX) and v:
            d = json.loads(v) if isinstance(v, str) else v
            out.append(AvoidEntry(trial=d["trial"], params=d["params"], reason=d["reason"],
                                  metrics=d.get("metrics")))
    return sorted(out, key=lambda e: e.trial)


def add_avoid(study: Any, entry: AvoidEntry) -> None:
    """Put ``entry`` on ``study``'s shared avoid list (one attribute per entry: no races)."""
    study.set_user_attr(f"{AVOID_PREFIX}{entry.trial}", entry.to_json())


def clear_avoid(study: Any) -> int:
    """Clear the avoid list; returns how many entries were removed."""
    n = 0
    for k, v in study.user_attrs.items():
        if k.startswith(AVOID_PREFIX) and v:
            study.set_user_attr(k, None)
            n += 1
    return n


def lo_hi(metrics: dict[str, float], names: tuple[str, ...]) -> tuple[float, float]:
    vals = [float(metrics[n]) for n in names]
    if any(math.isnan(v) for v in vals):
        return math.nan, math.nan
    return min(vals), max(vals)


def folder_name(hi: float, lo: float) -> str:
    """ATML's folder name: int(100 x highest) - int(100 x lowest)."""
    return f"{int(100 * hi + 1e-9)}-{int(100 * lo + 1e-9)}"


def evaluation_metrics_txt(metrics: dict[str, float], names: tuple[str, ...], trial: int) -> str:
    """``evaluation_metrics.txt`` in ATML's layout: one ``Name: value`` line per metric."""
    label = {"f1": "F1 Score", "accuracy": "Accuracy", "precision": "Precision",
             "recall": "Recall", "auroc": "AUROC"}
    lines = [f"{label.get(n, n)}: {float(metrics[n]):.4f}" for n in names]
    lines.append(f"(validation split, trial {trial})")
    return "\n".join(lines) + "\n"


def file_folder(
    gate_dir: Path,
    name: str,
    trial: int,
    writers: dict[str, Callable[[Path], None]],
) -> Path:
    """Write a gate folder atomically: files into a temporary folder, then one rename.

    ``writers`` maps file names to functions that write that file at the given path. On a
    name clash the folder is suffixed with the trial number (``95-94-t12``).
    """
    gate_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{trial}-", dir=gate_dir))
    try:
        for fname, write in writers.items():
            write(tmp / fname)
        final = gate_dir / name
        if final.exists():
            final = gate_dir / f"{name}-t{trial}"
        os.rename(tmp, final)  # atomic on one filesystem: the folder appears whole
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_partial(gate_dir: Path, older_than: float = 120.0) -> int:
    """Remove temporary folders left by a worker killed while writing; returns count.

    Only folders older than ``older_than`` seconds: another live worker on this machine
    may be writing a fresh one right now.
    """
    import time

    n = 0
    if gate_dir.is_dir():
        for p in gate_dir.iterdir():
            if (p.name.startswith((".tmp-", ".trash-")) and p.is_dir()
                    and time.time() - p.stat().st_mtime > older_than):
                shutil.rmtree(p, ignore_errors=True)
                n += 1
    return n


def gate_records(user_attrs: dict[str, Any]) -> list[dict[str, Any]]:
    """Filed gate folders, best first (by lowest metric, then highest)."""
    recs = []
    for k, v in user_attrs.items():
        if k.startswith(GATE_PREFIX) and v:
            recs.append(json.loads(v) if isinstance(v, str) else v)
    return sorted(recs, key=lambda r: (-r["lo"], -r["hi"], r["trial"]))


def record_folder(study: Any, rec: dict[str, Any]) -> None:
    study.set_user_attr(f"{GATE_PREFIX}{rec['trial']}", json.dumps(rec, sort_keys=True))


def enforce_keep(study: Any, gate_dir: Path, keep: int) -> list[str]:
    """Remove folders beyond the best ``keep``; returns the removed folder names."""
    recs = gate_records(study.user_attrs)
    removed = []
    for rec in recs[keep:]:
        study.set_user_attr(f"{GATE_PREFIX}{rec['trial']}", None)
        folder = gate_dir / rec["folder"]
        if folder.is_dir():
            # rename first so a half-deleted folder never carries a metric name
            trash = gate_dir / f".trash-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(folder, trash)
                shutil.rmtree(trash, ignore_errors=True)
            except OSError:  # another worker removed it first
                pass
        removed.append(rec["folder"])
    return removed


def stop_reason(gate: GateSettings, finished: list[tuple[int, float]]) -> str | None:
    """Why the study should stop, from ``(trial, lo)`` of finished trials in finish order."""
    if not finished:
        return None
    if gate.stop_at is not None:
        for trial, lo in finished:
            if not math.isnan(lo) and lo >= gate.stop_at:
                return f"stop_at reached: trial {trial} lowest metric {lo:.4f} >= {gate.stop_at}"
    if gate.patience_trials is not None:
        best, since = -math.inf, 0
        for _, lo in finished:
            if not math.isnan(lo) and lo > best:
                best, since = lo, 0
            else:
                since += 1
        if since >= gate.patience_trials:
            return f"patience_trials reached: {since} trials without a better lowest metric (best {best:.4f})"
    return None


def write_yaml(data: dict[str, Any]) -> Callable[[Path], None]:
    return lambda p: p.write_text(yaml.safe_dump(data, sort_keys=False))


def write_text(text: str) -> Callable[[Path], None]:
    return lambda p: p.write_text(text)


def artifact_store(spec: str | Path) -> Any:
    """Optuna artifact store: a filesystem path (shared storage works), or ``s3://bucket``.

    For S3-compatible stores the usual AWS variables apply (``AWS_ENDPOINT_URL`` for
    MinIO and friends); boto3 must be installed.
    """
    import optuna.artifacts as oa

    spec = str(spec)
    if spec.startswith("s3://"):
        try:
            import boto3
        except ImportError:
            from atml.errors import StorageError

            raise StorageError(f"artifact store {spec}: needs boto3 (pip install boto3)") from None
        bucket = spec[len("s3://"):].strip("/")
        return oa.Boto3ArtifactStore(bucket, client=boto3.client("s3"))
    Path(spec).mkdir(parents=True, exist_ok=True)
    return oa.FileSystemArtifactStore(spec)


def sync_folders(user_attrs: dict[str, Any], store: Any, gate_dir: Path) -> tuple[list[str], list[str]]:
    """Materialise the study's gate folders under ``gate_dir`` from the artifact store.

    Missing folders are downloaded (atomically, like the gate writes them); local
    metric-named folders that the study no longer records are removed. Returns
    ``(written, removed)`` folder names.
    """
    import re

    import optuna.artifacts as oa

    recs = gate_records(user_attrs)
    written, removed = [], []
    wanted = {r["folder"] for r in recs}
    for rec in recs:
        files = rec.get("artifacts") or {}
        folder = gate_dir / rec["folder"]
        if folder.is_dir() and all((folder / f).is_file() for f in files):
            continue
        if not files:
            log.warning("gate folder %s has no uploaded artifacts; skipped", rec["folder"])
            continue
        gate_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-sync-{rec['trial']}-", dir=gate_dir))
        try:
            for fname, aid in files.items():
                oa.download_artifact(artifact_store=store, file_path=str(tmp / fname), artifact_id=aid)
            if folder.exists():
                shutil.rmtree(folder)
            os.rename(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        written.append(rec["folder"])
    if gate_dir.is_dir():
        for p in gate_dir.iterdir():
            if p.is_dir() and re.fullmatch(r"\d+-\d+(-t\d+)?", p.name) and p.name not in wanted:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    return written, removed

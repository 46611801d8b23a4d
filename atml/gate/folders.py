"""Metric-named gate folders: written atomically, recorded in the study, the best ``keep`` kept.

A passing trial's folder (``95-94``) holds ``model.onnx``, ``model.pt``,
``evaluation_metrics.txt``, ``metrics.json`` and ``params.yaml``. It is written under a
temporary name and renamed, so it appears whole or not at all. Each filed folder is
recorded on the study (:data:`atml.records.GATE_PREFIX` + trial number; a null value is a
removed record), so every worker sees them; only the best ``keep`` (by ``lo``, then
``hi``) stay. Other machines materialise them from an Optuna artifact store.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from atml import records
from atml.errors import StorageError

__all__ = ["file_folder", "clean_partial", "gate_records", "record_folder", "enforce_keep",
           "artifact_store", "sync_folders", "write_yaml", "write_text"]

log = logging.getLogger(__name__)

_FOLDER = re.compile(r"\d+-\d+(-t\d+)?")  # a metric-named folder (95-94, or 95-94-t12 on a clash)


@contextmanager
def _staged(gate_dir: Path, prefix: str) -> Iterator[Path]:
    """A fresh temporary folder in ``gate_dir``, removed if the block fails.

    What a killed worker leaves behind, :func:`clean_partial` removes later.
    """
    gate_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=gate_dir))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    with _staged(gate_dir, f".tmp-{trial}-") as tmp:
        for fname, write in writers.items():
            write(tmp / fname)
        final = gate_dir / name
        if final.exists():
            final = gate_dir / f"{name}-t{trial}"
        os.rename(tmp, final)  # atomic on one filesystem: the folder appears whole
    return final


def clean_partial(gate_dir: Path, older_than: float = 120.0) -> int:
    """Remove temporary folders left by a worker killed while writing; returns count.

    Only folders older than ``older_than`` seconds: another live worker on this machine
    may be writing a fresh one right now.
    """
    n = 0
    if gate_dir.is_dir():
        for p in gate_dir.iterdir():
            if (p.name.startswith((".tmp-", ".trash-")) and p.is_dir()
                    and time.time() - p.stat().st_mtime > older_than):
                shutil.rmtree(p, ignore_errors=True)
                n += 1
    return n


def gate_records(user_attrs: dict[str, Any]) -> list[dict[str, Any]]:
    """Filed gate folders, best first (by lowest metric, then highest).

    A record without trial, folder, lo and hi (written by hand) is left out.
    """
    recs = [rec for _, rec in records.gate_records(user_attrs) if {"trial", "folder", "lo", "hi"} <= rec.keys()]
    return sorted(recs, key=lambda r: (-r["lo"], -r["hi"], r["trial"]))


def record_folder(study: Any, rec: dict[str, Any]) -> None:
    """Record a filed folder on ``study`` (``rec`` holds trial, folder, lo, hi, metrics, ...)."""
    study.set_user_attr(f"{records.GATE_PREFIX}{rec['trial']}", json.dumps(rec, sort_keys=True))


def enforce_keep(study: Any, gate_dir: Path, keep: int) -> list[str]:
    """Remove folders beyond the best ``keep``; returns the removed folder names."""
    removed = []
    for rec in gate_records(study.user_attrs)[keep:]:
        study.set_user_attr(f"{records.GATE_PREFIX}{rec['trial']}", None)
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


def write_yaml(data: dict[str, Any]) -> Callable[[Path], None]:
    """A writer for :func:`file_folder`: ``data`` as YAML, keys in order."""
    return lambda p: p.write_text(yaml.safe_dump(data, sort_keys=False))


def write_text(text: str) -> Callable[[Path], None]:
    """A writer for :func:`file_folder`: ``text`` as it is."""
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
        with _staged(gate_dir, f".tmp-sync-{rec['trial']}-") as tmp:
            for fname, aid in files.items():
                oa.download_artifact(artifact_store=store, file_path=str(tmp / fname), artifact_id=aid)
            if folder.exists():
                shutil.rmtree(folder)
            os.rename(tmp, folder)
        written.append(rec["folder"])
    if gate_dir.is_dir():
        for p in gate_dir.iterdir():
            if p.is_dir() and _FOLDER.fullmatch(p.name) and p.name not in wanted:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    return written, removed

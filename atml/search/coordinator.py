"""``atml search``: validate everything, create the study once, run local workers.

Order matters: the space and the data are validated (and the data cached) before the
study row exists, so a bad YAML or bad data leaves nothing behind; the study and its
tables are created once here, before any worker starts, because concurrent schema
creation races. The worker processes live in :mod:`.local`, the progress bar in
:mod:`.progress`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from atml import records
from atml.config import Budget, SearchSpace, load_space
from atml.data.folds import subject_folds
from atml.device import Placement, check_precision, cuda_count, parse_device, place_workers, resolve_device
from atml.errors import DataError, SpaceError
from atml.metrics import LCB_METRIC_NAMES, SUBJECT_METRIC_NAMES
from atml.search.local import LocalWorkers, fail_orphans, stop_workers, tail, wait_any, worker_envs
from atml.search.progress import Progress, poll
from atml.search.worker import WorkerOptions, budget_left
from atml.storage import RETRY_WAIT, checkpoint_sqlite, default_artifacts, open_storage
from atml.trial import attributes, data_spec

__all__ = ["SearchOptions", "SearchResult", "run_search", "default_artifacts", "check_data", "with_overrides",
           "create_or_resume", "best_summary", "worker_argv", "placement"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchOptions:
    space_path: str
    storage: str
    workers: int | None = 2  # None: one per core (CPU), or --workers-per-gpu on each GPU (CUDA)
    threads: int = WorkerOptions.threads
    data_path: str | None = None
    artifacts: str | None = None
    study: str | None = None
    n_trials: int | None = None
    timeout: float | None = None
    seed: int | None = None
    progress: bool = True
    verbose: bool = False
    artifact_store: str | None = None
    heartbeat_interval: int = WorkerOptions.heartbeat_interval  # workers' heartbeat, seconds
    # seconds without heartbeat before a worker's trial is failed and retried
    grace_period: int = WorkerOptions.grace_period
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    gpus: tuple[int, ...] | None = None  # CUDA: the GPUs the local workers run on (default: every visible one)
    workers_per_gpu: int | None = None  # CUDA: worker processes on each of them (default 1)


@dataclass
class SearchResult:
    study: str
    storage: str
    artifacts: str
    counts: dict[str, int]
    best: dict[str, Any] | None
    split: dict[str, Any]
    data_source: str
    stop_reason: str | None
    wall_seconds: float
    interrupted: bool = False
    worker_logs: list[str] = field(default_factory=list)
    workers: int = 0  # local worker processes run (0: the study was only created or resumed)
    skipped: int = 0  # of the PRUNED trials: ended before training (size cap, avoid list), not budget
    already_spent: str | None = None  # a resumed study whose budget was spent before this run: why


def _quiet(_: str) -> None:
    pass


def check_data(space: SearchSpace, data_path: str | None, artifacts: str,
               note: Callable[[str], None] = _quiet) -> dict[str, Any]:
    """Load (and cache) the data once and split it; raises DataError on bad data.

    A space that searches preprocessing settings has every variant preprocessed and
    cached here, so bad data fails before the study exists and workers only read caches.
    The summary describes the first variant (and lists the others' shapes).
    """
    from atml.data import load_dataset

    summary: dict[str, Any] = {}
    variants = space.data_variants()
    for i, overrides in enumerate(variants):
        spec = data_spec(space.data_section(overrides), data_path)
        what = spec.path if spec.path is not None else ("synthetic" if spec.format == "auto" else spec.format)
        if len(variants) > 1:
            shown = ", ".join(f"data.{k}={v}" for k, v in overrides.items())
            note(f"checking data {what}: caching variant {i + 1}/{len(variants)} ({shown}) ...")
        else:
            note(f"checking data {what} ...")
        if spec.path is None and spec.format not in ("auto", "synthetic"):
            raise DataError(f"data.path: format {spec.format} reads a dataset on disk; set data.path or pass --data")
        ds = load_dataset(spec, Path(artifacts) / "cache")
        split = ds.split(spec)
        spread = [m for m, _ in space.study.all_objectives if m in SUBJECT_METRIC_NAMES + LCB_METRIC_NAMES]
        if spread and getattr(ds, "task", "binary") != "binary":
            raise SpaceError(f"{space.source}: study metric {spread[0]}: the spread over subjects is measured "
                             f"for binary tasks only (this data is {ds.task})")
        if i == 0:
            summary = dict(split.summary())
            summary["source"] = ds.source
            summary["skipped"] = ds.skipped
            summary["shape"] = [int(ds.n_leads), int(ds.n_samples)]
        v = space.validation
        if v.cv:  # enough subjects for the folds: one line and nothing written when not
            pool = np.sort(np.concatenate([split.train, split.val]))
            folds = subject_folds(ds.subject[pool], ds.y[pool], v.folds, seed=v.seed, repeats=v.repeats)
            if i == 0:
                summary["validation"] = {"scheme": v.scheme, "folds": v.folds, "repeats": v.repeats,
                                         "subjects": len(set(ds.subject[pool].tolist())),
                                         "fold_subjects": [len(f.held_subjects) for f in folds[:v.folds]]}
        if overrides:
            summary.setdefault("variants", []).append({**overrides, "shape": [int(ds.n_leads), int(ds.n_samples)],
                                                       "segments": int(len(ds.y))})
    return summary


def with_overrides(space: SearchSpace, opts: SearchOptions) -> SearchSpace:
    """``space`` with the command line's study name, seed, budget and data path in force
    (in its stored ``raw`` form too, which workers rebuild it from)."""
    budget = Budget(
        n_trials=opts.n_trials if opts.n_trials is not None else space.budget.n_trials,
        timeout=opts.timeout if opts.timeout is not None else space.budget.timeout,
    )
    study = space.study
    if opts.study:
        study = dataclasses.replace(study, name=opts.study)
    if opts.seed is not None:
        study = dataclasses.replace(study, sampler={**study.sampler, "seed": opts.seed})
    raw = json.loads(json.dumps(space.raw))
    raw["budget"] = {k: v for k, v in (("n_trials", budget.n_trials), ("timeout", budget.timeout)) if v is not None}
    raw["study"] = {**raw["study"], "name": study.name, "sampler": study.sampler}
    if opts.data_path is not None:
        raw["data"] = {**raw["data"], "path": str(Path(opts.data_path).resolve())}
    return dataclasses.replace(space, study=study, budget=budget, raw=raw)


def _comparable(raw: dict[str, Any]) -> str:
    """The parts of a space that must not change when a study is resumed."""
    r = {k: v for k, v in raw.items() if k != "budget"}
    return json.dumps(r, sort_keys=True)


def create_or_resume(space: SearchSpace, storage_url: str) -> tuple[Any, bool]:
    """Create the study of ``space`` (with the space stored on it) or resume it; returns
    ``(storage, resumed)``. A resumed study may change its budget only."""
    # The progress loop, the orphan clean-up and the summary ride out a database
    # restart like the workers do; the first connection still fails fast.
    storage = open_storage(storage_url, create=True, retry_wait=RETRY_WAIT)
    names = [s.study_name for s in storage.get_all_studies()]
    name = space.study.name
    payload = space.to_json()
    if name in names:
        sid = storage.get_study_id_from_name(name)
        attrs = storage.get_study_user_attrs(sid)
        old = (records.stored_space(attrs) or {}).get("raw")
        if old is not None and _comparable(old) != _comparable(space.raw):
            raise SpaceError(
                f"{space.source}: study {name!r} already exists with a different search space "
                "(only budget may change on resume; use another study.name or --study)"
            )
        storage.set_study_user_attr(sid, records.SPACE, payload)
        storage.set_study_user_attr(sid, records.STOP, None)
        return storage, True
    study = optuna.create_study(storage=storage, study_name=name,
                                directions=[dr for _, dr in space.study.all_objectives])
    study.set_user_attr(records.SPACE, payload)
    study.set_user_attr(records.METRIC, space.study.metric)
    return storage, False


def best_summary(study: optuna.Study, artifacts: str) -> dict[str, Any] | None:
    """The best feasible trial as the summary shows it (None before one completes)."""
    bt = records.best_trial(study)
    if bt is None:
        return None
    ck = bt.user_attrs.get(attributes.CHECKPOINT)
    return {
        "number": bt.number,
        "value": bt.values[0],
        "values": bt.values,
        "onnx_kb": bt.user_attrs.get(attributes.ONNX_KB),
        "pareto_size": len(study.best_trials) if len(study.directions) > 1 else None,
        "params": bt.params,
        "metrics": bt.user_attrs.get(attributes.METRICS, {}),
        "n_params": bt.user_attrs.get(attributes.N_PARAMS),
        "best_epoch": bt.user_attrs.get(attributes.BEST_EPOCH),
        "checkpoint": str(Path(artifacts) / study.study_name / ck) if ck else None,
    }


def placement(opts: SearchOptions) -> Placement:
    """Which device (and GPU) each local worker of this search gets; DeviceError for a device
    this machine lacks. Asks torch for GPUs only when the device may be CUDA."""
    d = parse_device(opts.device)
    if d == "mps":
        resolve_device(d)
    return place_workers(d, 0 if d in ("cpu", "mps") else cuda_count(), workers=opts.workers, gpus=opts.gpus,
                         per_gpu=opts.workers_per_gpu, cores=os.cpu_count() or 1)


def worker_argv(opts: SearchOptions, study: str, artifacts: str, storage_url: str,
                device: str | None = None) -> list[str]:
    """The ``atml worker`` arguments every local worker of this search runs with (on ``device``)."""
    argv = ["worker", "--storage", storage_url, "--study", study, "--artifacts", artifacts,
            "--threads", str(opts.threads), "--quiet",
            "--heartbeat", str(opts.heartbeat_interval), "--grace", str(opts.grace_period)]
    if device is not None:
        argv += ["--device", device]
    if opts.data_path is not None:
        argv += ["--data", str(Path(opts.data_path).resolve())]
    if opts.verbose:
        argv.append("--verbose")
    if opts.artifact_store:
        argv += ["--artifact-store", opts.artifact_store]
    return argv


def run_search(opts: SearchOptions, on_progress: Callable[[dict[str, Any]], None] | None = None,
               note: Callable[[str], None] = _quiet) -> SearchResult:
    """Run a whole search; returns the summary (the CLI prints it). ``note`` hears one line per stage."""
    t0 = time.time()
    if opts.workers is not None and opts.workers < 0:
        raise SpaceError(f"--workers must be >= 0 (got {opts.workers})")
    place = placement(opts)  # a device that is not there: before any process or file
    n = place.workers
    _stop_on_signals()
    envs = worker_envs(place.gpus, os.environ.get("CUDA_VISIBLE_DEVICES")) if place.gpus else None
    workers = LocalWorkers(n, opts.threads, envs)  # they import torch while we check
    try:
        space = with_overrides(load_space(opts.space_path), opts)
        check_precision(space.precisions, place.device)
        if opts.data_path is not None and not Path(opts.data_path).exists():
            raise DataError(f"--data: no such file or directory: {opts.data_path}")
        artifacts = opts.artifacts or default_artifacts(opts.storage)
        split = check_data(space, opts.data_path, artifacts, note)
        storage, resumed = create_or_resume(space, opts.storage)
        name = space.study.name
        study = optuna.load_study(study_name=name, storage=storage)
        timeout = space.budget.timeout
        study.set_user_attr(records.DEADLINE, time.time() + timeout if timeout is not None else None)
        log_dir = Path(artifacts) / name / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        left, why = budget_left(study, space) if resumed else (True, None)
    except BaseException:
        workers.cancel()
        raise
    if not left and why is not None and n > 0:
        workers.cancel()
        note(f"study {name} resumed: its budget is already spent ({why}); raise it with --n-trials "
             "(or --timeout) to run more trials")
        final = poll(study, [])
        return SearchResult(
            study=name, storage=opts.storage, artifacts=artifacts, counts=final["counts"],
            best=best_summary(study, artifacts), split=split, data_source=split.get("source", ""),
            stop_reason=why, wall_seconds=time.time() - t0, skipped=final["skipped"], already_spent=why,
        )
    verb = "resumed" if resumed else "created"
    where = f" on {len(set(place.gpus))} GPU(s)" if place.gpus else ""
    note(f"study {name} {verb}; {n} workers starting{where}" if n else f"study {name} {verb}")
    workers.go(worker_argv(opts, name, artifacts, opts.storage, place.device), log_dir)
    procs = workers.procs
    interrupted = False
    bar = Progress(space, enabled=opts.progress and bool(procs))
    try:
        while any(p.poll() is None for p, _ in procs):
            state = poll(study, procs)
            bar.update(state)
            if on_progress:
                on_progress(state)
            wait_any(procs, 1.0)
    except KeyboardInterrupt:
        interrupted = True
        bar.note("stopping workers (Ctrl-C again to force)...")
        stop_workers(procs)
        study.set_user_attr(records.STOP, "interrupted (Ctrl-C)")
    finally:
        fail_orphans(study, procs)
        final = poll(study, procs)
        bar.update(final)
        bar.close()
        engine = getattr(storage, "engine", None)
        if engine is not None:
            engine.dispose()  # our pooled connections must not hold the log open
        checkpoint_sqlite(opts.storage)  # the database file alone is now the whole study
    codes = [p.returncode for p, _ in procs]
    if not interrupted and any(c not in (0, None) for c in codes):
        tails = [tail(path) for (p, path) in procs if p.returncode not in (0, None)]
        log.error("worker exited with %s: %s", codes, tails[0] if tails else "")
    return SearchResult(
        study=name, storage=opts.storage, artifacts=artifacts, counts=final["counts"],
        best=best_summary(study, artifacts), split=split, data_source=split.get("source", ""),
        stop_reason=records.stop_reason(study.user_attrs), wall_seconds=time.time() - t0,
        interrupted=interrupted, worker_logs=[str(p) for _, p in procs], workers=len(procs),
        skipped=final["skipped"],
    )


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (``kill``, ``docker stop``) both stop the search cleanly.

    A search started in the background by a non-interactive shell inherits SIGINT
    ignored; restore it, so an interrupt is never silently lost.
    """
    def _interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)

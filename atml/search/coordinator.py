"""``atml search``: validate everything, create the study once, run local workers.

Order matters: the space and the data are validated (and the data cached) before the
study row exists, so a bad YAML or bad data leaves nothing behind; the study and its
tables are created once here, before any worker starts, because concurrent schema
creation races.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from atml.config import SearchSpace, load_space
from atml.errors import DataError, SpaceError
from atml.records import best_trial
from atml.search.worker import COUNTED, DEADLINE_ATTR, STOP_ATTR
from atml.storage import RETRY_WAIT, SPACE_ATTR, default_artifacts, open_storage
from atml.trial import data_spec, was_skipped

__all__ = ["SearchOptions", "SearchResult", "run_search", "default_artifacts", "check_data"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchOptions:
    space_path: str
    storage: str
    workers: int = 2
    threads: int = 1
    data_path: str | None = None
    artifacts: str | None = None
    study: str | None = None
    n_trials: int | None = None
    timeout: float | None = None
    seed: int | None = None
    progress: bool = True
    verbose: bool = False
    artifact_store: str | None = None
    heartbeat_interval: int = 10  # workers' heartbeat, seconds
    grace_period: int = 30  # seconds without heartbeat before a worker's trial is failed and retried


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


def check_data(space: SearchSpace, data_path: str | None, artifacts: str) -> dict[str, Any]:
    """Load (and cache) the data once and split it; raises DataError on bad data.

    A space that searches preprocessing settings has every variant preprocessed and
    cached here, so bad data fails before the study exists and workers only read caches.
    The summary describes the first variant (and lists the others' shapes).
    """
    from atml.data import load_dataset

    summary: dict[str, Any] = {}
    for i, overrides in enumerate(space.data_variants()):
        spec = data_spec(space.data_section(overrides), data_path)
        if spec.path is None and spec.format not in ("auto", "synthetic"):
            raise DataError(f"data.path: format {spec.format} reads a dataset on disk; set data.path or pass --data")
        ds = load_dataset(spec, Path(artifacts) / "cache")
        split = ds.split(spec)
        if i == 0:
            summary = dict(split.summary())
            summary["source"] = ds.source
            summary["skipped"] = ds.skipped
            summary["shape"] = [int(ds.n_leads), int(ds.n_samples)]
        if overrides:
            summary.setdefault("variants", []).append({**overrides, "shape": [int(ds.n_leads), int(ds.n_samples)],
                                                       "segments": int(len(ds.y))})
    return summary


def _with_overrides(space: SearchSpace, opts: SearchOptions) -> SearchSpace:
    import dataclasses

    from atml.config import Budget

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


def _create_or_resume(space: SearchSpace, storage_url: str) -> tuple[Any, bool]:
    # The progress loop, the orphan clean-up and the summary ride out a database
    # restart like the workers do; the first connection still fails fast.
    storage = open_storage(storage_url, create=True, retry_wait=RETRY_WAIT)
    names = [s.study_name for s in storage.get_all_studies()]
    name = space.study.name
    payload = json.dumps({"source": space.source, "raw": space.raw}, sort_keys=True)
    if name in names:
        sid = storage.get_study_id_from_name(name)
        attrs = storage.get_study_user_attrs(sid)
        old = json.loads(attrs.get(SPACE_ATTR, "{}")).get("raw")
        if old is not None and _comparable(old) != _comparable(space.raw):
            raise SpaceError(
                f"{space.source}: study {name!r} already exists with a different search space "
                "(only budget may change on resume; use another study.name or --study)"
            )
        storage.set_study_user_attr(sid, SPACE_ATTR, payload)
        storage.set_study_user_attr(sid, STOP_ATTR, None)
        return storage, True
    study = optuna.create_study(storage=storage, study_name=name,
                                directions=[dr for _, dr in space.study.all_objectives])
    study.set_user_attr(SPACE_ATTR, payload)
    study.set_user_attr("atml.metric", space.study.metric)
    return storage, False


def _best(study: optuna.Study, artifacts: str) -> dict[str, Any] | None:
    bt = best_trial(study)
    if bt is None:
        return None
    ck = bt.user_attrs.get("checkpoint")
    return {
        "number": bt.number,
        "value": bt.values[0],
        "values": bt.values,
        "onnx_kb": bt.user_attrs.get("onnx_kb"),
        "pareto_size": len(study.best_trials) if len(study.directions) > 1 else None,
        "params": bt.params,
        "metrics": bt.user_attrs.get("metrics", {}),
        "n_params": bt.user_attrs.get("n_params"),
        "best_epoch": bt.user_attrs.get("best_epoch"),
        "checkpoint": str(Path(artifacts) / study.study_name / ck) if ck else None,
    }


class _Workers:
    """Local worker processes, started before the space and data are checked.

    Each starts as ``atml worker --standby``: it imports torch and everything a trial
    needs while this process validates the space, checks the data and creates the
    study, then waits on stdin. :meth:`go` hands each its arguments and log file;
    :meth:`cancel` (a bad space or data, Ctrl-C during set-up) kills them before they
    have touched the storage or written a file.
    """

    def __init__(self, n: int, threads: int) -> None:
        import tempfile

        env = dict(os.environ)
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.procs: list[tuple[subprocess.Popen, Path]] = []
        self._early: list[Any] = []
        for _ in range(n):
            early = tempfile.TemporaryFile()  # output before go (an import error)
            # Own process group: Ctrl-C reaches the workers only through us, so we can
            # decide the order (stop them, then clean up) instead of racing them.
            p = subprocess.Popen([sys.executable, "-m", "atml", "worker", "--standby"], stdin=subprocess.PIPE,
                                 stdout=early, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            self.procs.append((p, Path()))
            self._early.append(early)

    def go(self, opts: SearchOptions, study: str, artifacts: str, storage_url: str, log_dir: Path) -> None:
        argv = ["worker", "--storage", storage_url, "--study", study, "--artifacts", artifacts,
                "--threads", str(opts.threads), "--quiet",
                "--heartbeat", str(opts.heartbeat_interval), "--grace", str(opts.grace_period)]
        if opts.data_path is not None:
            argv += ["--data", str(Path(opts.data_path).resolve())]
        if opts.verbose:
            argv.append("--verbose")
        if opts.artifact_store:
            argv += ["--artifact-store", opts.artifact_store]
        for i, (p, _) in enumerate(self.procs):
            path = log_dir / f"worker-{i}.log"
            self.procs[i] = (p, path)
            early = self._early[i]
            early.seek(0)
            if head := early.read():
                path.write_bytes(head)
            early.close()
            try:
                p.stdin.write((json.dumps({"argv": argv, "log": str(path)}) + "\n").encode())
                p.stdin.close()
            except BrokenPipeError:  # it died while starting; its output is in its log
                pass

    def cancel(self) -> None:
        for (p, _), early in zip(self.procs, self._early, strict=True):
            p.kill()
            p.wait()
            early.close()


def run_search(opts: SearchOptions, on_progress: Callable[[dict[str, Any]], None] | None = None) -> SearchResult:
    """Run a whole search; returns the summary (the CLI prints it)."""
    t0 = time.time()
    if opts.workers < 0:
        raise SpaceError(f"--workers must be >= 0 (got {opts.workers})")
    _stop_on_signals()
    workers = _Workers(opts.workers, opts.threads)  # they import torch while we check
    try:
        space = _with_overrides(load_space(opts.space_path), opts)
        if opts.data_path is not None and not Path(opts.data_path).exists():
            raise DataError(f"--data: no such file or directory: {opts.data_path}")
        artifacts = opts.artifacts or default_artifacts(opts.storage)
        split = check_data(space, opts.data_path, artifacts)
        storage, resumed = _create_or_resume(space, opts.storage)
        name = space.study.name
        study = optuna.load_study(study_name=name, storage=storage)
        if space.budget.timeout is not None:
            study.set_user_attr(DEADLINE_ATTR, time.time() + space.budget.timeout)
        else:
            study.set_user_attr(DEADLINE_ATTR, None)
        log_dir = Path(artifacts) / name / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
    except BaseException:
        workers.cancel()
        raise
    workers.go(opts, name, artifacts, opts.storage, log_dir)
    procs = workers.procs
    interrupted = False
    bar = _Progress(space, enabled=opts.progress and bool(procs))
    try:
        while any(p.poll() is None for p, _ in procs):
            state = _poll(study, procs)
            bar.update(state)
            if on_progress:
                on_progress(state)
            _wait_any(procs, 1.0)
    except KeyboardInterrupt:
        interrupted = True
        bar.note("stopping workers (Ctrl-C again to force)...")
        _stop_workers(procs)
        study.set_user_attr(STOP_ATTR, "interrupted (Ctrl-C)")
    finally:
        _fail_orphans(study, procs)
        final = _poll(study, procs)
        bar.update(final)
        bar.close()
    codes = [p.returncode for p, _ in procs]
    if not interrupted and any(c not in (0, None) for c in codes):
        tails = [_tail(path) for (p, path) in procs if p.returncode not in (0, None)]
        log.error("worker exited with %s: %s", codes, tails[0] if tails else "")
    return SearchResult(
        study=name, storage=opts.storage, artifacts=artifacts, counts=final["counts"],
        best=_best(study, artifacts), split=split, data_source=split.get("source", ""),
        stop_reason=study.user_attrs.get(STOP_ATTR), wall_seconds=time.time() - t0,
        interrupted=interrupted, worker_logs=[str(p) for _, p in procs], workers=len(procs),
        skipped=final["skipped"],
    )


def _wait_any(procs: list, seconds: float) -> None:
    """Sleep up to ``seconds``, waking as soon as every worker has exited."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(p.poll() is None for p, _ in procs):
        time.sleep(0.05)


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (``kill``, ``docker stop``) both stop the search cleanly.

    A search started in the background by a non-interactive shell inherits SIGINT
    ignored; restore it, so an interrupt is never silently lost.
    """
    def _interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def _poll(study: optuna.Study, procs: list) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    best = None
    skipped = 0  # ended before training (size cap, avoid list): they do not use up the budget
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
        skipped += was_skipped(t) and t.state in COUNTED
        if t.state == TrialState.COMPLETE and t.values is not None:
            if best is None or sign * t.values[0] > sign * best:
                best = t.values[0]
    used = sum(counts.get(s.name, 0) for s in COUNTED) - skipped
    return {"counts": counts, "best": best, "alive": sum(p.poll() is None for p, _ in procs), "used": used,
            "skipped": skipped}


def _stop_workers(procs: list, grace: float = 30.0) -> None:
    for p, _ in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.time() + grace
    for p, _ in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _fail_orphans(study: optuna.Study, procs: list) -> None:
    """Mark RUNNING trials of our (now dead) workers FAIL so none stays RUNNING."""
    host = os.uname().nodename
    dead = {f"{host}:{p.pid}" for p, _ in procs if p.poll() is not None}
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("worker") in dead:
            try:
                study._storage.set_trial_user_attr(t._trial_id, "reason", "worker stopped before the trial ended")
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except Exception:  # finished meanwhile: nothing to clean
                log.debug("trial %d finished while cleaning up", t.number)


class _Progress:
    def __init__(self, space: SearchSpace, enabled: bool) -> None:
        self.enabled = enabled
        self.total = space.budget.n_trials
        self.metric = space.study.metric
        self.bar = None
        if enabled:
            from tqdm import tqdm

            tty = sys.stderr.isatty()
            self.bar = tqdm(total=self.total, unit="trial", dynamic_ncols=True, file=sys.stderr,
                            desc=space.study.name, mininterval=0.5 if tty else 30.0)

    def update(self, state: dict[str, Any]) -> None:
        if self.bar is None:
            return
        c = state["counts"]
        # The bar counts what the budget counts: trials skipped before training are shown apart.
        done = state["used"]
        self.bar.n = done if self.total is None else min(done, self.total)
        best = "-" if state["best"] is None else f"{state['best']:.4f}"
        skipped = f" skipped={state['skipped']}" if state["skipped"] else ""
        self.bar.set_postfix_str(
            f"best {self.metric}={best} pruned={c.get('PRUNED', 0) - state['skipped']}{skipped} "
            f"failed={c.get('FAIL', 0)} workers={state['alive']}", refresh=False)
        self.bar.update(0)  # redraws at most every mininterval

    def note(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

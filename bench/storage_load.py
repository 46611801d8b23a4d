"""Storage load: trials per second, errors and lost trials of N worker processes on
PostgreSQL and SQLite, and the storage client CPU of real trials.

Three modes:

``--mode cpu`` (the default): each worker process opens its storage exactly as `atml
worker` does (``atml.storage.open_storage(url, heartbeat=True)``: pool + pre-ping on
PostgreSQL, WAL + busy timeout on SQLite, heartbeats with retry of stale trials) and runs
atml's loop shape: check the global budget (count finished + running trials of the
study), then ``study.optimize(n_trials=1)`` with a trivial objective that suggests 3
parameters, records the worker and one intermediate value, and sleeps ~10 ms. No
training, so the storage is what is measured. The random sampler keeps sampler cost out.

``--mode io``: the same loop, but each trial is what a trial on a remote GPU looks like to
the storage: ``--epochs`` epochs (10) spread over ``--trial-seconds`` of sleep, each
reported to the (median) pruner and followed by the study-stop check every atml trial
makes. The ideal is ``workers / trial-seconds`` trials per second; the figure of merit is
measured / ideal, with no errors and no lost trial (budget - completed), over the whole run
("x ideal", which includes the drain at the end: with a finite budget some workers finish
their last trial while others still run theirs) and per worker up to its own last trial
("x steady", see :func:`steady_rate`). Several ``--trial-seconds`` values sweep the load, to
find where a back-end stops keeping up.

``--mode trial``: one `atml worker` (in this process) runs ``--trials`` real 10-epoch
trials of search_spaces/afib.yaml (its median pruner asked every epoch, but never given
enough trials to prune) on real IESD segments (``--data``, default
../shared/data/iesd2024/txt_sample), and the thread CPU time spent inside every storage
call (Optuna's heartbeat thread included) is summed: storage client CPU per trial, per
call (``get_all_trials`` per state filter: the pruner, the sampler, the budget checks).

    python bench/storage_load.py [--workers 8] [--trials 400] [--heartbeat 1]
    python bench/storage_load.py --mode io --workers 32 --trial-seconds 8 4 2 1
    python bench/storage_load.py --mode trial --trials 8 --backends postgresql
        [--pg postgresql+psycopg://postgres@127.0.0.1:5432/postgres] [--backends postgresql sqlite]

``PYTHONPATH=<an older checkout>`` measures that checkout's storage code with this bench.

For PostgreSQL a throw-away database is created next to the one named in --pg (on
the same server) and dropped afterwards. Errors are exceptions that escaped a worker's
loop plus trials that ended FAIL.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
# atml.trial.pruning.STOP_CHECK_SECONDS, not imported: that package loads torch, and 32 workers
# importing torch would measure the import, not the storage.
STOP_CHECK_SECONDS = 2.0


def child(url: str, study_name: str, total: int, heartbeat: int, sleep: float, epochs: int,
          jitter: float = 0.0) -> None:
    """One worker process: wait for 'go' on stdin, run trials until the budget is spent.

    ``epochs`` 0: the trivial cpu-mode objective; else ``epochs`` reported steps over
    ``sleep`` seconds (each trial's drawn uniformly within ``jitter`` of it, seeded by the
    process), each with the per-epoch stop check of an atml trial."""
    import logging
    import random
    import warnings

    import optuna
    from optuna.trial import TrialState

    from atml import records
    from atml.storage import open_storage, worker_id

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.basicConfig(level=logging.WARNING)
    warnings.simplefilter("ignore")
    storage = open_storage(url, heartbeat=True, heartbeat_interval=heartbeat, grace_period=max(30, 3 * heartbeat))
    study = optuna.load_study(study_name=study_name, storage=storage,
                              sampler=optuna.samplers.RandomSampler(seed=os.getpid()),
                              pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=3))
    me = worker_id()
    rng = random.Random(os.getpid())
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    # the stop check of an atml trial (an older atml, run with PYTHONPATH, read every attribute)
    stopped = getattr(records, "read_stop_reason", None) or (lambda s: records.stop_reason(s.user_attrs))
    try:  # atml's budget count in the database; an older atml loaded every counted trial
        from atml.storage.resilient import trial_counts
    except ImportError:
        trial_counts = None

    def active(states: tuple, below: int | None = None) -> tuple[int, int]:
        """(trials in ``states`` that count, how many of them are not RUNNING), as atml's budget checks count."""
        if trial_counts is not None:
            c = trial_counts(study, states, "over_budget", below=below)
            return sum(n - f for n, f in c.values()), sum(n - f for s, (n, f) in c.items() if s != TrialState.RUNNING)
        ts = [t for t in study.get_trials(deepcopy=False, states=states)
              if "over_budget" not in t.user_attrs and (below is None or t.number < below)]
        return len(ts), sum(t.state != TrialState.RUNNING for t in ts)

    def objective(trial: optuna.Trial) -> float:
        if epochs:  # atml's guard: a trial created past the global budget by a race ends at once
            if active((*counted, TrialState.WAITING), below=trial.number)[0] >= total:
                trial.set_user_attr("over_budget", True)
                raise optuna.TrialPruned("over budget")
        x = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        n = trial.suggest_int("width", 4, 32)
        k = trial.suggest_categorical("kernel", [3, 5, 7])
        trial.set_user_attr("worker", me)
        if not epochs:
            trial.report(x * n, 0)
            time.sleep(sleep)
            return x * n / k
        checked = -STOP_CHECK_SECONDS
        seconds = sleep * rng.uniform(1 - jitter, 1 + jitter)  # trials differ in length (mean: ``sleep``)
        for epoch in range(epochs):
            time.sleep(seconds / epochs)  # training on the accelerator: the CPU is idle
            trial.report(x * n * (epoch + 1), epoch)
            if time.monotonic() - checked >= STOP_CHECK_SECONDS:  # the stop check of atml.trial.pruning
                checked = time.monotonic()
                if stopped(study):
                    raise optuna.TrialPruned("study stopped")
            trial.should_prune()  # asked, as a trial does; never acted on, so every trial runs in full
        trial.set_user_attr("history", [{"f1": x} for _ in range(epochs)])
        return x * n / k

    # One trial of a study of its own first, as a worker that has been running a while:
    # SQLAlchemy compiles each statement once per process, and that is not storage load.
    warm = optuna.load_study(study_name=f"{study_name}-warm", storage=storage)
    warm.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    print("ready", flush=True)
    sys.stdin.readline()
    cpu0 = time.process_time()
    ran = errors = 0
    last = time.time()
    samples: list[str] = []
    got: list[optuna.trial.FrozenTrial] = []
    while True:
        try:
            n_active, n_finished = active(counted)
            if n_active >= total:
                if n_finished >= total:
                    break
                time.sleep(0.05 if not epochs else 0.5)
                continue
            got.clear()
            study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[lambda _s, ft: got.append(ft)])
            ran += 1
            last = time.time()
            if got and got[-1].state == TrialState.FAIL:
                errors += 1
                samples.append(f"trial {got[-1].number} FAIL")
        except Exception as e:  # counted and reported; the load goes on
            errors += 1
            samples.append(f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
    cpu = time.process_time() - cpu0
    print(json.dumps({"ran": ran, "errors": errors, "samples": samples[:3], "cpu_s": cpu, "last": last}), flush=True)


class _ServerCpu:
    """CPU seconds of the PostgreSQL backends serving database ``db`` (server on this machine)
    since :meth:`reset` (or the start)."""

    def __init__(self, admin: str | None, db: str | None) -> None:
        self.admin, self.db = admin, db
        self.seen: dict[int, float] = {}
        self.base: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._con = None

    def __enter__(self) -> _ServerCpu:
        if self.admin:
            import psycopg

            self._con = psycopg.connect(self.admin, autocommit=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._con is not None:
            self._con.close()

    def _sample(self, con: object) -> list[tuple[int, float]]:
        tick = os.sysconf("SC_CLK_TCK")
        out = []
        for (pid,) in con.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.db,)).fetchall():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone, or the server is on another machine
                continue
            out.append((pid, (int(fields[11]) + int(fields[12])) / tick))
        return out

    def _loop(self) -> None:
        import psycopg

        with psycopg.connect(self.admin, autocommit=True) as con:
            while True:
                for pid, cpu in self._sample(con):
                    self.seen[pid] = max(self.seen.get(pid, 0.0), cpu)
                if self._stop.wait(0.2):
                    return

    def reset(self) -> None:
        """Count from now: the CPU the backends have used so far (warm-up) is left out."""
        if self._con is not None:
            self.base = dict(self._sample(self._con))

    @property
    def seconds(self) -> float:
        return sum(v - self.base.get(pid, 0.0) for pid, v in self.seen.items())


def run(url: str, workers: int, total: int, heartbeat: int, sleep: float, epochs: int = 0,
        admin: str | None = None, db: str | None = None, jitter: float = 0.0) -> dict:
    import optuna

    from atml.storage import open_storage

    name = "load"
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # study and tables once, before the workers (concurrent schema creation races)
    optuna.create_study(storage=open_storage(url, create=True), study_name=name)
    optuna.create_study(storage=open_storage(url), study_name=f"{name}-warm")
    procs = [subprocess.Popen([sys.executable, __file__, "--child", url, name, str(total), str(heartbeat), str(sleep),
                               str(epochs), str(jitter)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(workers)]
    for p in procs:
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":  # e.g. the server's max_connections reached
            for q in procs:
                q.kill()
            raise SystemExit(f"a worker process failed to start (exit code {p.wait()}); see its error above")
    reports = []
    with _ServerCpu(admin, db) as server:
        server.reset()  # the warm-up trials are not counted
        t0 = time.time()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            out, _ = p.communicate(timeout=900)
            reports.append(json.loads(out.strip().splitlines()[-1]) if p.returncode == 0 else
                           {"ran": 0, "errors": 1, "samples": [f"exit code {p.returncode}"], "cpu_s": 0.0,
                            "last": time.time()})
    # from "go" to the last trial's end: a worker's exit (interpreter teardown) is not storage time
    wall = max(r["last"] for r in reports) - t0
    trials = optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False)
    over = sum("over_budget" in t.user_attrs for t in trials)
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    return {
        "complete": complete, "trials": len(trials), "wall_s": wall, "trials_per_s": complete / wall,
        "steady_per_s": steady_rate(trials, t0),
        "errors": sum(r["errors"] for r in reports), "samples": [s for r in reports for s in r["samples"]][:5],
        "running_left": sum(t.state == optuna.trial.TrialState.RUNNING for t in trials),
        # budget trials that did not complete: stuck RUNNING, failed, or never written
        "lost": max(0, total - complete), "over_budget": over,
        "client_cpu_ms": 1000 * sum(r["cpu_s"] for r in reports) / max(1, complete),
        "server_cpu_ms": 1000 * server.seconds / max(1, complete),
    }


def steady_rate(trials: list, start: float) -> float:
    """Trials per second with the drain of a finite budget left out: each worker's completed
    trials over the time from the start to its own last completion, summed over workers.
    At the end of a run workers run out of budget one by one and wait for the others' last
    trials; that idle time is the budget's, not the storage's. The whole run's rate (complete
    over wall time, the drain included) is reported beside it."""
    last: dict[str, float] = {}
    count: dict[str, int] = {}
    for t in trials:
        w = t.user_attrs.get("worker")
        if t.state.name != "COMPLETE" or t.datetime_complete is None or w is None:
            continue
        last[w] = max(last.get(w, start), t.datetime_complete.timestamp())
        count[w] = count.get(w, 0) + 1
    return sum(n / (last[w] - start) for w, n in count.items() if last[w] > start)


# --------------------------------------------------------------------------- real trials


class StorageCpu:
    """Thread CPU time spent inside each public method of ``cls`` (outermost calls only)."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._local = threading.local()
        self._saved: dict[str, object] = {}

    def _wrap(self, name: str, fn):  # noqa: ANN001, ANN202 - any storage method
        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if getattr(self._local, "inside", False):
                return fn(*args, **kwargs)
            key = name
            if name == "get_all_trials":  # by filter: the pruner, the sampler and the budget checks differ
                states = kwargs.get("states", args[3] if len(args) > 3 else None)
                key = f"{name}({','.join(s.name for s in states) if states is not None else 'all'})"
            self._local.inside = True
            t0 = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu[key] = self.cpu.get(key, 0.0) + time.thread_time() - t0
                self.calls[key] = self.calls.get(key, 0) + 1
                self._local.inside = False

        return timed

    def __enter__(self) -> StorageCpu:
        # every public method (atml's own ones, such as batched writes and counts, included)
        names = {n for n in dir(self.cls) if not n.startswith("_")}
        names.add("_get_stale_trial_ids")  # Optuna's heartbeat interface, called by fail_stale_trials
        for n in sorted(names):
            fn = getattr(self.cls, n, None)
            if callable(fn):
                self._saved[n] = self.cls.__dict__.get(n, fn)
                setattr(self.cls, n, self._wrap(n, fn))
        return self

    def __exit__(self, *exc: object) -> None:
        for n, fn in self._saved.items():
            setattr(self.cls, n, fn)


def trial_space(data: str, trials: int, epochs: int, name: str) -> dict:
    """search_spaces/afib.yaml on real segments. Its median pruner is asked at every epoch, as
    in a search, but its start-up count is out of reach: every trial trains ``epochs`` epochs."""
    import yaml

    sp = yaml.safe_load((HERE / "search_spaces" / "afib.yaml").read_text())
    sp["study"].update(name=name, pruner={**sp["study"]["pruner"], "n_startup_trials": 10_000})
    sp["budget"] = {"n_trials": trials}
    sp["data"].update(path=data, val_fraction=0.34, test_fraction=0.0)
    sp["train"].update(epochs=epochs, patience=99)
    return sp


def real_trials(url: str, data: str, trials: int, epochs: int, tmp: Path) -> dict:
    import yaml

    from atml.search.coordinator import SearchOptions, run_search
    from atml.search.worker import WorkerOptions, run_worker
    from atml.storage.resilient import ResilientStorage

    name = "cpu"
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump(trial_space(data, trials, epochs, name)))
    art = tmp / "artifacts"
    run_search(SearchOptions(space_path=str(space), storage=url, workers=0, artifacts=str(art), progress=False))
    with StorageCpu(ResilientStorage) as meter:
        cpu0, t0 = time.process_time(), time.perf_counter()
        ran = run_worker(WorkerOptions(storage=url, study=name, artifacts=str(art)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    total = sum(meter.cpu.values())
    top = sorted(meter.cpu, key=meter.cpu.__getitem__, reverse=True)
    return {
        "trials": ran, "wall_s": wall, "process_cpu_ms": 1000 * cpu / max(1, ran),
        "storage_cpu_ms": 1000 * total / max(1, ran), "storage_calls": sum(meter.calls.values()) / max(1, ran),
        "top": [(n, 1000 * meter.cpu[n] / max(1, ran), meter.calls[n] / max(1, ran)) for n in top],
    }


# --------------------------------------------------------------------------- main


@contextlib.contextmanager
def backend_url(backend: str, pg: str) -> Iterator[tuple[str, str | None, str | None, Path]]:
    """``(url, admin url, database, scratch folder)`` of a throw-away study database."""
    with tempfile.TemporaryDirectory(prefix="atml-load-") as tmp:
        if backend == "sqlite":
            yield f"sqlite:///{Path(tmp) / 'load.db'}", None, None, Path(tmp)
            return
        import psycopg

        base, _, _ = pg.rpartition("/")
        db = f"atml_load_{uuid.uuid4().hex[:8]}"
        admin = pg.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(admin, autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{db}"')
        try:
            yield f"{base}/{db}", admin, db, Path(tmp)
        finally:
            with psycopg.connect(admin, autocommit=True) as con:
                con.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def print_load(args: argparse.Namespace, rows: list[dict]) -> None:
    io = args.mode == "io"
    print(f"{args.workers} workers, heartbeat {args.heartbeat} s, {os.cpu_count()} CPUs; "
          + (f"{args.epochs} epochs per trial, length jitter ±{args.jitter:.0%}" if io else f"budget {rows[0]['budget']} trials, objective "
                                                          f"{args.sleep * 1000:.0f} ms"))
    print(f"{'backend':10s} " + (f"{'trial s':>7s} {'budget':>6s} {'ideal/s':>7s} " if io else "")
          + f"{'complete':>8s} {'wall s':>7s} {'trials/s':>9s} " + (f"{'x ideal':>7s} {'x steady':>8s} " if io else "")
          + f"{'errors':>6s} {'lost':>4s} {'running':>7s} {'CPU ms/trial (workers + server)':>32s}")
    for r in rows:
        cpu = f"{r['client_cpu_ms'] + r['server_cpu_ms']:.0f} ({r['client_cpu_ms']:.0f} + {r['server_cpu_ms']:.0f})"
        ideal = args.workers / r["trial_s"] if io else 0.0
        print(f"{r['backend']:10s} " + (f"{r['trial_s']:7.2f} {r['budget']:6d} {ideal:7.1f} " if io else "")
              + f"{r['complete']:8d} {r['wall_s']:7.1f} {r['trials_per_s']:9.2f} "
              + (f"{r['trials_per_s'] / ideal:7.2f} {r['steady_per_s'] / ideal:8.2f} " if io else "")
              + f"{r['errors']:6d} {r['lost']:4d} {r['running_left']:7d} {cpu:>32s}")
        for s in r["samples"]:
            print(f"    {s}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        url, study, total, hb, sleep, epochs, jitter = sys.argv[2:9]
        child(url, study, int(total), int(hb), float(sleep), int(epochs), float(jitter))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["cpu", "io", "trial"], default="cpu")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--trials", type=int, default=None,
                    help="global budget per back-end (cpu: 400; io: --per-worker each; trial: 6)")
    ap.add_argument("--jitter", type=float, default=0.0,
                    help="io mode: each trial's length drawn uniformly within this fraction of --trial-seconds "
                         "(0: every trial the same length, so the workers ask and tell in lockstep)")
    ap.add_argument("--per-worker", type=int, default=12,
                    help="io mode: budget per worker when --trials is not given (the drain at the end weighs 1/N)")
    ap.add_argument("--heartbeat", type=int, default=None,
                    help="heartbeat interval, seconds (cpu: 1; io: 10, atml's default)")
    ap.add_argument("--sleep", type=float, default=0.01, help="cpu mode: objective time, seconds")
    ap.add_argument("--trial-seconds", type=float, nargs="+", default=[2.0], help="io mode: seconds per trial")
    ap.add_argument("--epochs", type=int, default=10, help="io and trial modes: epochs per trial")
    ap.add_argument("--data", default=str(HERE.parent / "shared" / "data" / "iesd2024" / "txt_sample"),
                    help="trial mode: the real segments trained on")
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                    help="a database on the PostgreSQL server to use (a scratch database is created beside it)")
    ap.add_argument("--backends", nargs="+", default=["postgresql", "sqlite"], choices=["postgresql", "sqlite"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.heartbeat is None:
        args.heartbeat = 1 if args.mode == "cpu" else 10

    rows = []
    if args.mode == "trial":
        for backend in args.backends:
            with backend_url(backend, args.pg) as (url, _, _, tmp):
                rows.append({"backend": backend, **real_trials(url, args.data, args.trials or 6, args.epochs, tmp)})
        if args.json:
            print(json.dumps(rows, indent=2))
            return
        for r in rows:
            print(f"{r['backend']}: {r['trials']} real {args.epochs}-epoch trials in {r['wall_s']:.1f} s; storage "
                  f"client CPU {r['storage_cpu_ms']:.1f} ms/trial in {r['storage_calls']:.0f} calls "
                  f"(process CPU {r['process_cpu_ms']:.0f} ms/trial)")
            for name, ms, calls in r["top"]:
                print(f"    {name:48s} {ms:7.1f} ms/trial {calls:6.1f} calls/trial")
        return

    for backend in args.backends:
        for seconds in (args.trial_seconds if args.mode == "io" else [args.sleep]):
            total = args.trials or (400 if args.mode == "cpu" else args.per_worker * args.workers)
            with backend_url(backend, args.pg) as (url, admin, db, _):
                epochs = args.epochs if args.mode == "io" else 0
                res = run(url, args.workers, total, args.heartbeat, seconds, epochs, admin, db,
                          jitter=args.jitter if args.mode == "io" else 0.0)
            rows.append({"backend": backend, "workers": args.workers, "trial_s": seconds, "budget": total, **res})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print_load(args, rows)


if __name__ == "__main__":
    main()

"""Storage load: trials per second and errors of N worker processes on PostgreSQL and SQLite.

Each worker process opens its storage exactly as `atml worker` does
(``atml.storage.open_storage(url, heartbeat=True)``: pool + pre-ping on PostgreSQL, WAL +
busy timeout on SQLite, heartbeats with retry of stale trials) and runs atml's loop
shape: check the global budget (count finished + running trials of the study), then
``study.optimize(n_trials=1)`` with a trivial objective that suggests 3 parameters,
records the worker and one intermediate value, and sleeps ~10 ms. No training, so the
storage is what is measured. The random sampler keeps sampler cost out of the figures.

    python bench/storage_load.py [--workers 8] [--trials 400] [--heartbeat 1]
        [--pg postgresql+psycopg://postgres@127.0.0.1:5432/postgres] [--backends postgresql sqlite]

For PostgreSQL a throw-away database is created next to the one named in --pg (on
the same server) and dropped afterwards. Errors are exceptions that escaped a worker's
loop plus trials that ended FAIL.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path


def child(url: str, study_name: str, total: int, heartbeat: int, sleep: float) -> None:
    """One worker process: wait for 'go' on stdin, run trials until the budget is spent."""
    import logging
    import warnings

    import optuna
    from optuna.trial import TrialState

    from atml.storage import open_storage, worker_id

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.basicConfig(level=logging.WARNING)
    warnings.simplefilter("ignore")
    storage = open_storage(url, heartbeat=True, heartbeat_interval=heartbeat, grace_period=max(30, 3 * heartbeat))
    study = optuna.load_study(study_name=study_name, storage=storage,
                              sampler=optuna.samplers.RandomSampler(seed=os.getpid()))
    me = worker_id()

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        n = trial.suggest_int("width", 4, 32)
        k = trial.suggest_categorical("kernel", [3, 5, 7])
        trial.set_user_attr("worker", me)
        trial.report(x * n, 0)
        time.sleep(sleep)
        return x * n / k

    print("ready", flush=True)
    sys.stdin.readline()
    cpu0 = time.process_time()
    ran = errors = 0
    samples: list[str] = []
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    got: list[optuna.trial.FrozenTrial] = []
    while True:
        try:
            active = study.get_trials(deepcopy=False, states=counted)
            if len(active) >= total:
                if sum(t.state != TrialState.RUNNING for t in active) >= total:
                    break
                time.sleep(0.05)
                continue
            got.clear()
            study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[lambda _s, ft: got.append(ft)])
            ran += 1
            if got and got[-1].state == TrialState.FAIL:
                errors += 1
                samples.append(f"trial {got[-1].number} FAIL")
        except Exception as e:  # counted and reported; the load goes on
            errors += 1
            samples.append(f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
    cpu = time.process_time() - cpu0
    print(json.dumps({"ran": ran, "errors": errors, "samples": samples[:3], "cpu_s": cpu}), flush=True)


class _ServerCpu:
    """CPU seconds of the PostgreSQL backends serving database ``db`` (server on this machine)."""

    def __init__(self, admin: str | None, db: str | None) -> None:
        self.admin, self.db = admin, db
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> _ServerCpu:
        if self.admin:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        import psycopg

        tick = os.sysconf("SC_CLK_TCK")
        with psycopg.connect(self.admin, autocommit=True) as con:
            while True:
                pids = [r[0] for r in con.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.db,))]
                for pid in pids:
                    try:
                        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    except OSError:  # gone, or the server is on another machine
                        continue
                    self.seen[pid] = max(self.seen.get(pid, 0.0), (int(fields[11]) + int(fields[12])) / tick)
                if self._stop.wait(0.2):
                    return

    @property
    def seconds(self) -> float:
        return sum(self.seen.values())


def run(url: str, workers: int, total: int, heartbeat: int, sleep: float,
        admin: str | None = None, db: str | None = None) -> dict:
    import optuna

    from atml.storage import open_storage

    name = "load"
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # study and tables once, before the workers (concurrent schema creation races)
    optuna.create_study(storage=open_storage(url, create=True), study_name=name)
    procs = [subprocess.Popen([sys.executable, __file__, "--child", url, name, str(total), str(heartbeat), str(sleep)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(workers)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    t0 = time.perf_counter()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    reports = []
    with _ServerCpu(admin, db) as server:
        for p in procs:
            out, _ = p.communicate(timeout=900)
            wall = time.perf_counter() - t0
            reports.append(json.loads(out.strip().splitlines()[-1]) if p.returncode == 0 else
                           {"ran": 0, "errors": 1, "samples": [f"exit code {p.returncode}"], "cpu_s": 0.0})
    trials = optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False)
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    return {
        "complete": complete, "trials": len(trials), "wall_s": wall, "trials_per_s": complete / wall,
        "errors": sum(r["errors"] for r in reports), "samples": [s for r in reports for s in r["samples"]][:5],
        "running_left": sum(t.state == optuna.trial.TrialState.RUNNING for t in trials),
        "client_cpu_ms": 1000 * sum(r["cpu_s"] for r in reports) / max(1, complete),
        "server_cpu_ms": 1000 * server.seconds / max(1, complete),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        url, study, total, hb, sleep = sys.argv[2:7]
        child(url, study, int(total), int(hb), float(sleep))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--trials", type=int, default=400, help="global budget per back-end")
    ap.add_argument("--heartbeat", type=int, default=1, help="heartbeat interval, seconds (atml default 10)")
    ap.add_argument("--sleep", type=float, default=0.01, help="objective time, seconds")
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                    help="a database on the PostgreSQL server to use (a scratch database is created beside it)")
    ap.add_argument("--backends", nargs="+", default=["postgresql", "sqlite"], choices=["postgresql", "sqlite"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import psycopg

    rows = []
    for backend in args.backends:
        if backend == "postgresql":
            base, _, _ = args.pg.rpartition("/")
            db = f"atml_load_{uuid.uuid4().hex[:8]}"
            admin = args.pg.replace("postgresql+psycopg://", "postgresql://")
            with psycopg.connect(admin, autocommit=True) as con:
                con.execute(f'CREATE DATABASE "{db}"')
            try:
                res = run(f"{base}/{db}", args.workers, args.trials, args.heartbeat, args.sleep, admin, db)
            finally:
                with psycopg.connect(admin, autocommit=True) as con:
                    con.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        else:
            with tempfile.TemporaryDirectory() as tmp:
                res = run(f"sqlite:///{Path(tmp) / 'load.db'}", args.workers, args.trials, args.heartbeat, args.sleep)
        rows.append({"backend": backend, "workers": args.workers, **res})

    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{args.workers} workers, budget {args.trials} trials, objective {args.sleep * 1000:.0f} ms, "
          f"heartbeat {args.heartbeat} s, {os.cpu_count()} CPUs")
    print(f"{'backend':10s} {'complete':>8s} {'wall s':>7s} {'trials/s':>9s} {'errors':>6s} {'running':>7s} "
          f"{'CPU ms/trial (workers + server)':>32s}")
    for r in rows:
        cpu = f"{r['client_cpu_ms'] + r['server_cpu_ms']:.0f} ({r['client_cpu_ms']:.0f} + {r['server_cpu_ms']:.0f})"
        print(f"{r['backend']:10s} {r['complete']:8d} {r['wall_s']:7.1f} {r['trials_per_s']:9.1f} "
              f"{r['errors']:6d} {r['running_left']:7d} {cpu:>32s}")
        for s in r["samples"]:
            print(f"    {s}")


if __name__ == "__main__":
    main()

"""Distributed workers: PostgreSQL studies joined by `atml worker` processes, a worker
killed mid-trial, a database restart mid-search, the exact global budget under a race,
the gRPC storage proxy, and the transient-error retry helpers of atml.storage.

The PostgreSQL tests run against the real server on 127.0.0.1:5432, each in its own
throw-away database; without the server they skip (and fail when CI is set).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from _helpers import small_space, stop_process
from optuna.trial import TrialState

from atml.errors import StorageError
from atml.storage import Backoff, is_transient, open_storage, retrying
from atml.storage.optuna_internals import trial_id as storage_trial_id

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_CLUSTER = "15"  # `pg_lsclusters`: 15 main


def _pg_up(timeout: float = 3) -> bool:
    import psycopg

    try:
        psycopg.connect(PG_ADMIN, connect_timeout=timeout).close()
        return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="module")
def pg_server() -> str:
    """The PostgreSQL server: skip without it, except in CI where it must be up."""
    if not _pg_up():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL on 127.0.0.1:5432 is unreachable in CI")
        pytest.skip("PostgreSQL on 127.0.0.1:5432 is not running")
    return PG_ADMIN


@pytest.fixture
def pg_db(pg_server: str):
    """A fresh database for one test (URL for atml), dropped afterwards."""
    import psycopg

    name = f"atml_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    _wait_pg(60)
    with psycopg.connect(pg_server, autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _wait_pg(seconds: float) -> None:
    deadline = time.time() + seconds
    while not _pg_up(2) and time.time() < deadline:
        time.sleep(0.5)


# --------------------------------------------------------------------------- helpers


def _space(tmp_path: Path, name: str, n_trials: int, epochs: int, **train: object) -> Path:
    sp = small_space(name, n_trials=n_trials, epochs=epochs)
    sp["study"]["pruner"] = {"type": "none"}  # COMPLETE is then the only counted state
    sp["train"].update({"patience": 99, **train})
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(sp, sort_keys=False))
    return p


def _create_study(space_path: Path, url: str) -> None:
    """Create the study exactly as `atml search` does before it starts workers."""
    from atml.config import load_space
    from atml.search.coordinator import create_or_resume

    create_or_resume(load_space(str(space_path)), url)


def _start_workers(n: int, url: str, study: str, tmp_path: Path, *extra: str) -> list[tuple[subprocess.Popen, Path]]:
    procs = []
    for i in range(n):
        log = tmp_path / f"worker-{i}.log"
        with open(log, "wb") as fh:
            procs.append((subprocess.Popen(
                [sys.executable, "-m", "atml", "worker", "--storage", url, "--study", study,
                 "--artifacts", str(tmp_path / "art"), *extra],
                stdout=fh, stderr=subprocess.STDOUT, cwd=tmp_path), log))
    return procs


def _wait_all(procs: list[tuple[subprocess.Popen, Path]], timeout: float) -> list[int]:
    deadline = time.time() + timeout
    for p, log in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {p.pid} still running after {timeout:.0f} s: {log.read_text()[-2000:]}")
    return [p.returncode for p, _ in procs]


def _kill_all(procs: list[tuple[subprocess.Popen, Path]]) -> None:
    for p, _ in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def _trials(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    s = optuna.load_study(study_name=study, storage=open_storage(url))
    return s.get_trials(deepcopy=False)


def _state_counts(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


# --------------------------------------------------------------------------- retry helpers


def _pg_error(msg: str) -> Exception:
    """An error as Optuna raises it: StorageInternalError <- SQLAlchemy <- psycopg."""
    import psycopg
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import OperationalError

    try:
        try:
            raise OperationalError("SELECT 1", {}, psycopg.OperationalError(msg))
        except OperationalError as e:
            raise StorageInternalError("An exception is raised during the commit.") from e
    except StorageInternalError as e:
        return e


@pytest.mark.parametrize("msg", [
    "connection failed: connection to server at \"127.0.0.1\", port 5432 failed: Connection refused",
    "server closed the connection unexpectedly\n\tThis probably means the server terminated abnormally",
    "FATAL:  the database system is starting up",
    "FATAL:  the database system is shutting down",
    "terminating connection due to administrator command",
])
def test_transient_errors_are_recognised_through_the_cause_chain(msg):
    assert is_transient(_pg_error(msg))


def test_permanent_errors_are_not_transient():
    import sqlite3

    assert not is_transient(_pg_error('FATAL:  password authentication failed for user "x"'))
    assert not is_transient(_pg_error('FATAL:  database "nope" does not exist'))
    assert not is_transient(ValueError("Cannot tell a FAIL trial."))
    assert not is_transient(StorageError("worker loop: storage unreachable for 300 s, giving up"))
    assert is_transient(sqlite3.OperationalError("database is locked"))
    assert is_transient(ConnectionRefusedError(111, "Connection refused"))
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import PendingRollbackError

    try:  # what Optuna's fallback query raises after the first one lost the server
        raise StorageInternalError("An exception is raised during the commit.") from PendingRollbackError(
            "Can't reconnect until invalid transaction is rolled back.  Please rollback() fully")
    except StorageInternalError as e:
        assert is_transient(e)


def test_retrying_waits_out_transient_errors_and_logs(caplog):
    calls = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise _pg_error("server closed the connection unexpectedly")
        return "ok"

    with caplog.at_level(logging.WARNING, logger="atml.storage"):
        assert retrying(flaky, what="unit", max_wait=30) == "ok"
    assert len(calls) == 3
    assert calls[2] - calls[1] >= (calls[1] - calls[0]) * 0.9, "backoff grows"
    text = caplog.text
    assert "unit: storage unavailable (server closed the connection unexpectedly)" in text
    assert "reachable again after 2 retries" in text

    with pytest.raises(ValueError):  # not transient: raised at once
        retrying(lambda: (_ for _ in ()).throw(ValueError("bug")), what="unit")

    t0 = time.monotonic()
    with pytest.raises(StorageError, match="unit: storage unreachable for .* giving up"):
        retrying(lambda: (_ for _ in ()).throw(_pg_error("connection refused")), what="unit", max_wait=1.5)
    assert time.monotonic() - t0 < 5
    b = Backoff("x", max_wait=0)
    with pytest.raises(StorageError):
        b.wait(_pg_error("connection refused"))


def test_bad_urls_fail_fast_with_one_line(tmp_path):
    with pytest.raises(StorageError, match="grpc://HOST:PORT"):
        open_storage("grpc://nohost")
    with pytest.raises(StorageError, match="unsupported URL"):
        open_storage("redis://localhost")


# --------------------------------------------------------------------------- PostgreSQL storage


@pytest.mark.postgres
def test_pool_survives_killed_connections_and_names_the_worker(pg_db, caplog):
    import psycopg

    storage = open_storage(pg_db, heartbeat=True, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=storage, study_name="pool")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    db = pg_db.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as con:
        names = {r[0] for r in con.execute(
            "SELECT application_name FROM pg_stat_activity WHERE datname = %s", (db,))}
        assert any(n.startswith("atml ") and f":{os.getpid()}" in n for n in names), names
        # The server drops every connection of this database (as on a restart) ...
        con.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db,))
    # ... pre-ping and the retries replace them without an error reaching the caller.
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    # A heartbeat that cannot be written is logged, never raised (Optuna's thread would die).
    trial_id = storage_trial_id(study.trials[0])
    with psycopg.connect(PG_ADMIN, autocommit=True) as con:
        con.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
        con.execute(f'CREATE DATABASE "{db}"')  # the fixture drops it again
    with caplog.at_level(logging.WARNING, logger="atml.storage"):
        storage.record_heartbeat(trial_id)
    assert "heartbeat of trial id" in caplog.text


@pytest.mark.postgres
def test_unreachable_or_missing_database_is_a_storage_error_at_once(pg_server):
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="cannot connect"):
        open_storage("postgresql+psycopg://postgres@127.0.0.1:5432/atml_no_such_db", heartbeat=True)
    with pytest.raises(StorageError, match="cannot connect"):
        open_storage("postgresql+psycopg://postgres@127.0.0.1:1/x")  # a reader: no waiting
    assert time.monotonic() - t0 < 10


@pytest.mark.postgres
@pytest.mark.slow
def test_search_on_postgres_runs_exactly_the_global_budget(pg_db, tmp_path, atml_cmd):
    """3 workers racing for `n_trials: 12` complete exactly 12 trials, not 12 each."""
    space = _space(tmp_path, "budget", n_trials=12, epochs=1)
    r = subprocess.run([*atml_cmd, "search", "--space", str(space), "--storage", pg_db, "--workers", "3",
                        "--artifacts", str(tmp_path / "art"), "--no-progress"],
                       capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "n_trials reached (12)" in r.stdout
    trials = _trials(pg_db, "budget")
    counts = _state_counts(trials)
    assert counts.get("COMPLETE") == 12, counts
    assert "RUNNING" not in counts and "WAITING" not in counts
    # any extra trial lost the race for the last slot and says so
    for t in trials:
        if t.state == TrialState.FAIL:
            assert t.user_attrs["reason"].startswith("over budget"), t.user_attrs
    assert len({t.user_attrs["worker"] for t in trials if t.state == TrialState.COMPLETE}) >= 2
    r = subprocess.run([*atml_cmd, "studies", "--storage", pg_db], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "budget" in r.stdout and "n_trials reached (12)" in r.stdout


@pytest.mark.postgres
@pytest.mark.slow
def test_killed_worker_trial_is_failed_and_retried(pg_db, tmp_path):
    """SIGKILL one of two workers mid-trial: its trial turns FAIL within the grace period,
    the other worker re-runs it (same parameters) and the study still reaches its budget."""
    n, grace = 3, 3
    _create_study(_space(tmp_path, "kill", n_trials=n, epochs=10), pg_db)
    procs = _start_workers(2, pg_db, "kill", tmp_path, "--heartbeat", "1", "--grace", str(grace))
    pids = {p.pid: p for p, _ in procs}
    host = os.uname().nodename
    try:
        victim = None
        deadline = time.time() + 120
        while victim is None and time.time() < deadline:
            time.sleep(0.3)
            for t in _trials(pg_db, "kill"):
                w = t.user_attrs.get("worker", "")
                pid = int(w.rsplit(":", 1)[1]) if w.startswith(f"{host}:") else None
                if t.state == TrialState.RUNNING and pid in pids and t.intermediate_values:
                    victim = t  # in the middle of its training: at least one epoch reported
                    break
        assert victim is not None, "no trial got under way"
        killed = pids[int(victim.user_attrs["worker"].rsplit(":", 1)[1])]
        killed.send_signal(signal.SIGKILL)
        t_kill = time.time()
        killed.wait()
        failed_after = None
        while time.time() < t_kill + 60:
            state = next(t.state for t in _trials(pg_db, "kill") if t.number == victim.number)
            if state != TrialState.RUNNING:
                failed_after = time.time() - t_kill
                break
            time.sleep(0.2)
        assert state == TrialState.FAIL
        survivor = [(p, log) for p, log in procs if p is not killed]
        assert _wait_all(survivor, timeout=150) == [0], survivor[0][1].read_text()[-3000:]
    finally:
        _kill_all(procs)
    print(f"\nkilled trial {victim.number}: FAIL {failed_after:.1f} s after SIGKILL (grace {grace} s)")
    # Not before the grace period (the last heartbeat was < 1 s before the kill), and soon
    # after it: stale trials are checked when the survivor starts a trial, or every 2 s
    # while it waits for the last slots, so at worst one of its trials later.
    assert failed_after is not None and grace - 1.5 <= failed_after < grace + 30, failed_after
    trials = _trials(pg_db, "kill")
    counts = _state_counts(trials)
    assert counts.get("COMPLETE") == n, counts
    assert "RUNNING" not in counts and "WAITING" not in counts
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1, [t.system_attrs for t in trials]
    retry = retries[0]
    assert retry.system_attrs["retry_history"] == [victim.number]
    assert retry.params == victim.params
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["worker"] != victim.user_attrs["worker"]


def _pg_ctl(action: str) -> None:
    cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", PG_CLUSTER, "main", action]
    if action == "stop":
        cmd += ["-m", "fast"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


@pytest.mark.postgres
@pytest.mark.slow
def test_workers_ride_out_a_database_restart(pg_db, tmp_path):
    """Stop and start the PostgreSQL cluster mid-search: the workers wait, reconnect and
    finish the budget; no completed trial is lost."""
    if os.geteuid() != 0:
        pytest.skip("restarting the cluster needs root")
    # Budget well beyond what runs at the outage: with 4, the 2 running trials were the last ones, and a
    # worker whose trial completed just before the stop left normally (the budget was spent), which read
    # as "died with the database". Here every worker still has trials to start when the database is down.
    n = 8
    _create_study(_space(tmp_path, "restart", n_trials=n, epochs=6), pg_db)
    procs = _start_workers(2, pg_db, "restart", tmp_path)
    try:
        deadline = time.time() + 120
        done: dict[int, float] = {}
        while time.time() < deadline:
            time.sleep(0.3)
            trials = _trials(pg_db, "restart")
            done = {t.number: t.value for t in trials if t.state == TrialState.COMPLETE}
            if len(done) >= 2 and any(t.state == TrialState.RUNNING for t in trials):
                break
        assert len(done) >= 2, "the search did not get going"
        assert all(p.poll() is None for p, _ in procs)
        try:
            _pg_ctl("stop")
            time.sleep(4)
            assert all(p.poll() is None for p, _ in procs), "a worker died with the database"
        finally:
            _pg_ctl("start")
            _wait_pg(60)
        codes = _wait_all(procs, timeout=180)
    finally:
        _kill_all(procs)
    logs = [log.read_text() for _, log in procs]
    assert codes == [0, 0], logs
    assert any("storage unavailable" in t or "heartbeat of trial" in t for t in logs), "the outage went unnoticed"
    assert not any("Traceback" in t for t in logs), logs
    trials = _trials(pg_db, "restart")
    after = {t.number: t for t in trials}
    for number, value in done.items():
        assert after[number].state == TrialState.COMPLETE and after[number].value == value
    counts = _state_counts(trials)
    assert counts.get("COMPLETE") == n, counts
    assert "RUNNING" not in counts


# --------------------------------------------------------------------------- gRPC proxy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.postgres
def test_grpc_storage_proxy_in_front_of_postgres(pg_db, tmp_path):
    pytest.importorskip("grpc")
    port = _free_port()
    proxy = subprocess.Popen(
        [sys.executable, "-c",
         f"from atml.storage import run_storage_proxy; run_storage_proxy({pg_db!r}, host='127.0.0.1', port={port})"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        storage = open_storage(f"grpc://127.0.0.1:{port}", connect_wait=30)
        study = optuna.create_study(storage=storage, study_name="via-proxy", direction="maximize")
        study.set_user_attr("atml.metric", "f1")
        study.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_int("n", 1, 3), n_trials=5)
        assert len(study.trials) == 5
    finally:
        stop_process(proxy)
    # the trials are in PostgreSQL itself
    direct = optuna.load_study(study_name="via-proxy", storage=open_storage(pg_db))
    assert [t.state for t in direct.trials] == [TrialState.COMPLETE] * 5
    assert direct.user_attrs["atml.metric"] == "f1"

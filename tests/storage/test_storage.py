"""atml.storage on real SQLite files: URLs, the transient-error classification on real
driver errors, backoff and retries, the resilient wrapper (delegation, retries, heartbeats)
and studies opened through ``open_storage``. PostgreSQL and the gRPC proxy are in
tests/test_distributed.py."""

from __future__ import annotations

import inspect
import json
import logging
import os
import pickle
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, InMemoryStorage, RDBStorage
from optuna.trial import TrialState

from atml import records
from atml.errors import StorageError
from atml.storage import (
    DEFAULT_STORAGE,
    Backoff,
    default_artifacts,
    is_transient,
    list_studies,
    open_storage,
    redact,
    retrying,
    sqlite_path,
    study_names,
    worker_id,
)
from atml.storage.optuna_internals import BaseHeartbeat, study_id, study_storage, trial_id
from atml.storage.resilient import ResilientStorage
from atml.storage.urls import engine_kwargs, grpc_address, prepare_sqlite

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "studies" / "atml.db"


@pytest.fixture
def url(db: Path) -> str:
    return f"sqlite:///{db}"


@contextmanager
def write_locked(path: Path) -> Iterator[sqlite3.Connection]:
    """Hold SQLite's write lock on ``path`` (another connection's writes get "database is locked")."""
    con = sqlite3.connect(path, timeout=0, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    try:
        yield con
    finally:
        con.execute("ROLLBACK")
        con.close()


def lock_briefly(path: Path, seconds: float) -> threading.Thread:
    """Hold the write lock on ``path`` for ``seconds`` from a thread; returns once it is held."""
    held = threading.Event()

    def hold() -> None:
        with write_locked(path):
            held.set()
            time.sleep(seconds)

    th = threading.Thread(target=hold)
    th.start()
    held.wait()
    return th


def impatient(url: str, **kw: object) -> RDBStorage:
    """An RDBStorage whose SQLite busy timeout is 50 ms instead of open_storage's 60 s."""
    prepare_sqlite(sqlite_path(url), create=True)
    return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 0.05}}, **kw)


def heartbeats_on(storage: BaseStorage) -> bool:
    """What Optuna asks before it starts a heartbeat thread or fails stale trials."""
    return isinstance(storage, BaseHeartbeat) and storage.get_heartbeat_interval() is not None


# --------------------------------------------------------------------------- URLs


def test_sqlite_path_and_default_artifacts():
    assert sqlite_path("sqlite:///studies/atml.db") == Path("studies/atml.db")
    assert sqlite_path("sqlite:////abs/x.db?timeout=5") == Path("/abs/x.db")
    assert sqlite_path("postgresql+psycopg://u@h/db") is None
    for bad in ("sqlite://", "sqlite:///", "sqlite:///:memory:"):
        with pytest.raises(StorageError, match="expected sqlite:///path/to/file.db"):
            sqlite_path(bad)
    assert default_artifacts(DEFAULT_STORAGE) == "studies"
    assert default_artifacts("sqlite:////data/run/a.db") == "/data/run"
    assert default_artifacts("postgresql+psycopg://u@h/db") == "studies"


def test_redact_hides_only_the_password():
    assert redact("postgresql+psycopg://atml:s3cret@db:5432/x") == "postgresql+psycopg://atml:***@db:5432/x"
    assert redact("postgresql://u:p:q@h@h2/x") == "postgresql://u:***@h2/x"  # the last @ ends the credentials
    assert redact("postgresql://atml@db/x") == "postgresql://atml@db/x"
    assert redact("sqlite:///studies/atml.db") == "sqlite:///studies/atml.db"


def test_grpc_address_and_worker_id():
    assert grpc_address("grpc://proxy.local:13000/") == ("proxy.local", 13000)
    for bad in ("grpc://nohost", "grpc://:13000", "grpc://h:port"):
        with pytest.raises(StorageError, match="grpc://HOST:PORT"):
            grpc_address(bad)
    assert worker_id() == f"{os.uname().nodename}:{os.getpid()}"


def test_engine_kwargs_per_backend():
    assert engine_kwargs("sqlite:///x.db", 2) == {"connect_args": {"timeout": 60}}
    pg = engine_kwargs("postgresql+psycopg://u@h/db", 3)
    assert (pg["pool_size"], pg["max_overflow"], pg["pool_pre_ping"]) == (3, 3, True)
    name = pg["connect_args"]["application_name"]
    assert name.startswith("atml ") and name.endswith(f":{os.getpid()}") and len(name) <= 63
    assert "connect_args" not in engine_kwargs("mysql+pymysql://u@h/db", 2)


def test_prepare_sqlite_creates_a_wal_database(db: Path):
    with pytest.raises(StorageError, match="no such database file"):
        prepare_sqlite(db, create=False)
    prepare_sqlite(db, create=True)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    with pytest.raises(StorageError, match="no such database file"):
        open_storage(f"sqlite:///{db.parent / 'other.db'}")


# --------------------------------------------------------------------------- transient errors


def test_real_sqlite_and_sqlalchemy_errors_are_classified(tmp_path: Path):
    path = tmp_path / "x.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit()
    with write_locked(path):
        other = sqlite3.connect(path, timeout=0)
        with pytest.raises(sqlite3.OperationalError) as locked:
            other.execute("INSERT INTO t VALUES (1)")
        other.close()
        engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
        with pytest.raises(sa.exc.OperationalError) as wrapped, engine.begin() as c:
            c.execute(sa.text("INSERT INTO t VALUES (1)"))
        engine.dispose()
    assert "database is locked" in str(locked.value)
    assert is_transient(locked.value)
    assert is_transient(wrapped.value)  # SQLAlchemy's OperationalError, the driver's as .orig

    with pytest.raises(sqlite3.OperationalError) as missing_table:
        sqlite3.connect(path).execute("SELECT * FROM nope")
    assert not is_transient(missing_table.value)
    with pytest.raises(sqlite3.OperationalError) as no_file:
        sqlite3.connect(tmp_path / "no" / "such" / "dir.db")
    assert not is_transient(no_file.value)  # an OperationalError, but waiting will not help
    with pytest.raises(sa.exc.ArgumentError) as bad_url:
        sa.create_engine("not a url")
    assert not is_transient(bad_url.value)
    assert not is_transient(ValueError("a bug"))


def test_transient_error_wrapped_by_optuna_is_seen_through_the_chain(url: str, db: Path):
    storage = impatient(url)
    sid = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    with write_locked(db), pytest.raises(optuna.exceptions.StorageInternalError) as err:
        storage.set_study_user_attr(sid, "k", 1)
    assert is_transient(err.value)


# --------------------------------------------------------------------------- backoff and retrying


def test_backoff_grows_caps_resets_and_gives_up(caplog: pytest.LogCaptureFixture):
    b = Backoff("unit", max_wait=30, first=0.02, cap=0.05)
    err = sqlite3.OperationalError("database is locked")
    t0 = time.monotonic()
    with caplog.at_level(logging.DEBUG, logger="atml.storage"):
        for _ in range(4):
            b.wait(err)
        assert b.attempts == 4
        b.reset()
    assert time.monotonic() - t0 < 2
    assert b.attempts == 0
    assert "unit: storage unavailable (database is locked); retry 1 in 0.0 s" in caplog.text
    assert "retry 4 in 0.1 s" in caplog.text  # 0.02 -> 0.04 -> capped at 0.05
    assert "unit: storage reachable again after 4 retries" in caplog.text

    quick = Backoff("unit", max_wait=0.01, first=0.05)
    with pytest.raises(StorageError, match=r"^unit: storage unreachable for 0 s, giving up \(database is locked\)$"):
        quick.wait(err)


def test_retrying_rides_out_a_real_lock_and_gives_up_with_a_storage_error(tmp_path: Path):
    path = tmp_path / "x.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit()
    writer = sqlite3.connect(path, timeout=0, check_same_thread=False, isolation_level=None)

    def insert() -> str:
        writer.execute("INSERT INTO t VALUES (1)")
        return "done"

    with write_locked(path), pytest.raises(StorageError, match=r"insert: storage unreachable .* \(database is locked\)"):
        retrying(insert, what="insert", max_wait=0.3)

    holder = lock_briefly(path, 0.3)
    assert retrying(insert, what="insert", max_wait=20) == "done"
    holder.join()
    with pytest.raises(sqlite3.OperationalError, match="no such table"):  # permanent: raised at once
        retrying(lambda: writer.execute("INSERT INTO nope VALUES (1)"), max_wait=20)
    writer.close()


# --------------------------------------------------------------------------- ResilientStorage


def _interface(cls: type) -> dict[str, inspect.Signature]:
    return {n: inspect.signature(f) for n, f in vars(cls).items()
            if inspect.isfunction(f) and (not n.startswith("_") or n in cls.__abstractmethods__)}


def test_wrapper_defines_every_storage_and_heartbeat_method_with_optunas_signature():
    assert issubclass(ResilientStorage, BaseStorage) and issubclass(ResilientStorage, BaseHeartbeat)
    assert not issubclass(ResilientStorage, RDBStorage), "composition, not a subclass of the backend"
    assert not ResilientStorage.__abstractmethods__
    wanted = {**_interface(BaseStorage), **_interface(BaseHeartbeat)}
    wanted.pop("get_failed_trial_callback")  # deprecated alias, implemented by BaseHeartbeat itself
    assert set(BaseStorage.__abstractmethods__) | set(BaseHeartbeat.__abstractmethods__) <= set(wanted)
    for name, sig in wanted.items():
        assert name in vars(ResilientStorage), f"ResilientStorage does not define {name}"
        mine = inspect.signature(vars(ResilientStorage)[name])
        assert list(mine.parameters) == list(sig.parameters), name  # Optuna passes keywords


def test_wrapper_delegates_every_call_to_the_backend(url: str):
    prepare_sqlite(sqlite_path(url), create=True)
    backend = RDBStorage(url)
    st = ResilientStorage(backend, retry_wait=5)
    assert st.engine is backend.engine
    max_ = optuna.study.StudyDirection.MAXIMIZE
    sid = st.create_new_study([max_], "s")
    st.set_study_user_attr(sid, "u", {"a": 1})
    st.set_study_system_attr(sid, "s", [1])
    assert (st.get_study_id_from_name("s"), st.get_study_name_from_id(sid)) == (sid, "s")
    assert st.get_study_directions(sid) == [max_]
    assert st.get_study_user_attrs(sid) == {"u": {"a": 1}} and st.get_study_system_attrs(sid) == {"s": [1]}
    assert [s.study_name for s in st.get_all_studies()] == ["s"]
    dist = optuna.distributions.FloatDistribution(0, 1)
    tid = st.create_new_trial(sid)
    st.set_trial_param(tid, "x", 0.25, dist)
    st.set_trial_intermediate_value(tid, 0, 0.5)
    st.set_trial_user_attr(tid, "u", "v")
    st.set_trial_system_attr(tid, "s", 2)
    st.check_trial_is_updatable(tid, TrialState.RUNNING)
    assert st.set_trial_state_values(tid, TrialState.COMPLETE, [0.75])
    with pytest.raises(UpdateFinishedTrialError):
        st.check_trial_is_updatable(tid, TrialState.COMPLETE)
    with pytest.raises(UpdateFinishedTrialError):  # not transient: no retry hides it
        st.set_trial_state_values(tid, TrialState.COMPLETE, [0.75])
    assert st.get_trial_id_from_study_id_trial_number(sid, 0) == tid and st.get_trial_number_from_id(tid) == 0
    assert st.get_trial_param(tid, "x") == 0.25 and st.get_trial_params(tid) == {"x": 0.25}
    assert st.get_trial_user_attrs(tid) == {"u": "v"} and st.get_trial_system_attrs(tid) == {"s": 2}
    t = st.get_trial(tid)
    assert (t.value, t.intermediate_values, t.state) == (0.75, {0: 0.5}, TrialState.COMPLETE)
    assert st.get_all_trials(sid) == [t] == backend.get_all_trials(sid)
    assert st.get_all_trials(sid, deepcopy=False, states=(TrialState.RUNNING,)) == []
    assert st.get_n_trials(sid) == 1 and st.get_n_trials(sid, TrialState.COMPLETE) == 1
    assert st.get_best_trial(sid) == t
    assert st.get_heartbeat_interval() is None and st.get_heartbeat_stale_trial_callback() is None
    st.record_heartbeat(tid)
    st.remove_session()
    st.delete_study(sid)
    assert backend.get_all_studies() == []


def test_wrapper_retries_writes_through_a_lock_and_can_be_told_not_to(url: str, db: Path,
                                                                       caplog: pytest.LogCaptureFixture):
    backend = impatient(url)
    sid = backend.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    holder = lock_briefly(db, 0.4)
    with caplog.at_level(logging.WARNING, logger="atml.storage"):
        ResilientStorage(backend, retry_wait=20).set_study_user_attr(sid, "k", 1)
    holder.join()
    assert backend.get_study_user_attrs(sid) == {"k": 1}
    assert "storage.set_study_user_attr: storage unavailable (database is locked)" in caplog.text
    with write_locked(db):
        with pytest.raises(optuna.exceptions.StorageInternalError):  # retry_wait 0: at once
            ResilientStorage(backend, retry_wait=0).set_study_user_attr(sid, "k", 2)
        with pytest.raises(StorageError, match=r"^storage.set_study_user_attr: storage unreachable"):
            ResilientStorage(backend, retry_wait=0.3).set_study_user_attr(sid, "k", 3)


def test_heartbeat_that_cannot_be_written_is_logged_not_raised(url: str, db: Path,
                                                                caplog: pytest.LogCaptureFixture):
    st = ResilientStorage(impatient(url, heartbeat_interval=1, grace_period=2), retry_wait=5)
    assert st.get_heartbeat_interval() == 1
    tid = st.create_new_trial(st.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s"))
    with write_locked(db), caplog.at_level(logging.WARNING, logger="atml.storage"):
        st.record_heartbeat(tid)
    assert "heartbeat of trial id" in caplog.text and "database is locked" in caplog.text


def test_heartbeats_and_stale_trial_retry_work_through_the_wrapper(url: str):
    storage = open_storage(url, create=True, heartbeat=True, heartbeat_interval=1, grace_period=1)
    assert heartbeats_on(storage)
    study = optuna.create_study(storage=storage, study_name="hb", direction="maximize")
    assert study_storage(study) is storage
    # A worker's trial whose heartbeats stopped (the worker was killed) ...
    with pytest.warns(UserWarning, match="[Hh]eartbeat"):
        dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    dead_id = storage.get_trial_id_from_study_id_trial_number(study_id(study), dead.number)
    storage.record_heartbeat(dead_id)
    time.sleep(2.2)
    assert storage._get_stale_trial_ids(study_id(study)) == [dead_id]
    # ... is failed by the next optimize() and re-run from the stale-trial callback's copy.
    seen: list[int] = []

    def objective(t: optuna.Trial) -> float:
        time.sleep(1.2)  # long enough for the heartbeat thread to beat
        with storage.engine.connect() as c:
            seen.extend(c.execute(sa.text("SELECT trial_id FROM trial_heartbeats")).scalars())
        return t.suggest_float("x", 0, 1)

    study.optimize(objective, n_trials=1)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].system_attrs["failed_trial"] == trials[0].number
    assert trials[1].params == trials[0].params
    assert trial_id(trials[1]) in seen, "the running trial's heartbeat was recorded"


def test_backend_without_heartbeats_has_them_off():
    st = ResilientStorage(InMemoryStorage(), retry_wait=5)
    assert not heartbeats_on(st)
    assert getattr(st, "engine", None) is None  # the dashboard's test for bulk SQL
    sid = st.create_new_study([optuna.study.StudyDirection.MINIMIZE], "mem")
    st.record_heartbeat(st.create_new_trial(sid))  # nothing to record: no error
    assert st._get_stale_trial_ids(sid) == []


# --------------------------------------------------------------------------- open_storage


def test_study_round_trips_through_a_sqlite_file(url: str, tmp_path: Path):
    storage = open_storage(url, create=True)
    assert isinstance(storage, ResilientStorage) and storage.retry_wait == 0
    assert open_storage(url, heartbeat=True).retry_wait > 0  # workers ride out outages
    study = optuna.create_study(storage=storage, study_name="rt", direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(t: optuna.Trial) -> float:
        x = t.suggest_float("x", 0, 1)
        t.suggest_categorical("model", ["cnn", "resnet"])
        t.report(x / 2, 0)
        t.set_user_attr(records.WORKER, worker_id())
        return x

    study.optimize(objective, n_trials=4)
    assert study_id(study) == storage.get_study_id_from_name("rt")
    for t in study.trials:
        assert storage.get_trial_id_from_study_id_trial_number(study_id(study), t.number) == trial_id(t)

    again = optuna.load_study(study_name="rt", storage=open_storage(url))  # a fresh process's view
    assert again.trials == study.trials
    assert again.best_trial.number == study.best_trial.number
    assert again.trials[0].user_attrs[records.WORKER] == worker_id()
    revived = pickle.loads(pickle.dumps(storage))
    assert revived.get_all_trials(study_id(study)) == study.trials
    assert study_names(storage) == ["rt"]


def test_list_studies_reads_the_records(url: str):
    storage = open_storage(url, create=True)
    study = optuna.create_study(storage=storage, study_name="atml", direction="maximize")
    study.set_user_attr(records.SPACE, json.dumps({"source": "s.yaml", "raw": {"study": {"metric": "f1"}}}))
    study.set_user_attr(records.STOP, "n_trials reached (2)")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    optuna.create_study(storage=storage, study_name="plain", directions=["minimize", "maximize"])
    got = {s.name: s for s in list_studies(storage)}
    a, p = got["atml"], got["plain"]
    assert (a.metric, a.stop_reason, a.counts, a.directions) == ("f1", "n_trials reached (2)", {"COMPLETE": 2},
                                                                 ("maximize",))
    assert a.best_value == max(t.value for t in study.trials) and a.best_trial is not None
    assert (p.metric, p.stop_reason, p.counts, p.best_value) == ("?", None, {}, None)


def test_importing_the_package_loads_no_optuna():
    code = "import atml.storage, sys; print(sorted(m for m in ('optuna', 'sqlalchemy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

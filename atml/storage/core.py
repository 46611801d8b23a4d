"""Storage URL -> Optuna storage, and the study-level records ATML keeps in it.

SQLite gets WAL and a busy timeout (parallel workers otherwise hit "database is
locked"); PostgreSQL gets a small pool per worker with pre-ping, TCP keepalives and an
``application_name`` naming the worker. Heartbeats are on for worker processes so that
a killed worker's trial is failed and retried.

Storage outages (a database restart, a dropped connection) are ridden out rather than
fatal: :func:`is_transient` tells a passing connection error from a real one, and
:func:`retrying` / :class:`Backoff` wait it out with exponential backoff. A storage
opened for a worker (``heartbeat=True``) or with ``retry_wait`` retries its reads and
idempotent writes by itself, and a heartbeat that cannot be written is logged instead
of killing the heartbeat thread.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from atml.errors import StorageError

__all__ = [
    "default_artifacts",
    "DEFAULT_STORAGE",
    "RETRY_WAIT",
    "open_storage",
    "redact",
    "sqlite_path",
    "StudySummary",
    "list_studies",
    "study_names",
    "worker_id",
    "SPACE_ATTR",
    "is_transient",
    "retrying",
    "Backoff",
    "run_storage_proxy",
]

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///studies/atml.db"
SPACE_ATTR = "atml.space"  # JSON of the validated space, stored once at creation
# How long a worker rides out a storage outage before it gives up (a DB restart takes
# seconds; a failover or maintenance window a few minutes).
RETRY_WAIT = 300.0

T = TypeVar("T")


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL, or None for other back-ends."""
    if not url.startswith("sqlite:"):
        return None
    rest = url.split(":///", 1)
    if len(rest) != 2 or not rest[1] or rest[1] == ":memory:":
        raise StorageError(f"storage {url!r}: expected sqlite:///path/to/file.db")
    return Path(rest[1].split("?", 1)[0])


# --------------------------------------------------------------------------- transient errors

# Text of errors that pass once the server is back (psycopg, libpq, SQLite, SQLAlchemy).
_TRANSIENT_TEXT = (
    "server closed the connection",
    "connection refused",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "terminating connection",
    "could not connect to server",
    "connection timed out",
    "connection reset",
    "connection is closed",
    "connection already closed",
    "consuming input failed",
    "no connection to the server",
    "ssl syscall error",
    "ssl connection has been closed",
    "lost synchronization with server",
    "database is locked",
    "too many clients already",
    "remaining connection slots are reserved",
    "deadlock detected",
    "could not serialize access",
    "queuepool limit",
    # SQLAlchemy, on a session whose connection died mid-transaction (e.g. in Optuna's
    # fallback query after the first one lost the server): a rollback and retry cure it.
    "can't reconnect until invalid transaction is rolled back",
)
# Errors that look like connection trouble but will not pass by waiting.
_PERMANENT_TEXT = (
    "authentication failed",
    "no password supplied",
    "no pg_hba.conf entry",
    "permission denied",
    "does not exist",
    "no such table",
    "unable to open database file",
    "readonly database",
    "invalid dsn",
    "could not translate host name",
    "name or service not known",
)
# SQLSTATE classes/codes of transient server conditions: connection exceptions (08),
# admin/crash shutdown and cannot-connect-now (57P0x), serialization/deadlock (40001,
# 40P01), too many connections (53300).
_TRANSIENT_SQLSTATE = ("08", "57P01", "57P02", "57P03", "40001", "40P01", "53300")
_TRANSIENT_TYPES = {"OperationalError", "ConnectionError", "TimeoutError", "PendingRollbackError"}
_TRANSIENT_GRPC = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED"}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its explicit causes: ``raise ... from`` and SQLAlchemy's ``orig``. Not
    ``__context__``: a bug raised while handling an outage is still a bug."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        orig = getattr(e, "orig", None)
        todo += [e.__cause__, orig if isinstance(orig, BaseException) else None]


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a storage error that may pass by waiting (server restarting,
    connection dropped, database locked), as opposed to a bad URL, bad credentials or a
    bug. Looks through the whole cause chain: Optuna wraps driver errors in
    ``StorageInternalError`` and SQLAlchemy in ``OperationalError``."""
    verdict = False
    for e in _chain(exc):
        if isinstance(e, StorageError):  # raised by a Backoff that already gave up
            return False
        text = str(e).lower()
        if any(p in text for p in _PERMANENT_TEXT):
            return False
        if getattr(e, "connection_invalidated", False):  # SQLAlchemy saw a disconnect
            verdict = True
        sqlstate = getattr(e, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_TRANSIENT_SQLSTATE):
            verdict = True
        if any(p in text for p in _TRANSIENT_TEXT):
            verdict = True
        if {c.__name__ for c in type(e).__mro__} & _TRANSIENT_TYPES:
            verdict = True
        code = getattr(e, "code", None)  # grpc.RpcError.code() -> StatusCode
        if callable(code):
            try:
                verdict = verdict or getattr(code(), "name", "") in _TRANSIENT_GRPC
            except Exception:  # not a gRPC error after all
                pass
    return verdict


def _first_line(exc: BaseException) -> str:
    """One line saying what went wrong: the driver's message where there is one."""
    import re

    driver, other = [], []
    for e in _chain(exc):
        text = str(e).strip()
        if not re.search("[a-zA-Z]{3}", text) or "An exception is raised during the commit" in text:
            continue
        line = re.sub(r"^\([\w.]+\)\s*", "", text.splitlines()[0])[:200]  # SQLAlchemy's "(psycopg.X) "
        module = type(e).__module__.split(".")[0]
        (driver if module in ("psycopg", "psycopg2", "sqlite3", "pymysql", "grpc") else other).append(line)
    return (driver or other or [type(exc).__name__])[0]


_jitter = random.Random()  # private: retry jitter must not touch the global RNG


class Backoff:
    """Exponential backoff over one storage outage: ``wait(exc)`` logs and sleeps,
    ``reset()`` after a success. Raises :class:`StorageError` once the outage has
    lasted ``max_wait`` seconds."""

    def __init__(self, what: str, max_wait: float = RETRY_WAIT, first: float = 0.5, cap: float = 5.0) -> None:
        self.what = what
        self.max_wait = max_wait
        self.first = first
        self.cap = cap
        self.attempts = 0
        self._since: float | None = None
        self._delay = first
        self._logged = 0.0

    def wait(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._since is None:
            self._since = now
        waited = now - self._since
        if waited + self._delay > self.max_wait:
            raise StorageError(
                f"{self.what}: storage unreachable for {waited:.0f} s, giving up ({_first_line(exc)})"
            ) from None
        self.attempts += 1
        # Warn on the first failure and then every 30 s; debug in between.
        level = logging.WARNING if self.attempts == 1 or now - self._logged >= 30 else logging.DEBUG
        if level == logging.WARNING:
            self._logged = now
        log.log(level, "%s: storage unavailable (%s); retry %d in %.1f s (waited %.0f of %.0f s)",
                self.what, _first_line(exc), self.attempts, self._delay, waited, self.max_wait)
        time.sleep(self._delay * (0.5 + 0.5 * _jitter.random()))
        self._delay = min(self.cap, self._delay * 2)

    def reset(self) -> None:
        if self.attempts:
            log.warning("%s: storage reachable again after %d retries (%.0f s)", self.what, self.attempts,
                        time.monotonic() - (self._since or time.monotonic()))
        self.attempts = 0
        self._since = None
        self._delay = self.first


def retrying(fn: Callable[..., T], *args: Any, what: str | None = None, max_wait: float = RETRY_WAIT,
             **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, retried with exponential backoff while it raises a
    transient storage error (:func:`is_transient`); other errors propagate at once.
    After ``max_wait`` seconds of outage raises :class:`StorageError`."""
    backoff = Backoff(what or getattr(fn, "__qualname__", "storage call"), max_wait)
    while True:
        try:
            result = fn(*args, **kwargs)
        except Exception as e:
            if not is_transient(e):
                raise
            backoff.wait(e)
        else:
            backoff.reset()
            return result


# --------------------------------------------------------------------------- resilient storages

# Reads and idempotent writes (upserts) of BaseStorage/RDBStorage, including the private
# ones that Optuna's _CachedStorage calls. Trial creation is not here: it is not
# idempotent (a retried insert whose first commit went through would leave a RUNNING
# trial nobody owns); Optuna retries it itself and the worker loop retries the rest.
_RETRIED = (
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_all_studies",
    "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id", "get_trial_param",
    "get_trial", "get_all_trials", "get_n_trials", "get_best_trial", "get_trial_params",
    "get_trial_user_attrs", "get_trial_system_attrs", "_get_trials", "_get_best_trial_id",
    "_get_stale_trial_ids", "set_study_user_attr", "set_study_system_attr", "_set_trial_param",
    "set_trial_param", "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
)


def _retried(name: str, orig: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(orig)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        wait = getattr(self, "_atml_retry_wait", 0.0)
        if wait <= 0:
            return orig(self, *args, **kwargs)
        return retrying(orig, self, *args, what=f"storage.{name}", max_wait=wait, **kwargs)

    return method


def _state_values(orig: Callable[..., Any]) -> Callable[..., Any]:
    """Retry finishing a trial; a retry whose earlier attempt did commit is a success."""

    @functools.wraps(orig)
    def method(self: Any, trial_id: int, state: Any, values: Any = None) -> bool:
        wait = getattr(self, "_atml_retry_wait", 0.0)
        # RUNNING (popping a WAITING trial) is left alone: a blind retry could hand the
        # same trial to two workers.
        if wait <= 0 or not state.is_finished():
            return orig(self, trial_id, state, values)
        tries = 0

        def attempt() -> bool:
            nonlocal tries
            tries += 1
            if tries > 1:
                t = self.get_trial(trial_id)
                if t.state.is_finished():
                    # Ours if the values match. A FAIL cannot be told apart from another
                    # worker's stale-trial check: report it as taken, so no second retry.
                    if t.state == state and state.name != "FAIL" and (values is None or t.values == list(values)):
                        return True
                    from optuna.exceptions import UpdateFinishedTrialError

                    raise UpdateFinishedTrialError(f"trial {t.number} already finished as {t.state.name}")
            return orig(self, trial_id, state, values)

        return retrying(attempt, what="storage.set_trial_state_values", max_wait=wait)

    return method


def _heartbeat(orig: Callable[..., Any]) -> Callable[..., Any]:
    """A heartbeat that cannot be written is logged, never raised: Optuna's heartbeat
    thread would die, and the live trial be failed as stale by other workers."""

    @functools.wraps(orig)
    def method(self: Any, trial_id: int) -> None:
        try:
            orig(self, trial_id)
        except Exception as e:
            now, last = time.monotonic(), getattr(self, "_atml_hb_logged", None)
            if last is None or now - last >= 30:
                self._atml_hb_logged = now
                log.warning("heartbeat of trial id %d not recorded (%s); trying again in %s s",
                            trial_id, _first_line(e), getattr(self, "heartbeat_interval", "?"),
                            exc_info=not is_transient(e))

    return method


_CLASSES: dict[type, type] = {}


def _resilient(base: type) -> type:
    """``base`` with retried reads/idempotent writes and a heartbeat that never raises."""
    cls = _CLASSES.get(base)
    if cls is None:
        ns: dict[str, Any] = {"__module__": __name__}
        for name in _RETRIED:
            if hasattr(base, name):
                ns[name] = _retried(name, getattr(base, name))
        ns["set_trial_state_values"] = _state_values(base.set_trial_state_values)
        if hasattr(base, "record_heartbeat"):
            ns["record_heartbeat"] = _heartbeat(base.record_heartbeat)
        cls = type(f"Resilient{base.__name__}", (base,), ns)
        cls.__qualname__ = cls.__name__
        globals()[cls.__name__] = cls  # instances pickle by reference
        _CLASSES[base] = cls
    return cls


# --------------------------------------------------------------------------- open_storage


def _prepare_sqlite(path: Path, create: bool) -> None:
    if not path.exists():
        if not create:
            raise StorageError(f"storage sqlite:///{path}: no such database file")
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = sqlite3.connect(path, timeout=60)
        # WAL lets the dashboard and the progress bar read while workers write.
        con.execute("PRAGMA journal_mode=WAL")
        con.close()
    except sqlite3.Error as e:
        raise StorageError(f"storage sqlite:///{path}: {e}") from None


def _engine_kwargs(url: str, pool_size: int) -> dict[str, Any]:
    if sqlite_path(url) is not None:
        return {"connect_args": {"timeout": 60}}
    kw: dict[str, Any] = {
        # A worker uses two connections at most: its main thread and Optuna's heartbeat
        # thread. Overflow connections (readers with thread pools) are closed on return,
        # so idle workers hold `pool_size` connections against max_connections.
        "pool_size": pool_size,
        "max_overflow": pool_size,
        "pool_timeout": 30,
        # Pre-ping finds connections that died with a server restart before use.
        "pool_pre_ping": True,
        "pool_recycle": 300,
    }
    if url.startswith("postgresql"):
        kw["connect_args"] = {
            "connect_timeout": 10,
            # A silent network partition is noticed in about a minute, not hours.
            "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
            # Shows which worker holds which connection in pg_stat_activity.
            "application_name": f"atml {worker_id()}"[:63],
        }
    return kw


def _grpc_address(url: str) -> tuple[str, int]:
    rest = url[len("grpc://"):].rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise StorageError(f"storage {url!r}: expected grpc://HOST:PORT")
    return host, int(port)


def open_storage(
    url: str,
    *,
    create: bool = False,
    heartbeat: bool = False,
    heartbeat_interval: int = 10,
    grace_period: int = 30,
    max_retry: int = 2,
    pool_size: int = 2,
    retry_wait: float | None = None,
    connect_wait: float | None = None,
) -> Any:
    """Open an Optuna storage for ``url``: ``sqlite:///FILE``, ``postgresql+psycopg://...``
    (or ``mysql+...``), or ``grpc://HOST:PORT`` for an Optuna gRPC storage proxy.

    ``create`` allows a new SQLite file; ``heartbeat`` turns on heartbeats with retry of
    stale trials (for worker processes, not for readers such as ``atml studies``).
    ``retry_wait`` is how long reads and idempotent writes ride out a storage outage, and
    ``connect_wait`` how long the first connection waits for the server (both default to
    :data:`RETRY_WAIT` for workers, i.e. with ``heartbeat``, else 0: fail at once, so a
    wrong URL typed at ``atml studies`` is an error now, not in five minutes).
    """
    if retry_wait is None:
        retry_wait = RETRY_WAIT if heartbeat else 0.0
    if connect_wait is None:
        connect_wait = RETRY_WAIT if heartbeat else 0.0
    if url.startswith("grpc://"):
        return _open_grpc(url, heartbeat=heartbeat, retry_wait=retry_wait, connect_wait=connect_wait)
    import optuna

    path = sqlite_path(url)
    if path is not None:
        _prepare_sqlite(path, create)
    elif not url.startswith(("postgresql", "mysql")):
        raise StorageError(
            f"storage {url!r}: unsupported URL (use sqlite:///FILE, postgresql+psycopg://... or grpc://HOST:PORT)"
        )
    hb: dict[str, Any] = {}
    if heartbeat:
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning,
                                message=".*(heartbeat|RetryHeartbeatStaleTrialCallback).*")
        hb = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period}
        retry_cb = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        if retry_cb is not None:  # optuna >= 4.9
            hb["heartbeat_stale_trial_callback"] = retry_cb(max_retry=max_retry)
        else:
            hb["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(max_retry=max_retry)
    cls = _resilient(optuna.storages.RDBStorage)
    kwargs = _engine_kwargs(url, pool_size)

    def connect() -> Any:
        for attempt in range(3):
            try:
                return cls(url, engine_kwargs=kwargs, **hb)
            except Exception as e:
                # Two processes opening a new database at once both create Optuna's tables
                # and stamp its schema version; the loser sees "table ... already exists" or a
                # duplicate alembic_version row. The schema is there now: open it again.
                msg = str(e)
                if attempt == 2 or not ("already exists" in msg or "alembic_version" in msg):
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    try:
        storage = retrying(connect, what=f"storage {redact(url)}", max_wait=connect_wait) if connect_wait > 0 \
            else connect()
    except StorageError:
        raise
    except Exception as e:
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        if not (is_transient(e) or isinstance(e, (ArgumentError, NoSuchModuleError, ImportError))
                or _is_db_error(e)):
            raise
        raise StorageError(f"storage {redact(url)}: cannot connect ({_first_line(e)})") from None
    storage._atml_retry_wait = retry_wait
    return storage


def _is_db_error(exc: BaseException) -> bool:
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import DBAPIError

    return any(isinstance(e, (DBAPIError, StorageInternalError)) for e in _chain(exc))


def _open_grpc(url: str, *, heartbeat: bool, retry_wait: float, connect_wait: float) -> Any:
    host, port = _grpc_address(url)
    try:
        import grpc  # noqa: F401
        from optuna.storages import GrpcStorageProxy
    except ImportError:
        raise StorageError(f"storage {url}: the gRPC proxy client needs grpcio (pip install grpcio)") from None
    if heartbeat:
        log.warning("storage %s: Optuna's gRPC proxy does not carry heartbeats; a trial of a killed "
                    "worker stays RUNNING (use a database URL for workers that may be killed)", url)
    storage = _resilient(GrpcStorageProxy)(host=host, port=port)
    try:
        storage.wait_server_ready(timeout=max(connect_wait, 5.0))
    except ConnectionError:
        raise StorageError(f"storage {url}: cannot connect (no gRPC storage proxy answers)") from None
    storage._atml_retry_wait = retry_wait
    return storage


def run_storage_proxy(url: str, host: str = "0.0.0.0", port: int = 13000, threads: int = 16) -> None:
    """Serve the storage at ``url`` as an Optuna gRPC storage proxy (blocks).

    Hundreds of workers then hold one gRPC channel each instead of database connections;
    the proxy holds one small pool and rides out database restarts like a worker."""
    from concurrent.futures import ThreadPoolExecutor

    try:
        import grpc  # noqa: F401
        from optuna.storages import run_grpc_proxy_server
    except ImportError:
        raise StorageError("the gRPC storage proxy needs grpcio (pip install grpcio)") from None
    if url.startswith("grpc://"):
        raise StorageError(f"storage {url}: the proxy serves a database URL, not another proxy")
    backend = open_storage(url, create=True, retry_wait=RETRY_WAIT, connect_wait=RETRY_WAIT,
                           pool_size=max(2, threads // 2))
    import optuna

    # _CachedStorage in front of RDBStorage, as optuna's docs ask for the proxy.
    storage = optuna.storages.get_storage(backend)
    log.info("gRPC storage proxy for %s on %s:%d", redact(url), host, port)
    run_grpc_proxy_server(storage, host=host, port=port, thread_pool=ThreadPoolExecutor(threads))


def redact(url: str) -> str:
    """Hide a password in a URL shown to the user."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            creds = creds.split(":", 1)[0] + ":***"
        return f"{scheme}://{creds}@{host}"
    return url


@dataclass(frozen=True)
class StudySummary:
    name: str
    directions: tuple[str, ...]
    metric: str
    counts: dict[str, int]
    best_value: float | None
    best_trial: int | None
    stop_reason: str | None


def study_names(storage: Any) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def list_studies(storage: Any) -> list[StudySummary]:
    """Trial counts by state and best value of every study in ``storage``."""
    import optuna

    out = []
    for s in storage.get_all_studies():
        sid = storage.get_study_id_from_name(s.study_name)
        trials = storage.get_all_trials(sid, deepcopy=False)
        counts = {st.name: 0 for st in optuna.trial.TrialState}
        for t in trials:
            counts[t.state.name] += 1
        from atml.records import best_trial as pick_best

        best_value = best_trial = None
        bt = pick_best(optuna.load_study(study_name=s.study_name, storage=storage), trials)
        if bt is not None:  # several objectives: the front's best in the first one
            best_value, best_trial = bt.values[0], bt.number
        attrs = s.user_attrs
        space = json.loads(attrs[SPACE_ATTR]) if SPACE_ATTR in attrs else {}
        raw_study = space.get("raw", {}).get("study", {})
        objectives = raw_study.get("objectives")
        metric = "+".join(o["metric"] for o in objectives) if objectives else raw_study.get("metric", "?")
        out.append(
            StudySummary(
                name=s.study_name,
                directions=tuple(d.name.lower() for d in s.directions),
                metric=metric,
                counts={k: v for k, v in counts.items() if v},
                best_value=best_value,
                best_trial=best_trial,
                stop_reason=attrs.get("atml.stop_reason"),
            )
        )
    return out


def default_artifacts(url: str) -> str:
    """Where checkpoints, caches and gate folders live by default: beside a SQLite file,
    else ./studies."""
    p = sqlite_path(url)
    return str(p.parent) if p is not None else "studies"


def worker_id() -> str:
    """hostname:pid, recorded on every trial a worker runs."""
    return f"{os.uname().nodename}:{os.getpid()}"

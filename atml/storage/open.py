"""Storage URL -> a :class:`~atml.storage.resilient.ResilientStorage`: SQLite, PostgreSQL
(or MySQL) through Optuna's ``RDBStorage``, or an Optuna gRPC storage proxy.

Heartbeats are on for worker processes so that a killed worker's trial is failed and
retried (through a gRPC proxy too: the proxy records them and fails stale trials). A storage opened for a worker (``heartbeat=True``) or with ``retry_wait``
retries its reads and idempotent writes by itself; readers fail at once.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import TYPE_CHECKING, Any

from atml.errors import StorageError
from atml.storage.retry import RETRY_WAIT, causes, first_line, is_transient, retrying
from atml.storage.urls import engine_kwargs, grpc_address, prepare_sqlite, redact, sqlite_path

if TYPE_CHECKING:
    from atml.storage.resilient import ResilientStorage

__all__ = ["open_storage", "StaleTrialRetry"]

log = logging.getLogger(__name__)


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
) -> ResilientStorage:
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
        return _open_grpc(url, heartbeat=heartbeat, heartbeat_interval=heartbeat_interval, retry_wait=retry_wait,
                          connect_wait=connect_wait)
    import optuna

    from atml.storage.resilient import ResilientStorage

    path = sqlite_path(url)
    if path is not None:
        prepare_sqlite(path, create)
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
            hb["heartbeat_stale_trial_callback"] = StaleTrialRetry(retry_cb(max_retry=max_retry), grace_period)
        else:
            hb["failed_trial_callback"] = StaleTrialRetry(
                optuna.storages.RetryFailedTrialCallback(max_retry=max_retry), grace_period)
    kwargs = engine_kwargs(url, pool_size)

    def connect() -> optuna.storages.RDBStorage:
        for attempt in range(3):
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, **hb)
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
        backend = retrying(connect, what=f"storage {redact(url)}", max_wait=connect_wait) if connect_wait > 0 \
            else connect()
    except StorageError:
        raise
    except Exception as e:
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        if not (is_transient(e) or isinstance(e, (ArgumentError, NoSuchModuleError, ImportError))
                or _is_db_error(e)):
            raise
        raise StorageError(f"storage {redact(url)}: cannot connect ({first_line(e)})") from None
    # A worker's pruner and sampler may see other workers' finished trials up to a second late
    # (its own never): at every epoch of every worker, a read of the database each time is
    # what makes a study's storage work grow with the square of its workers.
    return ResilientStorage(backend, retry_wait=retry_wait, finished_lag=1.0 if heartbeat else 0.0)


def _is_db_error(exc: BaseException) -> bool:
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import DBAPIError

    return any(isinstance(e, (DBAPIError, StorageInternalError)) for e in causes(exc))


def _open_grpc(url: str, *, heartbeat: bool, heartbeat_interval: int, retry_wait: float,
               connect_wait: float) -> ResilientStorage:
    host, port = grpc_address(url)
    try:
        import grpc  # noqa: F401
        from optuna.storages import GrpcStorageProxy
    except ImportError:
        raise StorageError(f"storage {url}: the gRPC proxy client needs grpcio (pip install grpcio)") from None
    from atml.storage.resilient import ResilientStorage

    proxy = GrpcStorageProxy(host=host, port=port)
    try:
        proxy.wait_server_ready(timeout=max(connect_wait, 5.0))
    except ConnectionError:
        raise StorageError(f"storage {url}: cannot connect (no gRPC storage proxy answers)") from None
    # Heartbeats travel as a reserved trial attribute that `atml storage-proxy` records;
    # the proxy fails and retries a trial whose worker stopped sending them.
    return ResilientStorage(proxy, retry_wait=retry_wait, relay_heartbeat=heartbeat_interval if heartbeat else None)


class StaleTrialRetry:
    """Optuna's retry of a trial whose heartbeat went stale, with one log line saying so
    (a class, not a closure: storages are pickled)."""

    def __init__(self, retry: Any, grace: int) -> None:
        self.retry = retry
        self.grace = grace

    def __call__(self, study: Any, trial: Any) -> None:
        log.warning("trial %d of study %s: no heartbeat for %d s (its worker stopped): failed, and retried "
                    "unless its retries are used up", trial.number, study.study_name, self.grace)
        self.retry(study, trial)

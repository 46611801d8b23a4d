"""Serving a database as an Optuna gRPC storage proxy; clients open ``grpc://HOST:PORT``
with :func:`~atml.storage.open.open_storage`.

Optuna's proxy protocol has no heartbeat call, so workers behind it relay their
heartbeats as a reserved trial attribute (:data:`~atml.storage.resilient.HEARTBEAT_RELAY`)
that the storage served here records in the database's own heartbeat table. A
:class:`StaleTrialSweep` thread of the proxy then does what a worker on the database does
before each trial: fail the RUNNING trials whose heartbeat is older than the grace period
and queue their retries. A worker killed behind the proxy thus leaves no RUNNING trial, and
workers on the database and behind the proxy can share one study.
"""

from __future__ import annotations

import logging
import threading
import warnings
from typing import Any

from atml.errors import StorageError
from atml.storage.open import open_storage
from atml.storage.retry import RETRY_WAIT, first_line
from atml.storage.urls import redact

__all__ = ["run_storage_proxy", "StaleTrialSweep", "sweep_interval"]

log = logging.getLogger(__name__)


def sweep_interval(grace: int) -> float:
    """Seconds between two stale-trial sweeps: a few per grace period, at most every 10 s."""
    return min(10.0, max(1.0, grace / 3))


class StaleTrialSweep(threading.Thread):
    """A daemon thread that fails the stale trials of every study in ``storage`` (one with
    heartbeats on) every ``every`` seconds, as ``optuna.storages.fail_stale_trials`` does
    for a worker: the trial turns FAIL and the storage's stale-trial callback queues its retry."""

    def __init__(self, storage: Any, every: float) -> None:
        super().__init__(name="atml-stale-trial-sweep", daemon=True)
        self.storage = storage
        self.every = every
        self.stopped = threading.Event()
        self._studies: dict[str, Any] = {}

    def sweep(self) -> None:
        """One pass over every study."""
        import optuna

        names = [s.study_name for s in self.storage.get_all_studies()]
        for name in names:
            study = self._studies.get(name)
            if study is None:
                study = self._studies[name] = optuna.load_study(study_name=name, storage=self.storage)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        for gone in set(self._studies) - set(names):  # deleted studies
            del self._studies[gone]

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            try:
                self.sweep()
            except Exception as e:  # a storage outage, a study deleted mid-sweep: next time
                log.warning("stale-trial sweep failed (%s); trying again in %.0f s", first_line(e), self.every)


def run_storage_proxy(url: str, host: str = "127.0.0.1", port: int = 13000, threads: int = 16,
                      grace: int = 30, retries: int = 2) -> None:
    """Serve the storage at ``url`` as an Optuna gRPC storage proxy (blocks).

    Hundreds of workers then hold one gRPC channel each instead of database connections;
    the proxy holds one small pool and rides out database restarts like a worker. A trial
    whose worker sent no heartbeat through the proxy for ``grace`` seconds is failed and
    retried up to ``retries`` times (see the module notes)."""
    from concurrent.futures import ThreadPoolExecutor

    try:
        import grpc  # noqa: F401
        from optuna.storages import run_grpc_proxy_server
    except ImportError:
        raise StorageError("the gRPC storage proxy needs grpcio (pip install grpcio)") from None
    if url.startswith("grpc://"):
        raise StorageError(f"storage {url}: the proxy serves a database URL, not another proxy")
    # Optuna's cache sits in front of the RDB storage inside the resilient one, as
    # optuna's docs ask for the proxy. Heartbeats on: the relayed ones are recorded, and
    # the sweep fails stale trials with the retry callback of a worker.
    storage = open_storage(url, create=True, heartbeat=True, grace_period=grace, max_retry=retries,
                           retry_wait=RETRY_WAIT, connect_wait=RETRY_WAIT, pool_size=max(2, threads // 2))
    sweep = StaleTrialSweep(storage, sweep_interval(grace))
    sweep.start()
    log.info("gRPC storage proxy for %s on %s:%d (trials without heartbeat for %d s are failed and retried)",
             redact(url), host, port, grace)
    try:
        run_grpc_proxy_server(storage, host=host, port=port, thread_pool=ThreadPoolExecutor(threads))
    finally:
        sweep.stopped.set()

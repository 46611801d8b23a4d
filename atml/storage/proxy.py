"""Serving a database as an Optuna gRPC storage proxy; clients open ``grpc://HOST:PORT``
with :func:`~atml.storage.open.open_storage`."""

from __future__ import annotations

import logging

from atml.errors import StorageError
from atml.storage.open import open_storage
from atml.storage.retry import RETRY_WAIT
from atml.storage.urls import redact

__all__ = ["run_storage_proxy"]

log = logging.getLogger(__name__)


def run_storage_proxy(url: str, host: str = "127.0.0.1", port: int = 13000, threads: int = 16) -> None:
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
    # Optuna's cache sits in front of the RDB storage inside the resilient one, as
    # optuna's docs ask for the proxy.
    storage = open_storage(url, create=True, retry_wait=RETRY_WAIT, connect_wait=RETRY_WAIT,
                           pool_size=max(2, threads // 2))
    log.info("gRPC storage proxy for %s on %s:%d", redact(url), host, port)
    run_grpc_proxy_server(storage, host=host, port=port, thread_pool=ThreadPoolExecutor(threads))

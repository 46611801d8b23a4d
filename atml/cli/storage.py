"""``atml storage-proxy``: serve a study database as an Optuna gRPC storage proxy.

Workers then use ``--storage grpc://HOST:PORT`` and hold one gRPC channel each instead
of database connections. Light: grpcio and optuna are imported inside the handler.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["add_commands"]


def add_commands(subparsers: Any, storage_arg: Callable[[argparse.ArgumentParser], None]) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Register ``storage-proxy`` on the ``atml`` parser; returns {name: handler}."""
    p = subparsers.add_parser("storage-proxy", help="serve the storage to many workers over gRPC (needs grpcio)")
    storage_arg(p)
    p.add_argument("--host", default="0.0.0.0", help="interface to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=13000, help="port (default %(default)s)")
    p.add_argument("--threads", type=int, default=16, help="request threads (default %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true")
    return {"storage-proxy": _proxy}


def _proxy(args: argparse.Namespace) -> int:
    from atml.storage import run_storage_proxy

    run_storage_proxy(args.storage, host=args.host, port=args.port, threads=args.threads)
    return 0

"""``atml storage-proxy``: serve a study database as an Optuna gRPC storage proxy.

Workers then use ``--storage grpc://HOST:PORT`` and hold one gRPC channel each instead
of database connections. Light: grpcio and optuna are imported inside the handler.
"""

from __future__ import annotations

import argparse

from atml.cli.common import Command, add_storage_arg

__all__ = ["STORAGE_PROXY"]


def _arguments(p: argparse.ArgumentParser) -> None:
    add_storage_arg(p)
    p.add_argument("--host", default="0.0.0.0", help="interface to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=13000, help="port (default %(default)s)")
    p.add_argument("--threads", type=int, default=16, help="request threads (default %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true")


def _proxy(args: argparse.Namespace) -> int:
    from atml.storage import run_storage_proxy

    run_storage_proxy(args.storage, host=args.host, port=args.port, threads=args.threads)
    return 0


STORAGE_PROXY = Command("storage-proxy", "serve the storage to many workers over gRPC (needs grpcio)",
                        _arguments, _proxy)

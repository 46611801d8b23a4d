"""``atml storage-proxy`` (serve a study database as an Optuna gRPC storage proxy) and
``atml backup`` (a consistent SQLite copy of a live study storage).

Proxy workers use ``--storage grpc://HOST:PORT`` and hold one gRPC channel each instead
of database connections; their heartbeats go through the proxy, which fails and retries
the trials of workers that died. Light: grpcio and optuna are imported inside the handlers.
"""

from __future__ import annotations

import argparse

from atml.cli.common import Command, add_storage_arg

__all__ = ["STORAGE_PROXY", "BACKUP"]

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _arguments(p: argparse.ArgumentParser) -> None:
    add_storage_arg(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default %(default)s: this machine only). The proxy has no "
                        "authentication: anyone who reaches the port can read, change and delete every "
                        "study. Another interface (e.g. 0.0.0.0) needs --trusted-network")
    p.add_argument("--trusted-network", action="store_true",
                   help="allow a non-loopback --host: only on a private network or behind a firewall "
                        "that admits the workers alone")
    p.add_argument("--port", type=int, default=13000, help="port (default %(default)s)")
    p.add_argument("--threads", type=int, default=16, help="request threads (default %(default)s)")
    p.add_argument("--grace", type=int, default=30,
                   help="seconds without a heartbeat from its worker (workers behind the proxy relay them) "
                        "before a RUNNING trial is failed and retried (default %(default)s)")
    p.add_argument("--retries", type=int, default=2, help="retries of a trial whose worker died (default %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true")


def _proxy(args: argparse.Namespace) -> int:
    from atml.errors import StorageError
    from atml.storage import run_storage_proxy

    if args.host not in _LOOPBACK and not args.trusted_network:
        raise StorageError(f"storage-proxy: --host {args.host} exposes every study without authentication; "
                           "add --trusted-network if only the workers can reach this port")

    if args.grace < 1 or args.retries < 0:
        raise StorageError(f"storage-proxy: --grace must be >= 1 and --retries >= 0 (got {args.grace}, {args.retries})")
    run_storage_proxy(args.storage, host=args.host, port=args.port, threads=args.threads, grace=args.grace,
                      retries=args.retries)
    return 0


STORAGE_PROXY = Command("storage-proxy", "serve the storage to many workers over gRPC (needs grpcio)",
                        _arguments, _proxy)


def _backup_arguments(p: argparse.ArgumentParser) -> None:
    add_storage_arg(p)
    p.add_argument("--study", default=None, help="copy this study only (default: every study in the storage)")
    p.add_argument("out", help="the new SQLite file to write (must not exist)")


def _backup(args: argparse.Namespace) -> int:
    import optuna

    from atml.storage import backup, redact

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the copy's "study created" lines are noise here

    res = backup(args.storage, args.out, study=args.study)
    trials = ", ".join(f"{name} ({n} trials)" for name, n in sorted(res.studies.items())) or "no studies"
    print(f"copied {redact(args.storage)} -> {res.out}: {trials}")
    print(f"open it with --storage sqlite:///{res.out}")
    return 0


BACKUP = Command("backup", "write a consistent SQLite copy of a (live) study storage", _backup_arguments, _backup,
                 description="Copy a study storage (SQLite or PostgreSQL, while workers write to it) into a "
                             "new self-contained SQLite file. Trial checkpoints and gate folders are files "
                             "under the artifacts folder and are not copied.")

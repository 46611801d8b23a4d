"""Storage URLs: what they name, how they are shown, and how their database is prepared.

SQLite gets WAL and a busy timeout (parallel workers otherwise hit "database is
locked"); PostgreSQL gets a small pool per worker with pre-ping, TCP keepalives and an
``application_name`` naming the worker. No Optuna here: the CLI reads these at start-up.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from atml.errors import StorageError

__all__ = [
    "DEFAULT_STORAGE", "sqlite_path", "redact", "default_artifacts", "worker_id",
    "grpc_address", "prepare_sqlite", "engine_kwargs",
]

DEFAULT_STORAGE = "sqlite:///studies/atml.db"


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL, or None for other back-ends."""
    if not url.startswith("sqlite:"):
        return None
    rest = url.split(":///", 1)
    if len(rest) != 2 or not rest[1] or rest[1] == ":memory:":
        raise StorageError(f"storage {url!r}: expected sqlite:///path/to/file.db")
    return Path(rest[1].split("?", 1)[0])


def grpc_address(url: str) -> tuple[str, int]:
    """``(host, port)`` of a ``grpc://HOST:PORT`` URL."""
    rest = url[len("grpc://"):].rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise StorageError(f"storage {url!r}: expected grpc://HOST:PORT")
    return host, int(port)


def redact(url: str) -> str:
    """Hide a password in a URL shown to the user."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            creds = creds.split(":", 1)[0] + ":***"
        return f"{scheme}://{creds}@{host}"
    return url


def default_artifacts(url: str) -> str:
    """Where checkpoints, caches and gate folders live by default: beside a SQLite file,
    else ./studies."""
    p = sqlite_path(url)
    return str(p.parent) if p is not None else "studies"


def worker_id() -> str:
    """hostname:pid, recorded on every trial a worker runs."""
    return f"{os.uname().nodename}:{os.getpid()}"


def prepare_sqlite(path: Path, create: bool) -> None:
    """Check (or with ``create`` make) the SQLite file at ``path`` and switch it to WAL."""
    if not path.exists():
        if not create:
            where = "" if path.is_absolute() else f" (looked for {path.absolute()}: a relative path is read from the current folder)"
            raise StorageError(f"storage sqlite:///{path}: no such database file{where}; "
                               "point --storage or ATML_STORAGE at the study, e.g. sqlite:////abs/path/atml.db")
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = sqlite3.connect(path, timeout=60)
        # WAL lets the dashboard and the progress bar read while workers write.
        con.execute("PRAGMA journal_mode=WAL")
        con.close()
    except sqlite3.Error as e:
        raise StorageError(f"storage sqlite:///{path}: {e}") from None


def engine_kwargs(url: str, pool_size: int) -> dict[str, Any]:
    """SQLAlchemy ``create_engine`` arguments for ``url``: busy timeout, pool, keepalives."""
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

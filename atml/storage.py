"""Storage URL -> Optuna storage, and the study-level records ATML keeps in it.

SQLite gets WAL and a busy timeout (parallel workers otherwise hit "database is
locked"); PostgreSQL gets a small pool per worker with pre-ping. Heartbeats are on for
worker processes so that a killed worker's trial is failed and retried.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atml.errors import StorageError

__all__ = [
    "DEFAULT_STORAGE",
    "open_storage",
    "sqlite_path",
    "StudySummary",
    "list_studies",
    "study_names",
    "SPACE_ATTR",
]

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///studies/atml.db"
SPACE_ATTR = "atml.space"  # JSON of the validated space, stored once at creation


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL, or None for other back-ends."""
    if not url.startswith("sqlite:"):
        return None
    rest = url.split(":///", 1)
    if len(rest) != 2 or not rest[1] or rest[1] == ":memory:":
        raise StorageError(f"storage {url!r}: expected sqlite:///path/to/file.db")
    return Path(rest[1].split("?", 1)[0])


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


def open_storage(
    url: str,
    *,
    create: bool = False,
    heartbeat: bool = False,
    heartbeat_interval: int = 10,
    grace_period: int = 30,
    max_retry: int = 2,
    pool_size: int = 2,
) -> Any:
    """Open an Optuna RDB storage for ``url``.

    ``create`` allows a new SQLite file; ``heartbeat`` turns on heartbeats with retry of
    stale trials (for worker processes, not for readers such as ``atml studies``).
    """
    import optuna
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

    path = sqlite_path(url)
    if path is not None:
        _prepare_sqlite(path, create)
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}}
    elif url.startswith(("postgresql", "mysql")):
        engine_kwargs = {
            "pool_size": pool_size,
            "max_overflow": pool_size,
            "pool_pre_ping": True,
            "pool_recycle": 300,
        }
    else:
        raise StorageError(f"storage {url!r}: unsupported URL (use sqlite:///FILE or postgresql+psycopg://...)")
    hb: dict[str, Any] = {}
    if heartbeat:
        hb = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period,
            "failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=max_retry),
        }
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **hb)
    except (OperationalError, ArgumentError, NoSuchModuleError, ImportError) as e:
        msg = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise StorageError(f"storage {_redact(url)}: cannot connect ({msg})") from None


def _redact(url: str) -> str:
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
        best_value = best_trial = None
        if len(s.directions) == 1:
            done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
            if done:
                pick = max if s.directions[0] == optuna.study.StudyDirection.MAXIMIZE else min
                bt = pick(done, key=lambda t: t.value)
                best_value, best_trial = bt.value, bt.number
        attrs = s.user_attrs
        space = json.loads(attrs[SPACE_ATTR]) if SPACE_ATTR in attrs else {}
        metric = space.get("raw", {}).get("study", {}).get("metric", "?")
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


def worker_id() -> str:
    """hostname:pid, recorded on every trial a worker runs."""
    return f"{os.uname().nodename}:{os.getpid()}"

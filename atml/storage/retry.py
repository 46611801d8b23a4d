"""Storage outages ridden out: transient-error classification and exponential backoff.

A database restart or a dropped connection is waited out rather than fatal:
:func:`is_transient` tells a passing connection error from a real one (bad URL, bad
credentials, a bug), and :func:`retrying` / :class:`Backoff` wait it out with
exponential backoff, then give up with a :class:`~atml.errors.StorageError`.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from atml.errors import StorageError

__all__ = ["RETRY_WAIT", "is_transient", "Backoff", "retrying", "causes", "first_line"]

log = logging.getLogger(__name__)

# How long a worker rides out a storage outage before it gives up (a DB restart takes
# seconds; a failover or maintenance window a few minutes).
RETRY_WAIT = 300.0

T = TypeVar("T")


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


def causes(exc: BaseException) -> Iterator[BaseException]:
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
    for e in causes(exc):
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


def first_line(exc: BaseException) -> str:
    """One line saying what went wrong: the driver's message where there is one."""
    driver, other = [], []
    for e in causes(exc):
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
        """Log ``exc`` and sleep before the next attempt; StorageError once out of time."""
        now = time.monotonic()
        if self._since is None:
            self._since = now
        waited = now - self._since
        if waited + self._delay > self.max_wait:
            raise StorageError(
                f"{self.what}: storage unreachable for {waited:.0f} s, giving up ({first_line(exc)})"
            ) from None
        self.attempts += 1
        # Warn on the first failure and then every 30 s; debug in between.
        level = logging.WARNING if self.attempts == 1 or now - self._logged >= 30 else logging.DEBUG
        if level == logging.WARNING:
            self._logged = now
        log.log(level, "%s: storage unavailable (%s); retry %d in %.1f s (waited %.0f of %.0f s)",
                self.what, first_line(exc), self.attempts, self._delay, waited, self.max_wait)
        time.sleep(self._delay * (0.5 + 0.5 * _jitter.random()))
        self._delay = min(self.cap, self._delay * 2)

    def reset(self) -> None:
        """The storage answered: log the recovery and start the next outage afresh."""
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


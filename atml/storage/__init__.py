"""Storage URLs -> Optuna storages (SQLite, PostgreSQL, gRPC proxy), retries, listing.

Submodules: :mod:`~atml.storage.urls` (URLs, SQLite/PostgreSQL preparation),
:mod:`~atml.storage.retry` (transient errors, backoff), :mod:`~atml.storage.resilient`
(the wrapper every opened storage is), :mod:`~atml.storage.open` (``open_storage``),
:mod:`~atml.storage.finished` (finished trials read incrementally), :mod:`~atml.storage.lean`
(one-statement trial writes and budget counts),
:mod:`~atml.storage.proxy` (gRPC proxy server and its stale-trial sweep), :mod:`~atml.storage.listing`,
:mod:`~atml.storage.backup` (consistent copies, WAL checkpoints) and
:mod:`~atml.storage.optuna_internals` (the one adapter over Optuna's private ids).
Importing this package loads no Optuna.
"""

from __future__ import annotations

from atml.storage.backup import BackupResult, backup, checkpoint_sqlite
from atml.storage.listing import StudySummary, list_studies, study_names
from atml.storage.open import open_storage
from atml.storage.proxy import run_storage_proxy
from atml.storage.retry import RETRY_WAIT, Backoff, is_transient, retrying
from atml.storage.urls import DEFAULT_STORAGE, default_artifacts, redact, sqlite_path, worker_id

__all__ = [
    "DEFAULT_STORAGE", "RETRY_WAIT", "sqlite_path", "redact", "default_artifacts", "worker_id",
    "is_transient", "Backoff", "retrying",
    "open_storage", "run_storage_proxy",
    "StudySummary", "study_names", "list_studies",
    "backup", "BackupResult", "checkpoint_sqlite",
]

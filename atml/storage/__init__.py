"""Storage URLs -> Optuna storages (SQLite, PostgreSQL, gRPC proxy), retries, listing."""

from __future__ import annotations

from atml.storage.core import (  # noqa: F401
    DEFAULT_STORAGE,
    RETRY_WAIT,
    SPACE_ATTR,
    Backoff,
    StudySummary,
    default_artifacts,
    is_transient,
    list_studies,
    open_storage,
    redact,
    retrying,
    run_storage_proxy,
    sqlite_path,
    study_names,
    worker_id,
)

__all__ = ['DEFAULT_STORAGE', 'SPACE_ATTR', 'RETRY_WAIT', 'sqlite_path', 'is_transient', 'Backoff', 'retrying', 'open_storage', 'run_storage_proxy', 'redact', 'StudySummary', 'study_names', 'list_studies', 'default_artifacts', 'worker_id']

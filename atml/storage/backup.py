"""Consistent copies of a study storage, and folding SQLite's write-ahead log back in.

A SQLite study in WAL mode keeps recent commits in ``atml.db-wal`` until a checkpoint
moves them into ``atml.db``: a copy of the main file alone can miss trials, or hold no
tables at all. :func:`checkpoint_sqlite` runs at the normal end of a search and of a
worker; :func:`backup` writes a self-contained SQLite copy of a live study (SQLite or
PostgreSQL) that a user can mail, archive or open anywhere.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path

from atml.errors import StorageError
from atml.storage.urls import redact, sqlite_path

log = logging.getLogger(__name__)

__all__ = ["checkpoint_sqlite", "backup", "BackupResult"]


def checkpoint_sqlite(url: str, timeout: float = 5.0) -> bool:
    """Move the WAL of a ``sqlite:///`` study into its main file; True when it all went in.

    Other back-ends: nothing to do (True). A reader still holding a snapshot leaves part
    of the log in place (False, logged): a later checkpoint or the last connection's close
    folds it in.
    """
    path = sqlite_path(url)
    if path is None or not path.exists():
        return True
    try:
        con = sqlite3.connect(path, timeout=timeout)
        try:
            busy, _, _ = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            con.close()
    except sqlite3.Error as e:
        log.warning("checkpoint of %s failed: %s", path, e)
        return False
    if busy:
        log.info("checkpoint of %s: a reader is still active, part of the log stays in %s-wal", path, path)
    return not busy


@dataclass(frozen=True)
class BackupResult:
    out: Path
    studies: dict[str, int]  # study name -> trials copied


def _tmp_beside(out: Path) -> Path:
    return out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"


def _sqlite_snapshot(src: Path, dst: Path) -> None:
    """SQLite's online backup: one consistent snapshot of every page, WAL included."""
    try:
        s = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=60)
        d = sqlite3.connect(dst)
        try:
            s.backup(d)
            d.execute("PRAGMA journal_mode=DELETE")  # the copy is one self-contained file
        finally:
            d.close()
            s.close()
    except sqlite3.Error as e:
        raise StorageError(f"backup of sqlite:///{src}: {e}") from None


def _copy_studies(url: str, names: list[str], dst: Path) -> None:
    import optuna

    from atml.storage.open import open_storage

    src = open_storage(url)
    target = optuna.storages.RDBStorage(f"sqlite:///{dst}")
    try:
        for name in names:
            optuna.copy_study(from_study_name=name, from_storage=src, to_storage=target)
    finally:
        target.engine.dispose()
    con = sqlite3.connect(dst)
    con.execute("PRAGMA journal_mode=DELETE")
    con.close()


def backup(url: str, out: str | Path, study: str | None = None) -> BackupResult:
    """Write a consistent SQLite copy of the study storage at ``url`` (or of one ``study``) to ``out``.

    Works while workers write. The copy is built beside ``out`` and renamed into place, so
    ``out`` is either the whole copy or absent; an existing ``out`` is refused.
    """
    import optuna

    from atml.storage.listing import study_names
    from atml.storage.open import open_storage

    out = Path(out)
    if out.exists():
        raise StorageError(f"backup: {out} already exists (choose a new file)")
    if not out.parent.is_dir():
        raise StorageError(f"backup: no such folder: {out.parent}")
    src_path = sqlite_path(url)
    if src_path is not None and not src_path.exists():
        raise StorageError(f"storage sqlite:///{src_path}: no such database file")
    names = study_names(open_storage(url))
    if study is not None:
        if study not in names:
            raise StorageError(f"backup: no study {study!r} in {redact(url)} (studies: {', '.join(names) or 'none'})")
        names = [study]
    tmp = _tmp_beside(out)
    try:
        if src_path is not None and study is None:
            _sqlite_snapshot(src_path, tmp)
        else:
            _copy_studies(url, names, tmp)
        copy = optuna.storages.RDBStorage(f"sqlite:///{tmp}")
        try:
            counts = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(copy, include_best_trial=False)}
        finally:
            copy.engine.dispose()
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return BackupResult(out=out, studies=counts)

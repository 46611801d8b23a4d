"""A copy of the study database is the study: WAL checkpoints and ``atml backup``."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time

import optuna
import pytest
from _helpers import small_space
from optuna.trial import TrialState

from atml import records
from atml.storage import open_storage


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


def _finished(db, study):
    s = optuna.load_study(study_name=study, storage=f"sqlite:///{db}")
    return [t for t in s.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


@pytest.mark.slow
def test_backup_during_a_search_and_the_main_file_after_it(tmp_path, write_space, atml_cmd):
    space = write_space(small_space("bk", n_trials=6, epochs=2))
    db = tmp_path / "studies" / "atml.db"
    url = f"sqlite:///{db}"
    proc = subprocess.Popen([*atml_cmd, "search", "--space", str(space), "--storage", url, "--workers", "1",
                             "--no-progress"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:  # wait until the search has finished a trial
            if db.exists():
                try:
                    if _finished(db, "bk"):
                        break
                except (KeyError, optuna.exceptions.OptunaError, sqlite3.Error, Exception):
                    pass
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(1)
        live = tmp_path / "live-copy.db"
        r = _run([*atml_cmd, "backup", "--storage", url, str(live)], cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "bk (" in r.stdout
        copy = optuna.load_study(study_name="bk", storage=f"sqlite:///{live}")
        assert len([t for t in copy.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) >= 1
        assert records.stored_space(copy.user_attrs) is not None
        # self-contained: no write-ahead log beside the copy
        assert sqlite3.connect(live).execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert not (tmp_path / "live-copy.db-wal").exists()
    finally:
        out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]

    # After the search: the main file alone (what a user mails) holds every trial.
    alone = tmp_path / "mailed" / "atml.db"
    alone.parent.mkdir()
    shutil.copyfile(db, alone)
    finished = _finished(alone, "bk")
    assert len(finished) == 6
    assert len(finished) == len(_finished(db, "bk"))


def test_backup_of_a_fresh_study_has_its_tables(tmp_path, atml_cmd):
    db = tmp_path / "a.db"
    url = f"sqlite:///{db}"
    study = optuna.create_study(study_name="s", storage=open_storage(url, create=True))
    study.set_user_attr(records.STOP, "done")
    study.add_trial(optuna.trial.create_trial(params={"x": 1.0}, distributions={
        "x": optuna.distributions.FloatDistribution(0, 2)}, value=0.5))
    out = tmp_path / "b.db"
    r = _run([*atml_cmd, "backup", "--storage", url, str(out)])
    assert r.returncode == 0, r.stderr
    copy = optuna.load_study(study_name="s", storage=f"sqlite:///{out}")
    assert [t.value for t in copy.trials] == [0.5]
    assert copy.user_attrs[records.STOP] == "done"


def test_backup_refuses_what_it_cannot_do_and_writes_nothing(tmp_path, atml_cmd):
    db = tmp_path / "a.db"
    url = f"sqlite:///{db}"
    optuna.create_study(study_name="s", storage=open_storage(url, create=True))
    existing = tmp_path / "taken.db"
    existing.write_text("keep me")
    cases = [
        (["--storage", url, str(existing)], "already exists"),
        (["--storage", url, "--study", "nope", str(tmp_path / "n.db")], "no study 'nope'"),
        (["--storage", f"sqlite:///{tmp_path / 'missing.db'}", str(tmp_path / "m.db")], "no such database file"),
        (["--storage", url, str(tmp_path / "no" / "dir.db")], "no such folder"),
    ]
    for args, text in cases:
        r = _run([*atml_cmd, "backup", *args])
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0], (args, r.stderr)
    assert existing.read_text() == "keep me"
    assert {p.name for p in tmp_path.iterdir()} <= {"a.db", "a.db-wal", "a.db-shm", "taken.db"}


@pytest.mark.postgres
def test_backup_of_a_postgresql_study(tmp_path, atml_cmd, pg_url):
    name = f"bk-{time.time_ns()}"
    study = optuna.create_study(study_name=name, storage=open_storage(pg_url, create=True))
    dist = {"x": optuna.distributions.FloatDistribution(0, 2)}
    for v in (0.1, 0.7):
        study.add_trial(optuna.trial.create_trial(params={"x": v}, distributions=dist, value=v))
    study.set_user_attr(records.METRIC, "f1")
    out = tmp_path / "pg.db"
    try:
        r = _run([*atml_cmd, "backup", "--storage", pg_url, "--study", name, str(out)])
        assert r.returncode == 0, r.stderr
        copy = optuna.load_study(study_name=name, storage=f"sqlite:///{out}")
        assert [t.value for t in copy.trials] == [0.1, 0.7]
        assert copy.user_attrs[records.METRIC] == "f1"
    finally:
        optuna.delete_study(study_name=name, storage=open_storage(pg_url))

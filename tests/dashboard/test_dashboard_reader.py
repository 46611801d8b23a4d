"""The cached reader: bulk reads equal Optuna's, refreshes see every change, no torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import optuna
from dash_helpers import make_study
from optuna.trial import TrialState

from atml.dashboard import sql
from atml.dashboard.reader import StudyReader
from atml.storage import open_storage
from atml.storage.optuna_internals import trial_id


def test_bulk_read_equals_get_all_trials(searched):
    storage = open_storage(searched.url)
    sid = storage.get_study_id_from_name(searched.study)
    reader = StudyReader(storage)
    want = storage.get_all_trials(sid, deepcopy=False)
    got = sql.bulk_trials(storage.engine, reader._tables, sid)
    assert got == want
    assert [trial_id(t) for t in got] == [trial_id(t) for t in want]
    some = [trial_id(want[0]), trial_id(want[-1])]
    assert sql.bulk_trials(storage.engine, reader._tables, sid, trial_ids=some) == [want[0], want[-1]]


def test_refresh_sees_new_running_and_finished_trials(sqlite_url):
    study = make_study(sqlite_url, "live", n=4)
    reader = StudyReader(open_storage(sqlite_url), refresh_seconds=0)
    s0 = reader.snapshot("live")
    assert len(s0.trials) == 4 and reader.snapshot("live").version == s0.version, "no change, same version"
    t = study.ask()
    t.suggest_float("train.lr", 1e-3, 5e-3, log=True)
    s1 = reader.snapshot("live")
    assert s1.version != s0.version and s1.counts["RUNNING"] == 1 and len(s1.trials) == 5
    t.report(0.7, 0)  # a running trial's new intermediate value is a change too
    s2 = reader.snapshot("live")
    assert s2.version != s1.version and s2.trial(4).intermediate_values == {0: 0.7}
    study.tell(t, 0.9)
    s3 = reader.snapshot("live")
    assert s3.trial(4).state == TrialState.COMPLETE and s3.trial(4).value == 0.9 and "RUNNING" not in s3.counts
    study.set_user_attr("atml.stop_reason", "stopped from dashboard")
    s4 = reader.snapshot("live")
    assert s4.version != s3.version and s4.ref.user_attrs["atml.stop_reason"] == "stopped from dashboard"
    assert reader.snapshot("live").trials == optuna.load_study(study_name="live", storage=sqlite_url).trials


def test_refresh_is_throttled(sqlite_url):
    study = make_study(sqlite_url, "thr", n=2)
    reader = StudyReader(open_storage(sqlite_url), refresh_seconds=3600)
    s0 = reader.snapshot("thr")
    study.add_trial(optuna.trial.create_trial(value=1.0))
    assert reader.snapshot("thr") is s0, "inside the refresh interval nothing is re-read"
    reader.invalidate("thr")
    assert len(reader.snapshot("thr").trials) == 3


def test_in_memory_storage_through_the_api():
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="mem")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    reader = StudyReader(storage)
    snap = reader.snapshot("mem")
    assert len(snap.trials) == 3 and reader.heartbeat_ages(snap) == {}
    (ov,) = reader.overview()
    assert ov.counts == {"COMPLETE": 3} and ov.best_value == min(t.value for t in study.trials)


def test_heartbeat_ages(sqlite_url):
    make_study(sqlite_url, "hb", n=1, running=1)
    storage = open_storage(sqlite_url)
    reader = StudyReader(storage)
    snap = reader.snapshot("hb")
    running = [t for t in snap.trials if t.state == TrialState.RUNNING][0]
    assert reader.heartbeat_ages(snap) == {}
    storage.record_heartbeat(trial_id(running))
    ages = reader.heartbeat_ages(snap)
    assert list(ages) == [running.number] and 0 <= ages[running.number] < 60


def test_dashboard_never_imports_torch(sqlite_url, tmp_path):
    make_study(sqlite_url, "nt", n=5, running=1, sizes=True)
    code = textwrap.dedent(f"""
        import sys, warnings
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
        from atml.dashboard import create_app
        import atml.cli.dashboard, atml.plots
        c = TestClient(create_app({sqlite_url!r}, token="t"))
        h = {{"Authorization": "Bearer t"}}
        urls = ["/", "/studies/nt", "/studies/nt/trials/0", "/api/studies", "/api/studies/nt/summary",
                "/api/studies/nt/trials?sort=value", "/api/studies/nt/trials/0"]
        urls += [f"/api/studies/nt/plots/{{k}}" for k in ("history", "intermediate", "parallel", "importance", "pareto")]
        urls += ["/api/studies/nt/trials/0/plots/curves", "/api/studies/nt/trials/0/plots/confusion"]
        for u in urls:
            assert c.get(u).status_code == 200, u
        r = c.post("/api/studies/nt/enqueue", json={{"params": {{"train.lr": 0.002}}}}, headers=h)
        assert r.status_code == 201, r.text
        assert c.post("/api/studies/nt/stop", headers=h).status_code == 200
        heavy = sorted(m for m in ("torch", "onnx", "onnxruntime") if m in sys.modules)
        print("HEAVY", heavy)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "HEAVY []" in r.stdout, r.stdout

"""Heartbeats through the gRPC storage proxy and the proxy's stale-trial sweep; the one-key
study attribute read behind the per-epoch stop check.

Real SQLite files, a real ``atml storage-proxy`` process and a real ``atml worker``
process behind it on the PostgreSQL server (tests marked ``postgres``).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
import yaml
from _helpers import small_space, stop_process
from optuna.storages import InMemoryStorage
from optuna.trial import TrialState

from atml import records
from atml.storage import open_storage
from atml.storage.optuna_internals import study_id, trial_id
from atml.storage.proxy import StaleTrialSweep, sweep_interval
from atml.storage.resilient import HEARTBEAT_RELAY, ResilientStorage, study_user_attr

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'atml.db'}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _heartbeat_rows(storage: ResilientStorage) -> dict[int, object]:
    with storage.engine.connect() as c:
        return dict(c.execute(sa.text("SELECT trial_id, heartbeat FROM trial_heartbeats")).all())


# --------------------------------------------------------------------------- one attribute


def test_one_study_attribute_is_read_alone_and_agrees_with_the_full_read(url: str):
    storage = open_storage(url, create=True)
    study = optuna.create_study(storage=storage, study_name="s")
    study.set_user_attr(records.SPACE, {"raw": {"big": list(range(500))}})
    assert study_user_attr(study, records.STOP) is None and records.read_stop_reason(study) is None
    study.set_user_attr(records.STOP, "stopped from the dashboard")
    assert storage.get_study_user_attr(study_id(study), records.STOP) == "stopped from the dashboard"
    assert records.read_stop_reason(study) == records.stop_reason(study.user_attrs) == "stopped from the dashboard"
    assert study_user_attr(study, records.SPACE) == study.user_attrs[records.SPACE]
    study.set_user_attr(records.STOP, None)  # how a resumed study clears it
    assert records.read_stop_reason(study) is None
    # a storage that is not atml's (an Optuna study made directly) reads through the study
    plain = optuna.create_study(storage=InMemoryStorage())
    plain.set_user_attr(records.STOP, "done")
    assert records.read_stop_reason(plain) == "done"


# --------------------------------------------------------------------------- heartbeat relay


def test_a_relaying_client_sends_heartbeats_as_the_reserved_attribute():
    backend = InMemoryStorage()
    st = ResilientStorage(backend, retry_wait=0, relay_heartbeat=2)
    assert st.get_heartbeat_interval() == 2 and st.get_heartbeat_stale_trial_callback() is None
    sid = st.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "r")
    tid = st.create_new_trial(sid)
    st.record_heartbeat(tid)
    assert backend.get_trial(tid).system_attrs == {HEARTBEAT_RELAY: True}
    assert st._get_stale_trial_ids(sid) == [], "the proxy, not the client, fails stale trials"
    assert ResilientStorage(InMemoryStorage(), retry_wait=0).get_heartbeat_interval() is None


def test_a_relayed_heartbeat_is_recorded_as_one_and_the_sweep_fails_a_stale_trial(url: str, caplog):
    # The storage the proxy serves: heartbeats on, grace 1 s.
    storage = open_storage(url, create=True, heartbeat=True, heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage, study_name="sweep", direction="maximize")
    with pytest.warns(UserWarning, match="[Hh]eartbeat"):
        live = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    live_id = storage.get_trial_id_from_study_id_trial_number(study_id(study), live.number)
    dead_id = storage.get_trial_id_from_study_id_trial_number(study_id(study), dead.number)
    for tid in (live_id, dead_id):
        storage.set_trial_system_attr(tid, HEARTBEAT_RELAY, True)  # as the proxy's servicer passes it on
    assert set(_heartbeat_rows(storage)) == {live_id, dead_id}
    assert HEARTBEAT_RELAY not in storage.get_trial(dead_id).system_attrs, "a heartbeat, not an attribute"
    time.sleep(2.5)  # > grace + 1: SQLite keeps heartbeats to the second
    storage.set_trial_system_attr(live_id, HEARTBEAT_RELAY, True)  # the live worker beats on
    sweep = StaleTrialSweep(storage, every=60)
    with caplog.at_level("WARNING", logger="atml.storage"):
        sweep.sweep()
    states = {t.number: t.state for t in study.get_trials()}
    assert states[live.number] == TrialState.RUNNING
    assert states[dead.number] == TrialState.FAIL
    retry = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING and retry[0].params == dead.params
    assert f"trial {dead.number} of study sweep: no heartbeat for 1 s" in caplog.text
    assert sweep_interval(30) == 10 and sweep_interval(3) == 1 and sweep_interval(12) == 4


# --------------------------------------------------------------------------- real processes


def _worker_space(tmp_path: Path, name: str) -> Path:
    sp = small_space(name, n_trials=3, epochs=400)
    sp["study"]["pruner"] = {"type": "none"}
    sp["train"]["patience"] = 1000  # every trial trains long enough to be killed mid-way
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(sp, sort_keys=False))
    return p


@pytest.mark.postgres
@pytest.mark.slow
def test_a_worker_killed_behind_the_proxy_leaves_no_running_trial(pg_url: str, tmp_path: Path):
    """A real proxy process in front of PostgreSQL and a real worker process through it:
    the worker's trial outlives the grace period while it heartbeats through the proxy;
    SIGKILL the worker, and the proxy fails the trial and queues its retry."""
    pytest.importorskip("grpc")
    from atml.config import load_space
    from atml.search.coordinator import create_or_resume

    name = f"proxy-hb-{uuid.uuid4().hex[:8]}"
    create_or_resume(load_space(str(_worker_space(tmp_path, name))), pg_url)
    direct = optuna.load_study(study_name=name, storage=open_storage(pg_url))
    grace, port = 8, _free_port()  # heartbeats every 1 s: a loaded 2-core machine may delay a few
    proxy_log, worker_log = tmp_path / "proxy.log", tmp_path / "worker.log"
    with open(proxy_log, "wb") as fh:
        proxy = subprocess.Popen([sys.executable, "-m", "atml", "storage-proxy", "--storage", pg_url,
                                  "--port", str(port), "--grace", str(grace)], stdout=fh, stderr=subprocess.STDOUT)
    worker = None
    try:
        open_storage(f"grpc://127.0.0.1:{port}", connect_wait=30)  # the proxy answers
        with open(worker_log, "wb") as fh:
            worker = subprocess.Popen([sys.executable, "-m", "atml", "worker", "--storage", f"grpc://127.0.0.1:{port}",
                                       "--study", name, "--artifacts", str(tmp_path / "art"), "--heartbeat", "1"],
                                      stdout=fh, stderr=subprocess.STDOUT, cwd=tmp_path)
        # A trial in training for longer than the grace period plus a sweep: alive through the proxy.
        victim, seen = None, {}
        deadline = time.time() + 150
        while victim is None and time.time() < deadline:
            assert worker.poll() is None, worker_log.read_text()[-3000:]
            time.sleep(0.3)
            for t in direct.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if t.intermediate_values:
                    first = seen.setdefault(t.number, time.time())
                    if time.time() - first > grace + 2 * sweep_interval(grace):
                        victim = t
        assert victim is not None, "no trial stayed in training long enough: " + worker_log.read_text()[-3000:]
        assert trial_id(victim) in _heartbeat_rows(direct_storage := open_storage(pg_url)), \
            "the worker's heartbeats reached the database's heartbeat table through the proxy"
        assert not any(t.state == TrialState.FAIL for t in direct.get_trials(deepcopy=False))
        worker.kill()
        t_kill = time.time()
        worker.wait()
        state, after = TrialState.RUNNING, None
        while time.time() < t_kill + 40:
            state = direct_storage.get_trial(trial_id(victim)).state
            if state != TrialState.RUNNING:
                after = time.time() - t_kill
                break
            time.sleep(0.2)
        assert state == TrialState.FAIL, f"still {state.name} 40 s after SIGKILL"
        print(f"\nkilled trial {victim.number}: FAIL {after:.1f} s after SIGKILL (grace {grace} s)")
        assert grace - 1.5 <= after < grace + 2 * sweep_interval(grace) + 5, after
        # The sweep turns the trial FAIL first and queues its retry after: wait for the retry.
        retry, until = [], time.time() + 20
        while not retry and time.time() < until:
            trials = direct.get_trials(deepcopy=False)
            retry = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
            if not retry:
                time.sleep(0.2)
        assert not any(t.state == TrialState.RUNNING for t in trials)
        assert len(retry) == 1 and retry[0].state == TrialState.WAITING and retry[0].params == victim.params
        assert HEARTBEAT_RELAY not in direct_storage.get_trial(trial_id(victim)).system_attrs
        time.sleep(0.5)
        assert f"trial {victim.number} of study {name}: no heartbeat for {grace} s" in proxy_log.read_text()
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        stop_process(proxy)
        optuna.delete_study(study_name=name, storage=open_storage(pg_url))

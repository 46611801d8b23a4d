"""End-to-end `atml search` on real SQLite files with real worker processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest
from _helpers import small_space

from atml.storage import open_storage

pytestmark = pytest.mark.slow


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


def _trials(db, study):
    s = optuna.load_study(study_name=study, storage=open_storage(f"sqlite:///{db}"))
    return s.get_trials(deepcopy=False)


def test_search_two_workers_then_resume(tmp_path, write_space, atml_cmd):
    # 6 trials: a worker that starts a few seconds late on a loaded machine still gets some
    space = write_space(small_space("e2e", n_trials=6, epochs=2))
    db = tmp_path / "studies" / "atml.db"
    r = _run([*atml_cmd, "search", "--space", str(space), "--storage", f"sqlite:///{db}",
              "--workers", "2", "--no-progress"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "best trial #" in r.stdout and "checkpoint:" in r.stdout and "n_trials reached (6)" in r.stdout
    # no silent start: one line per stage on stderr, before the workers' first trial
    for stage in ("checking data synthetic ...", "study e2e created; 2 workers starting"):
        assert stage in r.stderr, r.stderr[-2000:]
    assert "synthetic ECG" in r.stdout  # the demo says it is one
    trials = _trials(db, "e2e")
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) + sum(t.state == optuna.trial.TrialState.PRUNED for t in trials) == 6
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2, "both worker processes ran trials"
    for t in complete:
        m = t.user_attrs["metrics"]
        assert set(m) >= {"f1", "accuracy", "precision", "recall", "auroc"}
        assert t.value == pytest.approx(m["f1"])
        assert (tmp_path / "studies" / "e2e" / t.user_attrs["checkpoint"]).is_file()
        assert len(t.intermediate_values) >= 1
    # journal mode stays WAL so readers never block writers
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    # re-running the finished study says the budget is spent and how to raise it, and runs nothing
    r = _run([*atml_cmd, "search", "--space", str(space), "--storage", f"sqlite:///{db}",
              "--workers", "2", "--no-progress"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "budget is already spent (n_trials reached (6))" in r.stderr and "--n-trials" in r.stderr
    assert "best trial #" in r.stdout
    assert len(_trials(db, "e2e")) == len(trials)

    # resume: the budget counts what is done, so raising it to 8 runs 2 more trials
    r = _run([*atml_cmd, "search", "--space", str(space), "--storage", f"sqlite:///{db}",
              "--workers", "2", "--no-progress", "--n-trials", "8"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    trials = _trials(db, "e2e")
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == 8
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]

    r = _run([*atml_cmd, "studies", "--storage", f"sqlite:///{db}"])
    assert r.returncode == 0 and "e2e" in r.stdout and "n_trials reached (8)" in r.stdout


def test_changed_space_does_not_resume(tmp_path, write_space, atml_cmd):
    db = tmp_path / "s.db"
    space = write_space(small_space("chg", n_trials=1, epochs=1))
    assert _run([*atml_cmd, "search", "--space", str(space), "--storage", f"sqlite:///{db}",
                 "--workers", "1", "--no-progress"]).returncode == 0
    changed = small_space("chg", n_trials=1, epochs=1)
    changed["train"]["lr"] = 0.01
    space = write_space(changed)
    r = _run([*atml_cmd, "search", "--space", str(space), "--storage", f"sqlite:///{db}", "--no-progress"])
    assert r.returncode == 2
    assert "already exists with a different search space" in r.stderr


def test_same_seed_same_parameters(tmp_path, write_space, atml_cmd):
    space = small_space("seeded", n_trials=4, epochs=1)
    space["study"]["sampler"] = {"type": "tpe", "seed": 123, "n_startup_trials": 2}
    p = write_space(space)
    params = []
    for run in ("a", "b"):
        db = tmp_path / f"{run}.db"
        r = _run([*atml_cmd, "search", "--space", str(p), "--storage", f"sqlite:///{db}",
                  "--workers", "1", "--no-progress"])
        assert r.returncode == 0, r.stderr[-2000:]
        params.append([t.params for t in sorted(_trials(db, "seeded"), key=lambda t: t.number)])
    assert params[0] == params[1]
    assert len({str(p) for p in params[0]}) == 4, "trials differ from each other"
    db = tmp_path / "c.db"
    assert _run([*atml_cmd, "search", "--space", str(p), "--storage", f"sqlite:///{db}",
                 "--workers", "1", "--no-progress", "--seed", "124"]).returncode == 0
    assert [t.params for t in sorted(_trials(db, "seeded"), key=lambda t: t.number)] != params[0]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_leaves_no_running_trial(tmp_path, write_space, atml_cmd, sig):
    space = small_space("sigint", n_trials=50, epochs=30)
    space["train"]["patience"] = 30
    space["study"]["pruner"] = {"type": "none"}  # long trials: a signal lands mid-training
    space["data"]["synthetic"] = {"subjects": 12, "per_subject": 60, "seed": 2}
    p = write_space(space)
    db = tmp_path / "s.db"
    proc = subprocess.Popen([*atml_cmd, "search", "--space", str(p), "--storage", f"sqlite:///{db}",
                             "--workers", "2", "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            # as a non-interactive shell starts a background job: SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.time() + 180
        running = []
        while time.time() < deadline:
            time.sleep(1)
            if db.exists():  # read-only: the poll must not race the search creating the schema
                try:
                    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                        running = con.execute("SELECT number FROM trials WHERE state = 'RUNNING'").fetchall()
                except sqlite3.Error:
                    running = []
                if running:
                    break
        assert running, "no trial started"
        time.sleep(2)
        t0 = time.time()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
        assert time.time() - t0 < 60
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    trials = _trials(db, "sigint")
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    stopped = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert stopped and all("interrupted" in t.user_attrs.get("reason", "") or "stopped" in t.user_attrs.get("reason", "") for t in stopped)
    r = _run([*atml_cmd, "studies", "--storage", f"sqlite:///{db}"])
    assert "interrupted" in r.stdout


def test_bad_data_exit_2_names_file_and_creates_no_study(tmp_path, txt_sample, write_space, atml_cmd):
    bad = tmp_path / "bad"
    bad.mkdir()
    files = sorted(txt_sample.iterdir())[:5]
    for f in files:
        (bad / f.name).write_text(f.read_text())
    victim = bad / files[2].name
    lines = victim.read_text().splitlines()
    lines[10] = "abc"
    victim.write_text("\n".join(lines) + "\n")
    space = write_space(small_space("bd", n_trials=1, epochs=1))
    db = tmp_path / "studies" / "atml.db"
    mark = f"bd-{os.getpid()}-{time.time_ns()}"
    r = _run([*atml_cmd, "search", "--space", str(space), "--storage", f"sqlite:///{db}",
              "--data", str(bad), "--no-progress"], env={**os.environ, "ATML_TEST_MARK": mark})
    assert r.returncode == 2
    # the stage it was at, then the one error line
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0] == f"checking data {bad} ..." and lines[1].startswith("atml: error:"), r.stderr
    assert victim.name in lines[1]
    assert not db.exists()
    # the worker processes started early (importing torch while the data was checked) are gone
    assert _processes_with(f"ATML_TEST_MARK={mark}") == []
    assert not (tmp_path / "studies" / "bd").exists()  # no study folder, no worker logs
    r = _run([*atml_cmd, "search", "--space", str(space), "--storage", f"sqlite:///{db}",
              "--data", str(tmp_path / "missing"), "--no-progress"])
    assert r.returncode == 2 and "missing" in r.stderr and not db.exists()


def test_workers_zero_creates_the_study_for_workers_elsewhere(tmp_path, write_space, atml_cmd):
    space = write_space(small_space("z", n_trials=2, epochs=1))
    url = f"sqlite:///{tmp_path}/z.db"
    r = _run([*atml_cmd, "search", "--space", str(space), "--storage", url, "--workers", "0", "--no-progress"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].strip() == f"workers join with: atml worker --storage {url} --study z"
    assert _trials(tmp_path / "z.db", "z") == []  # created, nothing run
    r = _run([*atml_cmd, "worker", "--storage", url, "--study", "z", "--quiet"])
    assert r.returncode == 0, r.stderr[-2000:]
    states = [t.state.name for t in _trials(tmp_path / "z.db", "z")]
    assert len(states) == 2 and set(states) <= {"COMPLETE", "PRUNED"}


def test_processes_opening_a_new_database_at_once_all_succeed(tmp_path):
    # Each creates Optuna's tables and stamps the schema version; the losers of that race
    # ("table ... already exists", a duplicate alembic_version row) open it again.
    code = ("import sys, time; from atml.storage import open_storage; "
            "time.sleep(max(0, float(sys.argv[2]) - time.time())); "
            "open_storage('sqlite:///' + sys.argv[1], create=True); print('ok')")
    for r in range(4):
        db = tmp_path / f"race{r}.db"
        start = str(time.time() + 3)
        procs = [subprocess.Popen([sys.executable, "-c", code, str(db), start], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0 and out.strip() == "ok", err[-1000:]


def _processes_with(env_entry: str) -> list[int]:
    """PIDs of live processes whose environment holds ``env_entry``."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if env_entry.encode() in f.read().split(b"\0"):
                    with open(f"/proc/{d}/stat") as st:
                        if st.read().split(") ", 1)[1][0] != "Z":
                            found.append(int(d))
        except OSError:
            continue
    return found


def test_python_dash_m_and_console_script_agree(atml_cmd):
    r = _run([*atml_cmd, "--version"])
    exe = os.path.join(os.path.dirname(sys.executable), "atml")
    r2 = _run([exe, "--version"]) if os.path.exists(exe) else r
    assert r.returncode == 0 and r.stdout.strip().startswith("atml ") and r.stdout == r2.stdout


def test_over_budget_trial_is_one_warning_line_not_a_traceback():
    """Two workers racing for the last slot is normal at the end of a search: the loser's trial is
    failed with a one-line warning; a traceback in its log would read as a crash."""
    import io
    import logging

    from atml.search.worker import OverBudget

    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    logging.getLogger("optuna").addHandler(handler)
    try:
        study = optuna.create_study()

        def over(trial):
            raise OverBudget(f"trial {trial.number} is past the budget of 0")

        study.optimize(over, n_trials=1, catch=(OverBudget,))
    finally:
        logging.getLogger("optuna").removeHandler(handler)
    out = buf.getvalue()
    assert "OverBudget('trial 0 is past the budget of 0')" in out and "Traceback" not in out
    assert study.trials[0].state == optuna.trial.TrialState.FAIL


def test_summary_lists_trials_skipped_before_training_apart(capsys):
    """A size cap rejects points before training; they are PRUNED for the sampler but not
    budget, so the summary (like the progress bar) shows them apart from pruned trials."""
    from atml.cli.search import print_summary
    from atml.search.coordinator import SearchResult

    res = SearchResult(study="s", storage="sqlite:///x.db", artifacts="studies", counts={"COMPLETE": 4, "PRUNED": 5},
                       best=None, split={}, data_source="", stop_reason="n_trials reached (6)", wall_seconds=3.0,
                       skipped=3)
    print_summary(res)
    out = capsys.readouterr().out
    assert "trials: complete 4, pruned 2, skipped (size cap, avoid list) 3  in 3 s  [n_trials reached (6)]" in out

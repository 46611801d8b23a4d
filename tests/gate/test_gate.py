"""The gate: metric-named folders, the shared avoid list, stop rules (ATML semantics)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import optuna
import pytest
from _helpers import small_space

from atml import gate as g
from atml.config import GateSettings, Param, space_from_dict
from atml.data import DataSpec
from atml.search.strategy import make_pruner
from atml.storage import open_storage
from atml.trial import Objective, prepare_data

GOOD, BAD, NEAR_BAD = 4e-3, 1e-7, 1.1e-7


def gate_space(name="gate", n_trials=5, **gate):
    raw = small_space(name, n_trials=n_trials, epochs=5)
    raw["study"]["pruner"] = {"type": "none"}
    raw["model"] = {"families": {"afnet": {"width": 8, "depth": 3}}}
    raw["train"]["lr"] = {"type": "float", "low": 1e-7, "high": 1e-2, "log": True}
    raw["data"]["synthetic"] = {"subjects": 12, "per_subject": 40, "seed": 3}
    raw["gate"] = {"pass": 0.55, "avoid_below": 0.55, "keep": 2, **gate}
    return raw


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    spec = DataSpec(synthetic_subjects=12, synthetic_per_subject=40, synthetic_seed=3, drop_labels=("UNK",))
    return prepare_data(spec, tmp_path_factory.mktemp("cache"))


def _run_enqueued(space, synthetic, tmp_path, db):
    study = optuna.create_study(direction="maximize", storage=f"sqlite:///{tmp_path}/{db}",
                                pruner=make_pruner(space.study, 3))
    for lr in (GOOD, 3e-3, BAD, NEAR_BAD, 2e-3):
        study.enqueue_trial({"train.lr": lr})
    study.optimize(Objective(space, synthetic, tmp_path), n_trials=5)
    return study


def _lo(t):
    return min(t.user_attrs["metrics"][m] for m in ("f1", "accuracy", "precision", "recall"))


def test_folders_avoid_list_and_skip(synthetic, tmp_path):
    # Training is deterministic per (seed, trial number): a first pass without the gate
    # tells where to put the threshold so the barely trained lr fails and others pass.
    raw = gate_space()
    del raw["gate"]
    probe = _run_enqueued(space_from_dict(raw), synthetic, tmp_path, "probe.db").trials
    best = max(_lo(t) for t in probe)
    assert _lo(probe[2]) < best
    t = (_lo(probe[2]) + best) / 2
    space = space_from_dict(gate_space(**{"pass": t, "avoid_below": t}))
    study = _run_enqueued(space, synthetic, tmp_path, "g.db")
    trials = study.trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    entries = g.avoid_entries(study.user_attrs)
    failing = [tr for tr in done if min(tr.user_attrs["metrics"][m] for m in space.gate.metrics) < t]
    passing = [tr for tr in done if min(tr.user_attrs["metrics"][m] for m in space.gate.metrics) >= t]
    assert 2 in [tr.number for tr in failing], "the barely trained learning rate fails the gate"
    assert [_lo(tr) for tr in done] == [_lo(probe[tr.number]) for tr in done], "deterministic training"
    assert len(passing) >= 1, (t, [tr.user_attrs["metrics"] for tr in done])
    # the avoid list holds exactly the failing points
    assert [(e.trial, e.params) for e in entries] == [(t.number, t.params) for t in failing]
    # a point inside the neighbourhood is skipped without training
    near = trials[3]
    assert near.state == optuna.trial.TrialState.PRUNED
    assert near.intermediate_values == {}
    assert near.user_attrs["avoided_by"] == 2 and near.user_attrs["reason"].startswith("avoided")
    assert (near.datetime_complete - near.datetime_start).total_seconds() < 1.0
    # the search's progress counts what the budget counts: the skipped point apart
    from atml.search.progress import poll

    state = poll(study, [])
    assert state["skipped"] == 1 and state["used"] == len(trials) - 1
    # folders: named from the metrics, best `keep` kept, each complete
    gate_dir = tmp_path / "gate" / "gate"
    recs = g.gate_records(study.user_attrs)
    ranked = sorted(passing, key=lambda t: (-t.user_attrs["gate"]["lo"], -t.user_attrs["gate"]["hi"]))
    assert [r["trial"] for r in recs] == [t.number for t in ranked[:2]]
    assert all(t.user_attrs["gate_result"] == "avoided" for t in failing)
    folders = sorted(p.name for p in gate_dir.iterdir() if not p.name.startswith("."))
    assert folders == sorted(r["folder"] for r in recs)
    for r in recs:
        t = trials[r["trial"]]
        m = t.user_attrs["metrics"]
        vals = [m[k] for k in ("f1", "accuracy", "precision", "recall")]
        assert r["folder"].split("-t")[0] == f"{int(100 * max(vals))}-{int(100 * min(vals))}"
        folder = gate_dir / r["folder"]
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            ["model.onnx", "model.pt", "evaluation_metrics.txt", "metrics.json", "params.yaml"])
        txt = (folder / "evaluation_metrics.txt").read_text()
        assert f"F1 Score: {m['f1']:.4f}" in txt and f"Recall: {m['recall']:.4f}" in txt
        assert json.loads((folder / "metrics.json").read_text())["split"] == "validation"
        import numpy as np
        import onnxruntime as ort

        sess = ort.InferenceSession(str(folder / "model.onnx"))
        out = sess.run(None, {"ecg": np.zeros((3, 1, 1250), np.float32)})[0]
        assert out.shape == (3, 2)


def test_neighbourhood_rules():
    lr = Param("train.lr", "float", low=1e-5, high=1e-1, log=True)
    width = Param("afnet.width", "int", low=4, high=24, step=4)
    depth = Param("afnet.depth", "int", low=2, high=6)
    fam = Param("model.family", "categorical", choices=("afnet", "sepnet"))
    params = {p.name: p for p in (lr, width, depth, fam)}
    e = g.AvoidEntry(0, {"train.lr": 1e-3, "afnet.width": 12, "model.family": "afnet"}, "x")
    base = {"train.lr": 1e-3, "afnet.width": 12, "model.family": "afnet", "afnet.depth": 3}
    assert g.matches(base, e, params, None)
    # width has step 4: two steps (4 and 8 away... 8 = two steps) still inside, three steps not
    assert g.matches({**base, "afnet.width": 20}, e, params, None)
    assert not g.matches({**base, "afnet.width": 24}, e, params, None)
    # lr is log: 2 % of the log range is a factor of ~1.2
    assert g.matches({**base, "train.lr": 1.15e-3}, e, params, None)
    assert not g.matches({**base, "train.lr": 1.5e-3}, e, params, None)
    assert g.matches({**base, "train.lr": 1.5e-3}, e, params, 0.05)
    # categorical must be equal; a point without the entry's parameter is elsewhere
    assert not g.matches({**base, "model.family": "sepnet"}, e, params, None)
    assert not g.matches({"train.lr": 1e-3, "model.family": "sepnet", "sepnet.width": 12}, e, params, None)
    assert g.param_radius(depth, None) == pytest.approx(2 / 4)


def test_stop_rules_and_folder_names():
    assert g.folder_name(0.957, 0.943) == "95-94"
    assert g.folder_name(1.0, 0.97) == "100-97"
    gs = GateSettings(stop_at=0.97, patience_trials=3)
    assert g.stop_reason(gs, [(0, 0.9), (1, 0.95)]) is None
    assert "stop_at reached: trial 2" in g.stop_reason(gs, [(0, 0.9), (1, 0.95), (2, 0.971)])
    assert "patience_trials reached" in g.stop_reason(gs, [(0, 0.9), (1, 0.8), (2, 0.85), (3, 0.9)])
    assert g.stop_reason(gs, [(0, 0.9), (1, 0.8), (2, 0.85), (3, 0.91)]) is None
    assert g.stop_reason(GateSettings(), [(0, math.nan)]) is None


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


@pytest.mark.slow
def test_two_worker_processes_share_the_avoid_list(tmp_path, write_space, atml_cmd):
    from atml.config import load_space
    from atml.search.coordinator import create_or_resume

    p = write_space(gate_space("shared", n_trials=1, **{"pass": 0.99, "avoid_below": 0.99}))
    url = f"sqlite:///{tmp_path}/s.db"
    create_or_resume(load_space(p), url)
    study = optuna.load_study(study_name="shared", storage=open_storage(url))
    study.enqueue_trial({"train.lr": BAD})
    r = _run([*atml_cmd, "search", "--space", str(p), "--storage", url, "--workers", "1", "--no-progress"])
    assert r.returncode in (0, 1), r.stderr[-2000:]
    study.enqueue_trial({"train.lr": NEAR_BAD})
    r = _run([*atml_cmd, "search", "--space", str(p), "--storage", url, "--workers", "1", "--no-progress",
              "--n-trials", "2"])
    assert r.returncode == 0, r.stderr[-2000:]
    trials = study.get_trials()
    bad, near = trials[0], trials[1]
    assert [e.trial for e in g.avoid_entries(study.user_attrs)][0] == 0
    assert near.user_attrs["worker"] != bad.user_attrs["worker"], "a different worker process"
    assert near.state == optuna.trial.TrialState.PRUNED and near.intermediate_values == {}
    assert near.user_attrs["avoided_by"] == 0
    # the skipped point did not use up the budget: two trained trials finished
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == 2

    out = _run([*atml_cmd, "avoid", "list", "--storage", url, "--study", "shared"]).stdout
    assert "trial    0" in out and "avoid_below" in out
    exported = _run([*atml_cmd, "avoid", "export", "--storage", url, "--study", "shared"]).stdout
    assert exported.splitlines()[0] == str(BAD), "one searched parameter: ATML's avoid.txt layout"
    assert len(exported.splitlines()) == len(g.avoid_entries(study.user_attrs))
    assert "cleared" in _run([*atml_cmd, "avoid", "clear", "--storage", url, "--study", "shared"]).stdout
    assert g.avoid_entries(study.user_attrs) == []


def _trained_lr_space(write_space, tmp_path, raw, low):
    """The space written with learning rates that train (``low`` to 5e-3), and a SQLite URL."""
    raw["train"]["lr"] = {"type": "float", "low": low, "high": 5e-3, "log": True}
    return write_space(raw), f"sqlite:///{tmp_path}/s.db"


@pytest.mark.slow
def test_stop_at_ends_both_workers(tmp_path, write_space, atml_cmd):
    p, url = _trained_lr_space(write_space, tmp_path, gate_space("stopat", n_trials=30, stop_at=0.0), 1e-3)
    t0 = time.time()
    r = _run([*atml_cmd, "search", "--space", str(p), "--storage", url, "--workers", "2", "--no-progress"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "stop_at reached" in r.stdout
    trials = optuna.load_study(study_name="stopat", storage=open_storage(url)).get_trials()
    assert len(trials) < 30 and len({t.user_attrs.get("worker") for t in trials}) <= 2
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    assert time.time() - t0 < 300
    assert "stop_at reached" in _run([*atml_cmd, "studies", "--storage", url]).stdout


@pytest.mark.slow
def test_gate_sync_materialises_folders(tmp_path, write_space, atml_cmd):
    p, url = _trained_lr_space(write_space, tmp_path, gate_space("sync", n_trials=2, keep=1), 2e-3)
    store = tmp_path / "shared-store"
    r = _run([*atml_cmd, "search", "--space", str(p), "--storage", url, "--workers", "1", "--no-progress",
              "--artifact-store", str(store)])
    assert r.returncode == 0, r.stderr[-2000:]
    listed = _run([*atml_cmd, "gate", "list", "--storage", url, "--study", "sync", "--json"]).stdout
    recs = json.loads(listed)
    assert len(recs) == 1
    other = tmp_path / "other-machine"
    r = _run([*atml_cmd, "gate", "sync", "--storage", url, "--study", "sync", "--artifacts", str(other),
              "--artifact-store", str(store)])
    assert r.returncode == 0, r.stderr
    synced = other / "sync" / "gate" / recs[0]["folder"]
    original = tmp_path / "sync" / "gate" / recs[0]["folder"]
    for f in ("model.onnx", "model.pt", "evaluation_metrics.txt", "metrics.json", "params.yaml"):
        assert (synced / f).read_bytes() == (original / f).read_bytes()


def test_killed_writer_leaves_no_partial_folder(tmp_path):
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from atml.gate import file_folder
        def slow(p):
            p.write_text("half")
            print("writing", flush=True)
            time.sleep(60)
        file_folder(Path({str(tmp_path)!r}), "95-94", 3, {{"metrics.json": lambda p: p.write_text("{{}}"),
                                                         "model.onnx": slow}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    names = [p.name for p in tmp_path.iterdir()]
    assert "95-94" not in names and all(n.startswith(".tmp-") for n in names)
    assert g.clean_partial(tmp_path, older_than=0) == len(names)
    assert list(tmp_path.iterdir()) == []

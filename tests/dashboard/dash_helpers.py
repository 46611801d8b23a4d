"""Plain helpers of the dashboard tests (fixtures are in conftest.py): real searches in
the background, studies written with optuna directly, PostgreSQL databases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import yaml
from _helpers import small_space

from atml.storage import open_storage

with warnings.catch_warnings():  # starlette's note on httpx, once at import: not about our code
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

__all__ = ["PG_SERVER", "TOKEN", "Searched", "TestClient", "pg_available", "need_pg", "admin_sql", "start_search",
           "finish_search", "decorate", "make_study", "wait_for"]

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
TOKEN = "t0ken-for-tests"


@dataclass(frozen=True)
class Searched:
    """A study written by a real ``atml search`` run."""

    backend: str
    url: str
    artifacts: Path
    study: str


def pg_available() -> bool:
    import sqlalchemy as sa

    try:
        eng = sa.create_engine(f"{PG_SERVER}/postgres", connect_args={"connect_timeout": 3})
        with eng.connect():
            pass
        eng.dispose()
        return True
    except Exception:
        return False


def need_pg() -> None:
    if not pg_available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL on 127.0.0.1:5432 is required in CI")
        pytest.skip("PostgreSQL on 127.0.0.1:5432 is not running")


def admin_sql(sql: str) -> None:
    import sqlalchemy as sa

    eng = sa.create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(sa.text(sql))
    eng.dispose()


def start_search(folder: Path, url: str, study: str, *, n_trials: int = 3, epochs: int = 2, workers: int = 1,
                 artifacts: Path | None = None, space: dict | None = None) -> subprocess.Popen:
    """``atml search`` on synthetic data, in the background (stdout/stderr to folder/search.log)."""
    folder.mkdir(parents=True, exist_ok=True)
    sp = folder / f"{study}.yaml"
    sp.write_text(yaml.safe_dump(space or small_space(study, n_trials=n_trials, epochs=epochs), sort_keys=False))
    cmd = [sys.executable, "-m", "atml", "search", "--space", str(sp), "--storage", url, "--workers", str(workers),
           "--no-progress"]
    if artifacts is not None:
        cmd += ["--artifacts", str(artifacts)]
    log = open(folder / f"{study}-search.log", "wb")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env)


def finish_search(proc: subprocess.Popen, folder: Path, study: str) -> None:
    rc = proc.wait(timeout=300)
    if rc != 0:
        log = (folder / f"{study}-search.log").read_text(errors="replace")[-3000:]
        pytest.fail(f"atml search exited with {rc}:\n{log}")


def decorate(url: str, study: str, artifacts: Path) -> None:
    """What the gate will add: one gate folder with files on disk, one removed, an avoid entry."""
    s = optuna.load_study(study_name=study, storage=open_storage(url))
    done = [t for t in s.trials if t.state == optuna.trial.TrialState.COMPLETE]
    t = done[0]
    m = t.user_attrs["metrics"]
    folder = f"{int(m['f1'] * 100)}-{int(m['accuracy'] * 100)}"
    gate = artifacts / study / "gate" / folder
    gate.mkdir(parents=True, exist_ok=True)
    (gate / "model.onnx").write_bytes(b"onnx-bytes-for-test")
    (gate / "trial.json").write_text(json.dumps({"trial": t.number}))
    s.set_user_attr(f"atml.gate.{folder}", json.dumps({"folder": folder, "trial": t.number, "metrics": m,
                                                       "files": ["model.onnx", "trial.json", "missing.bin"]}))
    s.set_user_attr("atml.gate.00-00", None)  # removed folder: not shown
    bad = s.trials[-1]
    s.set_user_attr(f"atml.avoid.{bad.number}", json.dumps(
        {"trial": bad.number, "params": bad.params, "reason": "f1 below avoid_below 0.9", "metrics": {"f1": 0.1}}))
    (artifacts / "secret.txt").write_text("outside the study")
    (artifacts / study / "logs").mkdir(parents=True, exist_ok=True)


def make_study(url: str, name: str, *, n: int = 6, directions: tuple[str, ...] = ("maximize",),
               sizes: bool = False, running: int = 0, space: bool = True) -> optuna.Study:
    """A study written with optuna directly, shaped like atml's (params, attrs, intermediate values)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    storage = open_storage(url, create=True)
    study = optuna.create_study(storage=storage, study_name=name, directions=list(directions))
    if space:
        raw = small_space(name, n_trials=n + running)
        study.set_user_attr("atml.space", json.dumps({"source": "space.yaml", "raw": raw}))
        study.set_user_attr("atml.metric", "f1")
    dists = {"train.lr": FloatDistribution(1e-3, 5e-3, log=True),
             "model.family": CategoricalDistribution(["afnet", "sepnet"]),
             "afnet.width": IntDistribution(4, 6)}
    for i in range(n):
        state = optuna.trial.TrialState.PRUNED if i % 4 == 3 else optuna.trial.TrialState.COMPLETE
        f1 = 0.5 + 0.05 * i
        attrs = {"worker": "host:1", "n_params": 1000 + i, "history": [{"train_loss": 0.6, "val_loss": 0.7, "f1": f1}]}
        if state == optuna.trial.TrialState.COMPLETE:
            attrs["metrics"] = {"f1": f1, "accuracy": 0.8, "auroc": float("nan"), "tn": 5, "fp": 1, "fn": 2, "tp": 4}
            if sizes:
                attrs["onnx_kb"] = 10.0 + 3 * (i % 3)
        else:
            attrs["reason"] = "pruned by median at epoch 0"
        values = [f1] if len(directions) == 1 else [f1, 10.0 + i]
        study.add_trial(optuna.trial.create_trial(
            state=state, values=values if state == optuna.trial.TrialState.COMPLETE else None,
            params={"train.lr": 1e-3 * (1 + i % 4), "model.family": "afnet", "afnet.width": 4 + i % 3},
            distributions=dists, user_attrs=attrs, intermediate_values={0: f1 - 0.1, 1: f1}))
    for _ in range(running):
        t = study.ask(fixed_distributions=dists)
        t.set_user_attr("worker", f"host:{os.getpid()}")
        t.report(0.4, 0)
    return study


def wait_for(pred, timeout: float = 30.0, every: float = 0.2):
    """Poll ``pred`` until it returns something truthy; returns that value."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > end:
            return v
        time.sleep(every)

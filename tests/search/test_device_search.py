"""A real search with --device: every trial records where it trained, the dashboard's workers panel shows it,
and a bf16 space trains on the CPU end to end."""

from __future__ import annotations

import subprocess

import optuna
import torch
from _helpers import small_space
from fastapi.testclient import TestClient

from atml import records
from atml.dashboard import create_app
from atml.storage import open_storage
from atml.trial import load_checkpoint


def test_bf16_search_on_the_cpu_records_the_device(tmp_path, write_space, atml_cmd):
    space = small_space("dev", n_trials=2, epochs=1)
    space["train"]["precision"] = "bf16"
    url = f"sqlite:///{tmp_path / 'atml.db'}"
    r = subprocess.run([*atml_cmd, "search", "--space", str(write_space(space)), "--storage", url, "--workers", "1",
                        "--device", "cpu", "--no-progress"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="dev", storage=open_storage(url))
    trials = study.trials
    assert len(trials) == 2 and all(records.device(t) == "cpu" for t in trials)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done and all(t.params.get("train.lr") for t in done)
    _, ck = load_checkpoint(tmp_path / "dev" / done[0].user_attrs["checkpoint"])
    assert ck["params"]["train"]["precision"] == "bf16"
    assert all(v.device.type == "cpu" and v.dtype != torch.bfloat16 for v in ck["state_dict"].values())
    with TestClient(create_app(url, artifacts=tmp_path)) as c:
        s = c.get("/api/studies/dev/summary").json()
        assert [(w["worker"], w["device"]) for w in s["workers"]] == [(trials[0].user_attrs["worker"], "cpu")]
        assert "on cpu" in c.get("/studies/dev").text

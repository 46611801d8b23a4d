"""Fixtures for atml.onnx tests: one real tiny search whose trials are exported and refit."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import optuna
import pytest
import yaml
from _helpers import small_space

from atml.storage import open_storage


@pytest.fixture(scope="session")
def atml_cmd_module() -> list[str]:
    return [sys.executable, "-m", "atml"]


@pytest.fixture(scope="session")
def study(tmp_path_factory, atml_cmd_module) -> SimpleNamespace:
    """A real 2-trial search on synthetic data, plus a pruned trial without checkpoint.

    Session-wide: the export and the refit tests share the one search.
    """
    name = "exp"
    root = tmp_path_factory.mktemp("export")
    space = root / "space.yaml"
    cfg = small_space(name, n_trials=2, epochs=2)
    cfg["data"]["test_fraction"] = 0.25  # held-out subjects that no export may train on
    space.write_text(yaml.safe_dump(cfg))
    db = root / "studies" / "atml.db"
    url = f"sqlite:///{db}"
    r = subprocess.run([*atml_cmd_module, "search", "--space", str(space), "--storage", url, "--workers", "1",
                        "--no-progress"], cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    st = optuna.load_study(study_name=name, storage=open_storage(url))
    best = st.best_trial
    st.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED,
                                           user_attrs={"reason": "pruned by median at epoch 0"}))
    pruned = len(st.trials) - 1
    return SimpleNamespace(name=name, root=root, url=url, best=best, pruned=pruned,
                           checkpoint=root / "studies" / name / best.user_attrs["checkpoint"])

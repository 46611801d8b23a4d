"""Search space validation: good spaces load, bad ones fail with one precise line."""

from __future__ import annotations

import copy
import subprocess

import optuna
import pytest
from _helpers import small_space

from atml.cli import main
from atml.config import load_space, space_from_dict
from atml.errors import SpaceError


def test_shipped_afib_space_loads_and_suggests_conditionally(tmp_path):
    space = load_space("search_spaces/afib.yaml")
    assert space.study.name == "afib" and space.budget.n_trials
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        t = study.ask()
        fam = space.suggest(t).family
        seen.add(fam)
        # only the chosen family's own parameters exist on the trial
        own = {k for k in t.params if "." in k and k.split(".")[0] in space.families}
        assert own == {k for k in own if k.startswith(fam + ".")}
        assert all(k.startswith(fam + ".") for k in own)
        study.tell(t, 0.5)
    assert seen == set(space.families)


@pytest.mark.parametrize("path", sorted(__import__("glob").glob("search_spaces/*.yaml")))
def test_every_shipped_space_is_valid(path, shared_data):
    space = load_space(path)
    assert space.budget.n_trials and space.families


def test_param_kinds_and_fixed_values():
    raw = small_space()
    raw["train"]["weight_decay"] = {"type": "float", "low": 0.0, "high": 0.1, "step": 0.05}
    raw["train"]["batch_size"] = {"type": "categorical", "choices": [16, 32]}
    raw["train"]["patience"] = {"type": "int", "low": 2, "high": 8, "step": 2}
    s = space_from_dict(raw)
    kinds = {p.name: p.kind for p in s.params}
    assert kinds["train.lr"] == "float" and kinds["train.batch_size"] == "categorical"
    assert kinds["train.patience"] == "int" and kinds["model.family"] == "categorical"
    assert s.train_fixed["epochs"] == 2
    t = optuna.create_study().ask()
    p = s.suggest(t)
    assert p.train.weight_decay in (0.0, 0.05, 0.1)
    assert p.train.patience in (2, 4, 6, 8)


def test_rebuild_params_from_trial():
    s = space_from_dict(small_space())
    study = optuna.create_study()
    t = study.ask()
    params = s.suggest(t)
    assert s.params_from_flat(t.params) == params


def _mutate(path, value):
    raw = small_space()
    node = raw
    for k in path[:-1]:
        node = node[k]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return raw


_DELETE = object()

BAD = [
    (("train", "lr"), {"type": "float", "low": 0.1, "high": 0.01}, "train.lr: low must be < high (got low=0.1, high=0.01)"),
    (("train", "lrr"), 0.1, "train.lrr: unknown key"),
    (("model", "families", "transformer"), {}, "model.families.transformer: unknown model family"),
    (("train", "epochs"), "ten", "train.epochs: expected int, got str 'ten'"),
    (("train", "epochs"), 0, "train.epochs: must be > 0"),
    (("train", "lr"), {"type": "float", "low": 0, "high": 0.1, "log": True}, "train.lr: log range needs low > 0"),
    (("train", "optimizer"), "rmsprop", "train.optimizer: must be one of"),
    (("train", "batch_size"), {"type": "categorical", "choices": []}, "train.batch_size.choices: must be a non-empty list"),
    (("study", "pruner"), {"type": "wilcoxon"}, "study.pruner.type: must be one of"),
    (("study", "pruner"), {"type": "median", "n_warmup": 2}, "study.pruner.n_warmup: unknown setting"),
    (("study", "metric"), "kappa", "study.metric: must be one of"),
    (("study", "name"), _DELETE, "study.name: missing required key"),
    (("budget",), {}, "budget: needs n_trials and/or timeout"),
    (("data", "path"), "does/not/exist.npz", "data.path: no such file or directory"),
    (("data", "val_fraction"), 1.5, "data.val_fraction: must be in [0, 1)"),
    (("model", "families", "afnet", "widht"), 4, "model.families.afnet.widht: unknown key"),
    (("model", "families", "afnet", "width"), {"type": "int", "low": 0, "high": 4}, "model.families.afnet.width"),
    (("model", "families", "afnet", "dropout"), {"type": "float", "low": 0.2, "high": 1.5}, "model.families.afnet.dropout"),
    (("gate", ), {"pass": 1.5}, "gate.pass: must be in [0, 1]"),
]


@pytest.mark.parametrize("path,value,expected", BAD, ids=[".".join(b[0]) + f"-{i}" for i, b in enumerate(BAD)])
def test_bad_space_is_one_line_exit_2_and_writes_nothing(tmp_path, write_space, capsys, path, value, expected):
    p = write_space(_mutate(path, value if value is _DELETE else copy.deepcopy(value)), "afib.yaml")
    db = tmp_path / "studies" / "atml.db"
    code = main(["search", "--space", str(p), "--storage", f"sqlite:///{db}", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("atml: error: afib.yaml: ")
    assert expected in err
    assert not db.exists() and not (tmp_path / "studies").exists()


def test_missing_and_unparsable_files(tmp_path, capsys):
    assert main(["search", "--space", str(tmp_path / "nope.yaml"), "--storage", f"sqlite:///{tmp_path}/x.db"]) == 2
    assert "nope.yaml: no such search space file" in capsys.readouterr().err
    bad = tmp_path / "broken.yaml"
    bad.write_text("study: {name: x\nmodel: [\n")
    assert main(["search", "--space", str(bad), "--storage", f"sqlite:///{tmp_path}/x.db"]) == 2
    err = capsys.readouterr().err
    assert "broken.yaml: line" in err and "invalid YAML" in err
    assert not (tmp_path / "x.db").exists()


def test_bad_space_through_the_console_script(tmp_path, write_space, atml_cmd):
    p = write_space(_mutate(("train", "lr"), {"type": "float", "low": 0.1, "high": 0.01}), "afib.yaml")
    r = subprocess.run([*atml_cmd, "search", "--space", str(p), "--storage", f"sqlite:///{tmp_path}/s.db"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == "atml: error: afib.yaml: train.lr: low must be < high (got low=0.1, high=0.01)"
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "s.db").exists()


def test_space_error_type():
    with pytest.raises(SpaceError):
        space_from_dict({"study": {"name": "x"}})


def test_many_points_of_afib_space_build_and_run_forward():
    import torch

    from atml.models import build_model

    space = load_space("search_spaces/afib.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = set()
    for _ in range(48):
        t = study.ask()
        m = space.suggest(t)
        seen.add(m.family)
        model = build_model(m.family, in_channels=1, n_classes=2, **m.hparams).eval()
        with torch.no_grad():
            out = model(torch.randn(3, 1, 1250))
        assert out.shape == (3, 2) and torch.isfinite(out).all(), m
        study.tell(t, 0.0)
    assert seen == set(space.families)

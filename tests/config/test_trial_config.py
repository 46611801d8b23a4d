"""TrialConfig: what suggest samples, typed; its plain form is the checkpoint's ``params``."""

from __future__ import annotations

import optuna
import pytest
from _helpers import small_space

from atml.config import TRAIN_KEYS, TrainConfig, TrialConfig, load_space, space_from_dict
from atml.errors import SpaceError


def _sample(space, seed: int, n: int = 5) -> list[TrialConfig]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        t = study.ask()
        out.append(space.suggest(t))
        study.tell(t, 0.5)
    return out


def test_as_dict_round_trips_through_from_dict():
    space = load_space("search_spaces/afib.yaml")
    for cfg in _sample(space, seed=1, n=10):
        assert isinstance(cfg, TrialConfig) and isinstance(cfg.train, TrainConfig)
        assert TrialConfig.from_dict(cfg.as_dict()) == cfg
        assert TrialConfig.from_dict(cfg.as_dict()).as_dict() == cfg.as_dict()


def test_the_same_seed_gives_the_same_configurations():
    space = space_from_dict(small_space())
    assert _sample(space, seed=3) == _sample(space, seed=3)
    assert _sample(space, seed=3) != _sample(space, seed=4)


def test_plain_form_is_the_checkpoint_layout():
    raw = small_space()
    raw["data"]["window"] = {"type": "categorical", "choices": [2.5, 5.0]}
    space = space_from_dict(raw)
    t = optuna.create_study().ask()
    d = space.suggest(t).as_dict()
    assert set(d) == {"data", "train", "model"}
    assert set(d["data"]) == {"window"} and d["data"]["window"] == t.params["data.window"]
    assert list(d["train"]) == list(TRAIN_KEYS)
    assert d["train"]["epochs"] == 2 and d["train"]["patience"] == 2 and d["train"]["lr"] == t.params["train.lr"]
    assert set(d["model"]) == {"family", "hparams"}
    fam = d["model"]["family"]
    assert fam == t.params["model.family"]
    own = {k.split(".", 1)[1]: v for k, v in t.params.items() if k.startswith(fam + ".")}
    assert own.items() <= d["model"]["hparams"].items()


def test_as_dict_returns_copies():
    space = space_from_dict(small_space())
    cfg = space.suggest(optuna.create_study().ask())
    d = cfg.as_dict()
    d["model"]["hparams"]["width"] = -1
    d["train"]["epochs"] = 99
    assert cfg.hparams.get("width") != -1 and cfg.train.epochs == 2


def test_from_dict_rejects_unknown_train_settings():
    cfg = space_from_dict(small_space()).suggest(optuna.create_study().ask())
    d = cfg.as_dict()
    d["train"]["lrr"] = 0.1
    with pytest.raises(SpaceError, match="train.*lrr"):
        TrialConfig.from_dict(d)

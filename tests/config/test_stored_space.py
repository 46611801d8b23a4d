"""A space read back from a study: one parse (space_from_stored), no torch unless asked."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from _helpers import small_space

from atml import records
from atml.config import (
    GateSettings,
    TrainConfig,
    data_formats,
    load_space,
    space_from_dict,
    space_from_stored,
)
from atml.data import READERS, DataSpec
from atml.errors import SpaceError


def _stored(space) -> dict:
    return records.stored_space({records.SPACE: space.to_json()})


def test_stored_space_parses_without_torch():
    attr = load_space("search_spaces/afib.yaml").to_json()
    code = (
        "import sys, json\n"
        "from atml import records\n"
        "from atml.config import space_from_stored\n"
        "sp = space_from_stored(records.stored_space({records.SPACE: sys.stdin.read()}))\n"
        "print(sp.study.name, len(sp.params), 'torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], input=attr, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    name, n, torch_loaded = r.stdout.split()
    assert name == "afib" and int(n) > 0 and torch_loaded == "False"


@pytest.mark.parametrize("check_build", [False, True])
def test_stored_space_equals_the_loaded_one(check_build):
    space = load_space("search_spaces/afib.yaml")
    back = space_from_stored(_stored(space), check_build=check_build)
    # The stored JSON has sorted keys, so parameters may come back in another order.
    assert {p.name: p for p in back.params} == {p.name: p for p in space.params}
    def by_name(families):
        return {fam: (fixed, {p.name: p for p in params}) for fam, (fixed, params) in families.items()}

    assert by_name(back.families) == by_name(space.families) and back.model_fixed == space.model_fixed
    assert (back.study, back.budget, back.gate, back.data) == (space.study, space.budget, space.gate, space.data)
    assert back.to_json() == space.to_json()


def test_stored_space_keeps_structure_checks():
    raw = json.loads(space_from_dict(small_space()).to_json())
    raw["raw"]["train"]["lr"] = {"type": "float", "low": 0.1, "high": 0.01}
    with pytest.raises(SpaceError, match="train.lr: low must be < high"):
        space_from_stored(raw)
    with pytest.raises(SpaceError, match="stored search space"):
        space_from_stored({"source": "x"})


def test_defaults_come_from_their_owners():
    raw = small_space()
    raw["train"] = {}
    raw["data"] = {}
    space = space_from_dict(raw)
    assert space.train_fixed == {k: getattr(TrainConfig(), k) for k in space.train_fixed}
    assert set(space.train_fixed) < {f.name for f in dataclasses.fields(TrainConfig)}
    spec_fields = {f.name: f.default for f in dataclasses.fields(DataSpec)}
    section = {k: v for k, v in spec_fields.items() if not k.startswith("synthetic_")}
    assert set(space.data) == {*section, "synthetic"}
    for k, default in section.items():
        assert space.data[k] == (list(default) if isinstance(default, tuple) else default), k
    assert space.data["synthetic"] == {k.removeprefix("synthetic_"): v for k, v in spec_fields.items()
                                       if k.startswith("synthetic_")}
    assert space.gate == GateSettings()


def test_formats_are_the_registered_readers():
    assert set(data_formats()) == {"auto", "synthetic", *READERS}
    raw = small_space()
    raw["data"]["format"] = "edf"
    with pytest.raises(SpaceError, match="data.format: must be one of") as e:
        space_from_dict(raw)
    assert all(name in str(e.value) for name in READERS)

"""Preprocessing settings as searchable parameters (window, resampling, leads, band-pass,
normalisation): validation, one search whose trials see different inputs, export."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from atml.config import space_from_dict
from atml.errors import SpaceError
from atml.storage import open_storage
from atml.trial import DataVariants

CPSC_DATA = {
    "format": "wfdb_rhythm", "positive": ["AFIB"], "classes": ["non-AFIB", "AFIB"],
    "window_mixed": "drop", "rhythm_default": "N", "val_fraction": 0.25, "normalize": "zscore",
}


def _space(data: dict, n_trials: int = 6) -> dict:
    return {
        "study": {"name": "pre", "metric": "f1", "sampler": {"type": "random", "seed": 11},
                  "pruner": {"type": "none"}},
        "budget": {"n_trials": n_trials},
        "data": data,
        "train": {"epochs": 1, "batch_size": 64, "lr": 2e-3},
        "model": {"families": {"afnet": {"width": 4, "depth": 2}}},
    }


def test_searched_settings_parse_as_parameters():
    sp = space_from_dict(_space({**CPSC_DATA, "path": "x", "window": {"type": "categorical", "choices": [2.5, 5.0]},
                                 "target_fs": {"type": "int", "low": 100, "high": 200, "step": 100},
                                 "bandpass": {"type": "categorical", "choices": [None, [0.5, 40.0]]},
                                 "leads": {"type": "categorical", "choices": ["all", ["II"]]}}),
                         check_paths=False)
    names = [p.name for p in sp.data_params]
    assert names == ["data.target_fs", "data.window", "data.leads", "data.bandpass"]
    assert len(sp.data_variants()) == 2 * 2 * 2 * 2
    assert {"target_fs": 100, "window": 2.5, "leads": ["II"], "bandpass": [0.5, 40.0]} in sp.data_variants()
    # list choices are stored as JSON text (Optuna's choices are scalars) and decoded for the trial
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = set()
    for _ in range(12):
        t = study.ask()
        data = sp.suggest(t).data
        assert isinstance(t.params["data.bandpass"], str)
        assert data["bandpass"] in (None, [0.5, 40.0]) and data["leads"] in ("all", ["II"])
        seen.add(json.dumps(data, sort_keys=True))
        study.tell(t, 0.5)
    assert len(seen) > 4
    # the stored space keeps the parameter definitions: a worker rebuilds the same space
    again = space_from_dict(json.loads(json.dumps(sp.raw)), check_paths=False)
    assert again.data_params == sp.data_params


@pytest.mark.parametrize("data, field, words", [
    ({"window": {"type": "float", "low": 2.0, "high": 5.0}}, "data.window", "needs a step"),
    ({"fs": {"type": "categorical", "choices": [250, 500]}}, "data.fs", "cannot be searched"),
    ({"leads": {"type": "int", "low": 1, "high": 2}}, "data.leads.type", "must be categorical"),
    ({"normalize": {"type": "categorical", "choices": ["zscore", "minmax"]}}, "data", "normalize"),
    ({"window": {"type": "float", "low": 1.0, "high": 30.0, "step": 1.0},
      "bandpass": {"type": "categorical", "choices": [None, [1, 30], [0.5, 40]]}}, "data", "at most"),
    ({"bandpass": {"type": "categorical", "choices": [[0.5, 40.0], [40.0, 0.5]]}}, "data.bandpass", "with bandpass"),
])
def test_bad_searched_settings_name_the_field(data, field, words, tmp_path):
    with pytest.raises(SpaceError) as e:
        space_from_dict(_space({**CPSC_DATA, "path": "x", **data}), source="s.yaml", check_paths=False)
    msg = str(e.value)
    assert msg.startswith(f"s.yaml: {field}"), msg
    assert words in msg, msg


def test_bad_searched_setting_from_the_command_line_exits_2(tmp_path, atml_cmd):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(_space({"window": {"type": "float", "low": 2.0, "high": 5.0}})))
    r = subprocess.run([*atml_cmd, "search", "--space", str(p), "--storage", f"sqlite:///{tmp_path}/s.db",
                        "--no-progress"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "atml: error: bad.yaml: data.window: a searched data setting needs a step (each value is preprocessed "
        "and cached once), or use categorical choices"]
    assert not (tmp_path / "s.db").exists()


def test_data_variants_keep_the_most_recent(tmp_path):
    section = space_from_dict(_space({"synthetic": {"subjects": 6, "per_subject": 8, "seed": 1},
                                      "drop_labels": ["UNK"]})).data
    dv = DataVariants(section, None, tmp_path / "cache", keep=2)
    a = dv.get({"window": 2.0})
    b = dv.get({"window": 4.0})
    assert (a.n_samples, b.n_samples) == (500, 1000)
    assert dv.get({"window": 2.0}) is a  # still held
    dv.get({"normalize": "none"})  # evicts the least recently used (window 4.0)
    assert dv.get({"window": 2.0}) is a
    assert dv.get({"window": 4.0}) is not b


@pytest.mark.slow
def test_search_trains_each_trial_on_its_own_preprocessing(shared_data, tmp_path, atml_cmd):
    data = {**CPSC_DATA, "path": str(shared_data / "cpsc2021_sample"), "stride": 5.0,
            "window": {"type": "categorical", "choices": [2.5, 5.0]},
            "target_fs": {"type": "categorical", "choices": [100, 200]},
            "leads": {"type": "categorical", "choices": ["all", ["II"]]},
            "bandpass": {"type": "categorical", "choices": [None, [0.5, 40.0]]}}
    p = tmp_path / "pre.yaml"
    p.write_text(yaml.safe_dump(_space(data, n_trials=6)))
    url = f"sqlite:///{tmp_path}/s.db"
    r = subprocess.run([*atml_cmd, "search", "--space", str(p), "--storage", url, "--workers", "2",
                        "--no-progress", "--json"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-2000:]
    summary = json.loads(r.stdout)
    assert len(summary["split"]["variants"]) == 16  # every variant was checked and cached up front
    trials = optuna.load_study(study_name="pre", storage=open_storage(url)).get_trials()
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(done) == 6
    shapes = set()
    for t in done:
        ck = torch.load(tmp_path / "pre" / t.user_attrs["checkpoint"], weights_only=False)
        want_leads = 2 if t.params["data.leads"] == '"all"' else 1
        want_samples = int(t.params["data.window"] * t.params["data.target_fs"])
        assert (ck["in_channels"], ck["n_samples"]) == (want_leads, want_samples), t.params
        shapes.add((want_leads, want_samples))
    assert len(shapes) > 1  # the trials really saw different inputs

    best = max(done, key=lambda t: t.value)
    out = tmp_path / "best.onnx"
    r = subprocess.run([*atml_cmd, "export", "--storage", url, "--study", "pre", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    side = json.loads(Path(f"{out}.json").read_text())
    pre = side["preprocessing"]
    assert pre["window"] == best.params["data.window"] and pre["target_fs"] == best.params["data.target_fs"]
    assert pre["bandpass"] == json.loads(best.params["data.bandpass"])
    assert side["network"]["samples"] == int(best.params["data.window"] * best.params["data.target_fs"])
    assert side["parity"]["max_abs_diff"] < 1e-4
    # evaluate redoes the trial's preprocessing from the sidecar (windows, rate, leads, band-pass)
    r = subprocess.run([*atml_cmd, "evaluate", "--model", str(out), "--data", str(shared_data / "cpsc2021_sample"),
                        "--json"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    ev = json.loads(r.stdout)
    assert ev["segments"] > 100 and 0.0 <= ev["metrics"]["f1"] <= 1.0


def test_summary_names_each_variants_shape(capsys):
    from atml.cli.search import print_summary
    from atml.search.coordinator import SearchResult

    split = {"source": "train.npz", "shape": [1, 625], "skipped": 0,
             "variants": [{"target_fs": 125, "shape": [1, 625], "segments": 9},
                          {"target_fs": 250, "shape": [1, 1250], "segments": 9}]}
    print_summary(SearchResult(counts={"COMPLETE": 1}, wall_seconds=3.0, stop_reason=None, study="s",
                                storage="sqlite:///x.db", artifacts="studies", split=split, best=None,
                                data_source="train.npz"))
    out = capsys.readouterr().out
    assert "shapes [1, 625] (data.target_fs=125), [1, 1250] (data.target_fs=250)" in out

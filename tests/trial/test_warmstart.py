"""Warm starts (model.init) on real ECG: from another study's trial, from a 12-lead model, bad settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from _helpers import small_space

from atml.config import space_from_dict
from atml.data import DataSpec
from atml.errors import SpaceError
from atml.models import build_model
from atml.models.transfer import backbone_blocks, transfer_weights
from atml.train import TrainConfig, fit
from atml.trial import Objective, load_checkpoint, prepare_data, save_checkpoint
from atml.trial.data import data_spec


def _search(atml_cmd: list[str], space: Path, url: str) -> subprocess.CompletedProcess:
    return subprocess.run([*atml_cmd, "search", "--space", str(space), "--storage", url, "--workers", "1",
                           "--no-progress"], capture_output=True, text=True, timeout=600)


def _txt_space(name: str, txt_sample: Path, model: dict, epochs: int = 1) -> dict:
    raw = small_space(name, n_trials=1, epochs=epochs)
    raw["data"] = {"path": str(txt_sample), "val_fraction": 0.34, "split_seed": 0}
    raw["model"] = model
    return raw


def _frozen_keys(model: torch.nn.Module, n: int) -> set[str]:
    """State-dict keys (parameters and buffers) of the first ``n`` blocks."""
    mods = {id(m) for _, group in backbone_blocks(model)[:n] for top in group for m in top.modules()}
    keys = set()
    for name, mod in model.named_modules():
        if id(mod) in mods:
            keys |= {f"{name}.{k}" for k in mod.state_dict(keep_vars=True) if "." not in k}
    return keys


@pytest.fixture(scope="module")
def source_study(tmp_path_factory, txt_sample):
    """A one-trial study on the IESD text segments (afnet), made by atml search."""
    tmp = tmp_path_factory.mktemp("src")
    space = tmp / "src.yaml"
    space.write_text(yaml.safe_dump(_txt_space("src", txt_sample, {"families": {"afnet": {"width": 8, "depth": 3}}})))
    url = f"sqlite:///{tmp}/s.db"
    r = _search([sys.executable, "-m", "atml"], space, url)
    assert r.returncode == 0, r.stderr[-2000:]
    return url, tmp


def test_warm_start_from_another_study_freezes_and_exports(source_study, txt_sample, write_space, atml_cmd,
                                                           tmp_path):
    url, src_dir = source_study
    raw = _txt_space("ws", txt_sample, {"families": {"afnet": {"dropout": 0.2}},
                                        "init": {"from": "src:0", "storage": url, "freeze": 2, "lr_scale": 0.5}},
                     epochs=2)
    r = _search(atml_cmd, write_space(raw), url)
    assert r.returncode == 0, r.stderr[-2000:]
    t = optuna.load_study(study_name="ws", storage=url).trials[0]
    assert t.state == optuna.trial.TrialState.COMPLETE
    init = t.user_attrs["init"]
    assert init["study"] == "src" and init["trial"] == 0 and init["frozen"] == ["stem", "blocks.0"]
    assert init["head"] == "new" and init["copied"] > 0 and init["lr_scale"] == 0.5
    _, src = load_checkpoint(src_dir / "src" / "trials" / "00000" / "model.pt")
    model, ck = load_checkpoint(src_dir / "ws" / t.user_attrs["checkpoint"])
    assert ck["init"]["frozen"] == ["stem", "blocks.0"] and ck["hparams"]["width"] == 8
    assert ck["hparams"]["depth"] == 3 and ck["hparams"]["dropout"] == 0.2  # the source's architecture
    frozen = _frozen_keys(model, 2)
    assert any("running_mean" in k for k in frozen) and any(k.startswith("blocks.1.") for k in frozen)  # block 0's SE
    for k in frozen:  # weights and BatchNorm statistics of the frozen blocks: bit-identical after training
        assert torch.equal(ck["state_dict"][k], src["state_dict"][k]), k
    trained = [k for k in ck["state_dict"] if k.startswith("blocks.2.") and k.endswith("weight")]
    assert trained and any(not torch.equal(ck["state_dict"][k], src["state_dict"][k]) for k in trained)
    assert not torch.equal(ck["state_dict"]["blocks.2.1.running_mean"], src["state_dict"]["blocks.2.1.running_mean"])
    out = tmp_path / "ws.onnx"
    r = subprocess.run([*atml_cmd, "export", "--storage", url, "--study", "ws", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    side = json.loads(Path(f"{out}.json").read_text())
    assert side["study"] == "ws" and side["family"] == "afnet"
    assert side["fit"]["warm_start"]["frozen"] == ["stem", "blocks.0"]  # the sidecar says where it came from
    r = subprocess.run([*atml_cmd, "export", "--storage", url, "--study", "ws", "--out", str(tmp_path / "r.onnx"),
                        "--refit"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "warm-started" in r.stderr and not (tmp_path / "r.onnx").exists()
    # an exported model names its trial: it is a source too (its sidecar leads to the checkpoint)
    again = dict(raw, study={**raw["study"], "name": "ws2"})
    again["model"] = {"families": {"afnet": {}}, "init": {"from": str(out), "storage": url, "head": "keep"}}
    space = space_from_dict(again)
    assert space.init.checkpoint == str((src_dir / "ws" / t.user_attrs["checkpoint"]).resolve())
    assert space.data["target_fs"] == 250


@pytest.fixture(scope="module")
def twelve_lead(tmp_path_factory, shared_data):
    """A 12-lead afnet checkpoint trained one epoch on the CinC 2021 sample at 125 Hz."""
    tmp = tmp_path_factory.mktemp("twelve")
    spec = DataSpec(path=str(shared_data / "cinc2021_sample"), format="cinc2020", multilabel=True,
                    classes=("SR", "AF", "TAb", "STach", "PAC"),
                    label_map={"426783006": 0, "164889003": 1, "164934002": 2, "427084000": 3, "284470004": 4},
                    target_fs=125, window=10.0, pad_short=True, on_bad="skip")
    d = prepare_data(spec, tmp / "cache")
    assert d.n_leads == 12 and d.fs == 125 and "II" in d.leads
    torch.manual_seed(0)
    model = build_model("afnet", in_channels=12, n_classes=5, width=8, depth=2)
    res = fit(model, d.x_train, d.y_train, d.x_val, d.y_val, TrainConfig(epochs=1, task="multilabel", metric="auroc"))
    return save_checkpoint(tmp / "model.pt", family="afnet", hparams={"width": 8, "depth": 2}, data=d,
                           state_dict=res.state_dict, params={}, trial=0, study="cinc12", metrics=res.metrics), d


def test_twelve_lead_checkpoint_warm_starts_a_single_lead_model(twelve_lead, txt_sample, tmp_path):
    path, src_data = twelve_lead
    raw = _txt_space("one", txt_sample, {"families": {"afnet": {}}, "init": {"from": str(path), "freeze": 1}})
    space = space_from_dict(raw)
    assert space.data["target_fs"] == 125  # resampled from the IESD 250 Hz to the source's rate
    d = prepare_data(data_spec(space.data, None), tmp_path / "cache")
    assert d.fs == 125 and d.n_leads == 1 and d.n_samples == 625
    study = optuna.create_study(direction="maximize")
    study.optimize(Objective(space, d, tmp_path), n_trials=1)
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.COMPLETE, t.user_attrs.get("reason")
    init = t.user_attrs["init"]
    assert init["leads"] == "picked by lead name (II<-II)" and init["fs"] == 125 and init["source_leads"] == 12
    assert init["head"] == "new" and init["frozen"] == ["stem"]
    _, ck = load_checkpoint(tmp_path / "one" / t.user_attrs["checkpoint"])
    src = torch.load(path, weights_only=False)
    ii = src["leads"].index("II")
    assert ck["in_channels"] == 1 and ck["n_classes"] == 2
    assert torch.equal(ck["state_dict"]["stem.0.weight"], src["state_dict"]["stem.0.weight"][:, ii : ii + 1])
    # leads: sum gives the single lead the weights summed over the twelve
    one = build_model("afnet", in_channels=1, n_classes=2, width=8, depth=2)
    done = transfer_weights(one, src["state_dict"], new_head=True, src_leads=tuple(src["leads"]), lead_mode="sum")
    assert done.leads == "summed over the source's 12 leads"
    assert torch.allclose(one.state_dict()["stem.0.weight"], src["state_dict"]["stem.0.weight"].sum(1, keepdim=True))
    # twelve named leads cannot come from a two-lead model: one line naming both shapes
    two = {k: v[:, :2] if k == "stem.0.weight" else v for k, v in src["state_dict"].items()}
    with pytest.raises(SpaceError, match=r"source first conv \[8, 2, .*target 12 lead"):
        transfer_weights(build_model("afnet", in_channels=12, n_classes=5, width=8, depth=2), two, new_head=False,
                         src_leads=("I", "II"), tgt_leads=tuple(src["leads"]))


def test_bad_init_settings_fail_before_any_study(source_study, twelve_lead, txt_sample, tmp_path, atml_cmd,
                                                 write_space):
    url, _ = source_study
    path, _ = twelve_lead

    def raw(init: dict, families: dict | None = None) -> dict:
        return _txt_space("bad", txt_sample, {"families": families or {"afnet": {}}, "init": init})

    cases = [
        (raw({"from": str(tmp_path / "nope.pt")}), "model.init.from: no such checkpoint file"),
        (raw({"from": "src:7", "storage": url}), "model.init.from: study 'src' has no trial #7"),
        (raw({"from": "other:0", "storage": url}), "model.init.from: study 'other' not found"),
        (raw({"from": "src:0", "storage": url}, {"sepnet": {}}),
         "model.families: the warm start's source is a afnet model"),
        (raw({"from": "src:0", "storage": url}, {"afnet": {"width": 16}}),
         "model.families.afnet.width: set by the warm start's source (width=8)"),
        (raw({"from": str(path), "head": "keep"}), "model.init.head: keep needs the source's multilabel classes"),
        (raw({"from": "src:0", "storage": url, "freeze": -1}), "model.init.freeze: must be >= 0"),
        (raw({"from": "src:0", "storage": url, "freeze": 1.5}), "model.init.freeze: a fraction"),
        (raw({"from": "src:0", "storage": url, "freeze": 9}), "model.init.freeze: 9 blocks"),
        (raw({"from": "src:0", "storage": url, "lr_scale": 0}), "model.init.lr_scale: must be > 0"),
        (raw({"from": "src:0", "storage": url, "lr_scale": {"type": "float", "low": 0.0, "high": 1.0}}),
         "model.init.lr_scale: must be > 0"),
        (raw({"from": "src:0", "storage": url, "head": "old"}), "model.init.head: must be one of new, keep"),
        (raw({"from": "src:0", "storage": f"sqlite:///{tmp_path}/none.db"}), "model.init.storage: no such database"),
        (raw({"from": 3}), "model.init.from: expected a checkpoint"),
    ]
    bad_fs = raw({"from": str(path)})
    bad_fs["data"]["target_fs"] = 250
    cases.append((bad_fs, "data.target_fs: 250 Hz, but the warm start's source was trained at 125 Hz"))
    for space, msg in cases:
        with pytest.raises(SpaceError) as e:
            space_from_dict(space)
        assert msg in str(e.value) and "\n" not in str(e.value)
    # through the CLI: one line, exit 2, no study and no database file
    target = tmp_path / "new.db"
    for space, msg in (cases[1], cases[6]):
        r = _search(atml_cmd, write_space(space), f"sqlite:///{target}")
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not target.exists()
    # searchable freeze and lr_scale
    ok = space_from_dict(raw({"from": "src:0", "storage": url, "freeze": {"type": "int", "low": 0, "high": 3},
                              "lr_scale": {"type": "float", "low": 0.1, "high": 1.0, "log": True}}))
    assert {p.name for p in ok.params} >= {"init.freeze", "init.lr_scale"}
    fixed = ok.params_from_flat({"train.lr": 1e-3, "init.freeze": 2, "init.lr_scale": 0.3})
    assert fixed.init["freeze"] == 2 and fixed.init["lr_scale"] == 0.3 and fixed.init["from"] == ok.init.checkpoint

"""train.prune and train.qat in real searches on real ECG: the trial is sized pruned before it
trains, its checkpoint rebuilds the pruned network, export and refit ship it, QAT is scored
against post-training int8 on the same trial, and bad settings stop before any study."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import optuna
import pytest
import yaml
from _helpers import small_space

from atml.config import space_from_dict
from atml.errors import SpaceError
from atml.models import count_parameters
from atml.storage import open_storage, study_names
from atml.trial import load_checkpoint


def _space(name: str, txt_sample, **train) -> dict:
    raw = small_space(name, n_trials=1, epochs=1)
    raw["data"] = {"path": str(txt_sample), "val_fraction": 0.34, "split_seed": 0}
    raw["model"] = {"families": {"afnet": {"width": 8, "depth": 3}}}
    raw["train"].update(train)
    raw["study"]["constraints"] = {"min_int8_f1": 0.0}  # the trial is scored as deployed (int8)
    return raw


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, txt_sample):
    """A one-trial search that prunes half the channels, fine-tunes and runs one QAT epoch."""
    tmp = tmp_path_factory.mktemp("comp")
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump(_space("comp", txt_sample, qat=1, prune={"amount": 0.5, "epochs": 1})))
    url = f"sqlite:///{tmp}/s.db"
    r = subprocess.run([sys.executable, "-m", "atml", "search", "--space", str(space), "--storage", url, "--workers", "1",
                        "--no-progress"], capture_output=True, text=True, timeout=600, cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    study = optuna.load_study(study_name="comp", storage=open_storage(url))
    return tmp, url, study.trials[0]


def test_a_pruned_qat_trial_records_what_it_did_and_is_sized_as_it_ends(compressed):
    tmp, _, t = compressed
    assert t.state == optuna.trial.TrialState.COMPLETE
    prune, qat = t.user_attrs["compression"]
    assert prune["phase"] == "prune" and prune["params_after"] < 0.45 * prune["params_before"]
    assert qat == {"phase": "qat", "epochs": 1, "weights": "int8 per channel (symmetric)",
                   "activations": "uint8 per tensor"}
    assert t.user_attrs["n_params"] == prune["params_after"]  # known before training
    # training 1 epoch, fine-tuning 1 after pruning, 1 under fake quantisation
    assert t.user_attrs["epochs_run"] == 3 and len(t.user_attrs["history"]) == 3
    model, ck = load_checkpoint(tmp / "comp" / t.user_attrs["checkpoint"])
    assert ck["shapes"] and count_parameters(model) == prune["params_after"]
    assert ck["params"]["train"]["prune"] == {"amount": 0.5, "epochs": 1, "steps": 1}
    # QAT and post-training int8 of the weights before QAT, on the same validation subjects
    ptq = t.user_attrs["deployed"]["post_training_int8"]
    assert 0 <= ptq["f1"] <= 1 and 0 <= t.user_attrs["metrics"]["int8_f1"] <= 1


def _export(tmp, url: str, out, *flags: str) -> None:
    """``atml export`` of the compressed study's trial, network alone, with ``flags``."""
    r = subprocess.run([sys.executable, "-m", "atml", "export", "--storage", url, "--study", "comp", "--out", str(out),
                        "--no-preprocessing", *flags], capture_output=True, text=True, timeout=600, cwd=tmp)
    assert r.returncode == 0, r.stderr[-2000:]


def test_export_ships_the_pruned_network_at_the_size_the_trial_reported(compressed):
    tmp, url, t = compressed
    out = tmp / "net.onnx"
    _export(tmp, url, out, "--int8")
    assert out.stat().st_size / 1024 == pytest.approx(t.user_attrs["onnx_kb"], abs=0.01)
    assert (tmp / "net.int8.onnx").exists() and onnx.load(str(tmp / "net.int8.onnx"))
    side = json.loads((tmp / "net.onnx.json").read_text())
    assert side["compression"]["prune"]["amount"] == 0.5 and side["compression"]["qat_epochs"] == 1
    assert side["n_params"] == t.user_attrs["n_params"]


def test_refit_prunes_and_quantisation_trains_the_configuration_again(compressed):
    tmp, url, t = compressed
    out = tmp / "refit.onnx"
    _export(tmp, url, out, "--refit")
    assert out.stat().st_size / 1024 == pytest.approx(t.user_attrs["onnx_kb"], abs=0.01)


@pytest.mark.parametrize("train, field", [
    ({"prune": {"amount": 1.0}}, "train.prune.amount: must be in [0, 1)"),
    ({"prune": {"amount": {"type": "float", "low": 0.2, "high": 1.2}}}, "train.prune.amount: must be in [0, 1)"),
    ({"prune": {"amount": 0.5, "epochs": 0}}, "train.prune.epochs: must be >= 1"),
    ({"prune": {"epochs": 2}}, "train.prune.amount"),
    ({"prune": 0.5}, "train.prune: expected a mapping"),
    ({"prune": {"amount": 0.5, "schedule": "cubic"}}, "train.prune.schedule: unknown key"),
    ({"qat": -1}, "train.qat: must be >= 0"),
])
def test_bad_compression_settings_name_the_field(train, field, txt_sample):
    with pytest.raises(SpaceError) as e:
        space_from_dict(_space("bad", txt_sample, **train))
    assert field in str(e.value) and "\n" not in str(e.value)


def test_bad_prune_amount_exits_2_before_any_study(tmp_path, write_space, atml_cmd, txt_sample):
    db = tmp_path / "s.db"
    r = subprocess.run([*atml_cmd, "search", "--space", str(write_space(_space("bad", txt_sample,
                                                                                prune={"amount": 1.5}))),
                        "--storage", f"sqlite:///{db}", "--workers", "1", "--no-progress"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "train.prune.amount" in err[0], r.stderr
    assert not db.exists() or study_names(open_storage(f"sqlite:///{db}")) == []


def test_searched_amount_and_qat_are_trial_parameters(txt_sample):
    s = space_from_dict(_space("p", txt_sample, qat={"type": "categorical", "choices": [0, 2]},
                               prune={"amount": {"type": "float", "low": 0.2, "high": 0.7}, "steps": 2}))
    assert {"train.prune.amount", "train.qat"} <= {p.name for p in s.params}
    cfg = s.params_from_flat({"train.prune.amount": 0.4, "train.qat": 2, "train.lr": 2e-3,
                              "afnet.width": 8}).train
    assert cfg.prune == {"amount": 0.4, "epochs": 2, "steps": 2} and cfg.qat == 2


def test_a_pruned_trial_cannot_be_a_warm_start_source(compressed, txt_sample):
    tmp, _, t = compressed
    raw = _space("ws", txt_sample)
    raw["model"]["init"] = {"from": str(tmp / "comp" / t.user_attrs["checkpoint"])}
    raw["model"]["families"] = {"afnet": {}}
    with pytest.raises(SpaceError, match=r"model.init.from: .* is a pruned model \(train.prune\)"):
        space_from_dict(raw)

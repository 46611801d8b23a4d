"""Final fits of a real tiny trial (atml.onnx.refit): checkpoint, refit, ensemble."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from atml.config import trial_seed
from atml.data import load_dataset
from atml.errors import ExportError
from atml.models.ensemble import MeanLogits
from atml.onnx.export import locate_trial
from atml.onnx.refit import final_model
from atml.trial import data_spec, load_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trial(study) -> SimpleNamespace:
    """The best trial of the conftest's study, its checkpoint and the study's data and split."""
    ref = locate_trial(study.url, study.name)
    model, ck = load_checkpoint(ref.checkpoint)
    spec = data_spec(ref.data, None)
    ds = load_dataset(spec, ref.artifacts / "cache")
    split = ds.split(spec)
    return SimpleNamespace(ref=ref, model=model, ck=ck, x=ds.x, y=ds.y, train=split.train, val=split.val)


def _fit(t: SimpleNamespace, **kw):
    return final_model(t.model, t.ck, t.ref, t.x, t.y, t.train, t.val, **kw)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_without_refit_or_ensemble_the_checkpoint_is_exported(trial):
    final = _fit(trial)
    assert final.model is trial.model and final.validation_held_out is True
    assert final.info == {"mode": "checkpoint", "members": 1, "subjects": "train",
                          "note": "the trial's own checkpoint"}


def test_refit_trains_on_train_and_validation_for_the_best_epoch_count(trial):
    before = _weights(trial.model)
    a = _fit(trial, refit=True)
    b = _fit(trial, refit=True, device="cpu")  # an explicit device: the same seeded fit
    info = a.info
    assert info["mode"] == "refit" and info["members"] == 1 and info["subjects"] == "train+validation"
    assert info["epochs"] == trial.ref.user_attrs["best_epoch"] + 1 and info["combine"] is None
    assert info["segments"] == len(trial.train) + len(trial.val)
    assert info["seeds"] == [trial_seed(trial.ref.settings.seed, trial.ref.number)]
    assert a.validation_held_out is False and not a.model.training
    assert a.model is not trial.model and type(a.model) is type(trial.model)
    # Seeded from the trial: the same refit twice gives the same weights; the checkpoint is left alone.
    wa, wb = _weights(a.model), _weights(b.model)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert all(torch.equal(before[k], v) for k, v in _weights(trial.model).items())
    assert any(not torch.equal(before[k], wa[k]) for k in wa if wa[k].is_floating_point())


def test_ensemble_member_zero_is_the_checkpoint(trial):
    final = _fit(trial, members=2)
    assert isinstance(final.model, MeanLogits) and final.model.members[0] is trial.model
    info = final.info
    assert info["mode"] == "ensemble" and info["members"] == 2 and info["subjects"] == "train"
    assert info["segments"] == len(trial.train) and info["combine"] == "mean of member logits"
    base = trial_seed(trial.ref.settings.seed, trial.ref.number)
    assert info["seeds"] == [base, trial_seed(base, 1)] and final.validation_held_out is True
    x = torch.from_numpy(np.array(trial.x[:4], dtype=np.float32))  # a writable copy of the memmap
    with torch.no_grad():
        expected = (final.model.members[0](x) + final.model.members[1](x)) / 2
        assert torch.allclose(final.model(x), expected, atol=1e-6)


def test_refit_needs_the_trials_best_epoch_and_training_settings(trial):
    no_epoch = dataclasses.replace(trial.ref, user_attrs={})
    with pytest.raises(ExportError, match=rf"^trial #{trial.ref.number} has no best_epoch to refit for$"):
        final_model(trial.model, trial.ck, no_epoch, trial.x, trial.y, trial.train, trial.val, refit=True)
    ck = {**trial.ck, "params": {}}
    with pytest.raises(ExportError, match="has no training settings to retrain from"):
        final_model(trial.model, ck, trial.ref, trial.x, trial.y, trial.train, trial.val, members=2)


def test_refit_of_a_study_ranked_by_a_spread_metric(tmp_path, txt_sample, write_space, atml_cmd):
    """A study whose metric exists only after training (f1_lcb, subject_f1_min) refits on its
    per-epoch base metric, as its trials trained."""
    import subprocess

    from _helpers import small_space

    raw = small_space("lcb", n_trials=1, epochs=2)
    raw["study"]["metric"] = "f1_lcb"
    raw["data"] = {"path": str(txt_sample), "val_fraction": 0.34, "split_seed": 0}
    raw["model"] = {"families": {"afnet": {"width": 4, "depth": 2}}}
    space, url = write_space(raw), f"sqlite:///{tmp_path / 's.db'}"
    r = subprocess.run([*atml_cmd, "search", "--space", str(space), "--storage", url, "--workers", "1",
                        "--no-progress"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([*atml_cmd, "export", "--storage", url, "--study", "lcb", "--refit", "--out",
                        str(tmp_path / "m.onnx")], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "m.onnx").exists()

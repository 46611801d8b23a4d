"""The trial checkpoint: a trained model saved and rebuilt, written atomically."""

from __future__ import annotations

import pytest
import torch

from atml.models import build_model
from atml.train import TrainConfig, evaluate, fit, predict_proba
from atml.trial import CHECKPOINT_FILE, checkpoint_dir, load_checkpoint, save_checkpoint

FORMAT = {"family", "hparams", "in_channels", "n_classes", "n_samples", "fs", "classes", "task", "state_dict",
          "params", "trial", "study", "metrics", "leads"}


@pytest.fixture(scope="module")
def trained(synthetic):
    torch.manual_seed(0)
    hp = {"width": 4, "depth": 2}
    model = build_model("afnet", in_channels=synthetic.n_leads, n_classes=len(synthetic.classes), **hp)
    res = fit(model, synthetic.x_train, synthetic.y_train, synthetic.x_val, synthetic.y_val,
              TrainConfig(epochs=1, lr=3e-3, seed=1))
    model.load_state_dict(res.state_dict)
    return model, hp, res


def _save(path, synthetic, trained):
    model, hp, res = trained
    params = {"data": {}, "train": {"lr": 3e-3}, "model": {"family": "afnet", "hparams": hp}}
    return save_checkpoint(path, family="afnet", hparams=hp, data=synthetic, state_dict=res.state_dict,
                           params=params, trial=7, study="ck", metrics=res.metrics)


def test_round_trip_rebuilds_the_trained_model(synthetic, trained, tmp_path):
    model, hp, res = trained
    path = _save(checkpoint_dir(tmp_path, "ck", 7) / CHECKPOINT_FILE, synthetic, trained)
    assert path == tmp_path / "ck" / "trials" / "00007" / "model.pt" and path.is_file()
    again, ck = load_checkpoint(path)
    assert set(ck) == FORMAT
    assert (ck["family"], ck["hparams"], ck["trial"], ck["study"]) == ("afnet", hp, 7, "ck")
    assert (ck["in_channels"], ck["n_samples"], ck["fs"]) == (synthetic.n_leads, synthetic.n_samples, synthetic.fs)
    assert ck["classes"] == list(synthetic.classes) and ck["n_classes"] == len(synthetic.classes)
    assert not again.training  # rebuilt in eval mode
    p0, _ = predict_proba(model, synthetic.x_val)
    p1, _ = predict_proba(again, synthetic.x_val)
    assert torch.equal(torch.from_numpy(p0), torch.from_numpy(p1))
    assert evaluate(again, synthetic.x_val, synthetic.y_val)["f1"] == pytest.approx(res.metrics["f1"])


def test_a_failed_write_leaves_no_partial_file_and_keeps_the_old_one(synthetic, trained, tmp_path):
    path = _save(tmp_path / "t" / CHECKPOINT_FILE, synthetic, trained)
    before = path.read_bytes()
    model, hp, res = trained
    # A lambda cannot be pickled: torch.save fails after it has started writing.
    with pytest.raises(Exception, match="ickle|lambda"):
        save_checkpoint(path, family="afnet", hparams=hp, data=synthetic, state_dict=res.state_dict,
                        params={"bad": lambda: None}, trial=8, study="ck", metrics=res.metrics)
    assert sorted(p.name for p in path.parent.iterdir()) == [CHECKPOINT_FILE]  # no temporary left
    assert path.read_bytes() == before
    assert load_checkpoint(path)[1]["trial"] == 7
    # nothing at all where no checkpoint was before
    fresh = tmp_path / "u" / CHECKPOINT_FILE
    with pytest.raises(Exception, match="ickle|lambda"):
        save_checkpoint(fresh, family="afnet", hparams=hp, data=synthetic, state_dict=res.state_dict,
                        params={"bad": lambda: None}, trial=9, study="ck", metrics=res.metrics)
    assert list(fresh.parent.iterdir()) == []

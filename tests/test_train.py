"""The training loop (atml.train): every family, early stopping, kept weights, augmentation, EMA; real ECG segments."""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import small_space

from atml.config import space_from_dict
from atml.data import DataSpec
from atml.models import build_model, family_names
from atml.train import TrainConfig, evaluate, fit
from atml.trial import prepare_data


@pytest.fixture(scope="module")
def iesd_txt(txt_sample, tmp_path_factory):
    """The real IESD text segments, split by subject (3 subjects: 2 train, 1 val)."""
    spec = DataSpec(path=str(txt_sample), val_fraction=0.34, split_seed=0)
    return prepare_data(spec, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    spec = DataSpec(synthetic_subjects=10, synthetic_per_subject=30, synthetic_seed=3)
    return prepare_data(spec, tmp_path_factory.mktemp("cache"))


def test_split_has_no_subject_in_two_parts(iesd_txt):
    s = iesd_txt.split_summary
    assert s["train"]["subjects"] == 2 and s["val"]["subjects"] == 1
    assert s["train"]["segments"] + s["val"]["segments"] == 344


@pytest.mark.parametrize("family", family_names())
def test_every_family_trains_one_epoch_on_real_segments(iesd_txt, family):
    torch.manual_seed(0)
    d = iesd_txt
    model = build_model(family, in_channels=d.n_leads, n_classes=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = fit(model, d.x_train, d.y_train, d.x_val, d.y_val, TrainConfig(epochs=1, batch_size=32))
    assert res.epochs_run == 1 and res.best_epoch == 0
    m = res.metrics
    assert 0.0 <= m["f1"] <= 1.0 and math.isfinite(m["val_loss"]) and math.isfinite(m["train_loss"])
    assert m["tn"] + m["fp"] + m["fn"] + m["tp"] == len(d.y_val)
    changed = [k for k in before if before[k].dtype.is_floating_point and not torch.equal(before[k], res.state_dict[k])]
    assert changed, "weights were updated"


def test_early_stopping_needs_both_stalled_loss_and_gap(synthetic):
    d = synthetic
    frozen = TrainConfig(epochs=8, lr=1e-12, patience=2, gap=-1e9, lr_patience=100)
    res = fit(build_model("afnet", in_channels=1, n_classes=2), d.x_train, d.y_train, d.x_val, d.y_val, frozen)
    assert res.stopped_early and res.epochs_run == 3  # epoch 0 sets the best loss, 2 stalled epochs
    # same stall, but training loss is never `gap` below validation loss -> keeps training
    no_gap = TrainConfig(epochs=5, lr=1e-12, patience=2, gap=1e9, lr_patience=100)
    res = fit(build_model("afnet", in_channels=1, n_classes=2), d.x_train, d.y_train, d.x_val, d.y_val, no_gap)
    assert not res.stopped_early and res.epochs_run == 5


def test_best_epoch_weights_are_kept(synthetic):
    d = synthetic
    torch.manual_seed(1)
    model = build_model("afnet", in_channels=1, n_classes=2, width=6, depth=2)
    res = fit(model, d.x_train, d.y_train, d.x_val, d.y_val, TrainConfig(epochs=4, lr=3e-3))
    fresh = build_model("afnet", in_channels=1, n_classes=2, width=6, depth=2)
    fresh.load_state_dict(res.state_dict)
    again = evaluate(fresh, d.x_val, d.y_val)
    assert again["f1"] == pytest.approx(res.metrics["f1"])
    assert res.metrics["f1"] == max(h["f1"] for h in res.history)


def test_augment_is_seeded_and_off_by_default(synthetic):
    from atml.train import augment

    x = synthetic.x_train[:8]
    assert torch.equal(augment(x, 0.0, torch.Generator().manual_seed(0)), x)
    a = augment(x, 1.0, torch.Generator().manual_seed(0))
    b = augment(x, 1.0, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    res = fit(build_model("afnet", in_channels=1, n_classes=2), synthetic.x_train, synthetic.y_train,
              synthetic.x_val, synthetic.y_val, TrainConfig(epochs=1, augment=0.5))
    assert math.isfinite(res.metrics["val_loss"])


def test_ema_keeps_the_moving_average_and_scores_it(synthetic):
    """With ``ema`` the kept weights are the average, not the last step's, and the quoted
    metrics are the average's own (reloading the kept weights reproduces them)."""
    d = synthetic
    cfg = TrainConfig(epochs=2, lr=3e-3, ema=0.9, keep="last", seed=4)
    torch.manual_seed(2)
    model = build_model("afnet", in_channels=1, n_classes=2, width=6, depth=2)
    res = fit(model, d.x_train, d.y_train, d.x_val, d.y_val, cfg)
    raw = model.state_dict()
    floats = [k for k, v in raw.items() if v.dtype.is_floating_point]
    assert any(not torch.equal(raw[k], res.state_dict[k]) for k in floats)  # the average, not the last step
    fresh = build_model("afnet", in_channels=1, n_classes=2, width=6, depth=2)
    fresh.load_state_dict(res.state_dict)
    assert evaluate(fresh, d.x_val, d.y_val)["val_loss"] == pytest.approx(res.metrics["val_loss"], rel=1e-5)
    with pytest.raises(Exception, match="train.ema"):
        space_from_dict({**small_space(), "train": {"ema": 1.0}})


def test_stretch_changes_the_beat_rate_within_its_range_and_is_seeded(synthetic):
    from atml.train import stretch

    x = torch.zeros(2, 1, 1250)
    x[..., ::50] = 1.0  # one beat every 50 samples
    assert torch.equal(stretch(x, 0.0, torch.Generator().manual_seed(0)), x)
    periods = []
    for seed in range(12):
        a = stretch(x, 0.3, torch.Generator().manual_seed(seed))
        b = stretch(x, 0.3, torch.Generator().manual_seed(seed))
        assert a.shape == x.shape and torch.equal(a, b)
        peaks = torch.nonzero(a[0, 0] > 0.5 * a[0, 0].max()).flatten()
        starts = peaks[torch.cat([torch.tensor([True]), peaks.diff() > 2])]  # first sample of each beat
        periods.append(float(starts.diff().float().median()))
    assert all(50 / 1.3 - 2 <= p <= 50 * 1.3 + 2 for p in periods), periods
    assert max(periods) - min(periods) > 10, periods  # the rate really varies between batches
    res = fit(build_model("afnet", in_channels=1, n_classes=2), synthetic.x_train, synthetic.y_train,
              synthetic.x_val, synthetic.y_val, TrainConfig(epochs=1, stretch=0.3))
    assert math.isfinite(res.metrics["val_loss"])


def test_bf16_trains_on_the_cpu_and_keeps_float32_weights(synthetic):
    """Mixed precision changes the arithmetic, not what is kept: float32 weights on the CPU."""
    from atml.train import predict_proba

    torch.manual_seed(0)
    d = synthetic
    model = build_model("afnet", in_channels=1, n_classes=2, width=6, depth=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = fit(model, d.x_train, d.y_train, d.x_val, d.y_val, TrainConfig(epochs=2, precision="bf16", augment=0.3))
    assert res.epochs_run == 2 and math.isfinite(res.metrics["val_loss"]) and 0 <= res.metrics["f1"] <= 1
    assert all(v.device.type == "cpu" for v in res.state_dict.values())
    floats = [k for k, v in res.state_dict.items() if v.dtype.is_floating_point]
    assert all(res.state_dict[k].dtype == torch.float32 for k in floats)
    assert any(not torch.equal(before[k], res.state_dict[k]) for k in floats)
    proba, logits = predict_proba(model, d.x_val, precision="bf16")
    assert proba.dtype == logits.dtype and proba.shape == (len(d.y_val), 2)
    fp32 = fit(build_model("afnet", in_channels=1, n_classes=2, width=6, depth=2), d.x_train, d.y_train, d.x_val,
               d.y_val, TrainConfig(epochs=1))
    assert fp32.history[0]["train_loss"] != res.history[0]["train_loss"]  # bf16 really ran


def test_fp16_needs_cuda(synthetic):
    from atml.device import DeviceError

    d = synthetic
    with pytest.raises(DeviceError, match="train.precision fp16 needs a CUDA device"):
        fit(build_model("afnet", in_channels=1, n_classes=2), d.x_train, d.y_train, d.x_val, d.y_val,
            TrainConfig(epochs=1, precision="fp16"), device="cpu")


def test_fit_trains_where_it_is_told_and_the_same_seed_gives_the_same_run(synthetic):
    d = synthetic
    runs = []
    for device in (None, "cpu"):
        torch.manual_seed(1)
        model = build_model("sepnet", in_channels=1, n_classes=2, width=8, depth=2)
        runs.append(fit(model, d.x_train, d.y_train, d.x_val, d.y_val,
                        TrainConfig(epochs=1, augment=0.5, stretch=0.2, seed=4), device=device))
        assert next(model.parameters()).device.type == "cpu"
    a, b = runs
    assert a.history == b.history and all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)

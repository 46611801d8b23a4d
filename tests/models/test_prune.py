"""Structured pruning and fake quantisation on every family: the file really shrinks, a
pruned model rebuilds from its recorded shapes, the shapes do not depend on the weights,
and QAT weights sit on the int8 grid the deployed model uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atml.data import DataSpec
from atml.models import build_model, count_parameters, family_names, model_from_checkpoint, shape_plan
from atml.models.fakequant import attach, quantize_weight
from atml.models.prune import prune_channels, pruned_copy, schedule
from atml.onnx.convert import export_onnx, onnx_size_kb
from atml.trial import prepare_data


@pytest.fixture(scope="module")
def segments(txt_sample, tmp_path_factory) -> torch.Tensor:
    """Real IESD segments (250 Hz, 1250 samples), preprocessed as a trial sees them."""
    d = prepare_data(DataSpec(path=str(txt_sample), val_fraction=0.34, split_seed=0), tmp_path_factory.mktemp("c"))
    return d.x_val[:16].cpu()


@pytest.mark.parametrize("family", family_names())
def test_pruning_half_the_channels_shrinks_the_file_and_rebuilds_exactly(family, segments):
    torch.manual_seed(0)
    model = build_model(family, in_channels=1, n_classes=2).eval()
    kb, params = onnx_size_kb(model, 1, 1250), count_parameters(model)
    fresh = build_model(family, in_channels=1, n_classes=2)
    plan = prune_channels(model, 0.5, 1, 1250)
    assert plan and count_parameters(model) < 0.45 * params
    assert onnx_size_kb(model, 1, 1250) < 0.6 * kb  # smaller file, not a dense one with zeros
    with torch.no_grad():
        out = model(segments)
    assert out.shape == (16, 2) and torch.isfinite(out).all()
    # the checkpoint's record of it rebuilds the same network from a fresh model
    ck = {"family": family, "in_channels": 1, "n_classes": 2, "hparams": {}, "shapes": plan,
          "state_dict": model.state_dict()}
    with torch.no_grad():
        assert torch.equal(model_from_checkpoint(ck)(segments), out)
    # the shapes depend on the architecture and the amount, not on the weights
    assert shape_plan(pruned_copy(fresh, 0.5, 1, 1250), fresh) == plan


def test_twelve_lead_input_and_the_classes_are_never_pruned():
    model = build_model("resnet1d", in_channels=12, n_classes=9)
    prune_channels(model, 0.6, 12, 1000)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv1d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert convs[0].in_channels == 12 and linears[-1].out_features == 9
    assert model(torch.zeros(2, 12, 1000)).shape == (2, 9)


def test_an_iterative_schedule_ends_at_the_amount():
    assert schedule(0.5) == [0.5]
    ratios = schedule(0.6, 3)
    assert len(ratios) == 3 and np.prod([1 - r for r in ratios]) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        schedule(1.0)


def test_fake_quantised_weights_sit_on_the_symmetric_per_channel_int8_grid(segments):
    torch.manual_seed(1)
    model = build_model("afnet", in_channels=1, n_classes=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fq = attach(model)
    model.train()
    model(segments)  # ranges of the activations
    model.eval()
    with torch.no_grad():
        quantised = model(segments)
    sd = fq.state_dict()
    assert set(sd) == set(before)  # the usual keys
    w = sd["stem.conv.weight"] if "stem.conv.weight" in sd else next(v for k, v in sd.items() if k.endswith("weight")
                                                                       and v.dim() == 3)
    scale = w.reshape(w.shape[0], -1).abs().amax(1) / 127
    levels = w.reshape(w.shape[0], -1) / scale[:, None]
    assert torch.allclose(levels, levels.round(), atol=1e-3) and levels.abs().max() <= 127 + 1e-3
    fq.remove()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items() if "running" not in k
               and "num_batches" not in k)  # removing it leaves the float weights as they were
    with torch.no_grad():
        plain = model(segments)
    assert not torch.equal(plain, quantised)  # it did change what the forward pass computed
    assert torch.equal(quantize_weight(w), w)  # on the grid already: a fixed point


def test_exported_qat_weights_keep_their_grid_through_the_batchnorm_fold(segments):
    """Folding BatchNorm scales each output channel: the per-channel grid is the same."""
    import onnx
    from onnx import numpy_helper

    torch.manual_seed(2)
    model = build_model("afnet", in_channels=1, n_classes=2)
    fq = attach(model)
    model.train()
    for _ in range(3):
        model(segments)
    sd = fq.state_dict()
    fq.remove()
    model.load_state_dict(sd)
    model.eval()
    graph = onnx.load_from_string(export_onnx(model, 1, 1250)).graph
    convs = [numpy_helper.to_array(i) for i in graph.initializer if i.dims and len(i.dims) == 3]
    assert convs
    for w in convs:
        flat = w.reshape(w.shape[0], -1).astype(np.float64)
        levels = flat / (np.abs(flat).max(1, keepdims=True) / 127)
        assert np.allclose(levels, levels.round(), atol=2e-3)

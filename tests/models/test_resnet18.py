"""The resnet18 preset of the ResNet1D family: layout, size, width multiplier, ONNX, and
how a search space that sets it is checked."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from atml.cli import main
from atml.config import space_from_dict
from atml.errors import SpaceError
from atml.models import build_model, count_parameters, family_presets
from atml.models.resnet1d import BasicBlock1D, resnet18_widths


def _resnet18(multiplier: float = 1.0, **hp: Any) -> nn.Module:
    return build_model("resnet1d", in_channels=12, n_classes=9, preset="resnet18", width_multiplier=multiplier, **hp)


def _convs(block: BasicBlock1D) -> tuple[nn.Conv1d, nn.Conv1d]:
    return block.conv1[0], block.conv2[0]


def test_layout_is_resnet18() -> None:
    model = _resnet18()
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock1D)]
    assert len(blocks) == 8
    assert len(model.blocks) == 4 and all(len(stage) == 2 for stage in model.blocks)
    assert [stage[-1].conv2[0].out_channels for stage in model.blocks] == [64, 128, 256, 512]
    stem_conv, pool = model.stem[0][0], model.stem[1]
    assert (stem_conv.in_channels, stem_conv.out_channels, stem_conv.kernel_size, stem_conv.stride) == (12, 64, (7,), (2,))
    assert isinstance(pool, nn.MaxPool1d) and pool.stride == 2
    # stride 2 and a 1x1 projection shortcut at the start of stages 2-4 only
    for i, stage in enumerate(model.blocks):
        first, second = stage
        assert _convs(first)[0].stride == ((1,) if i == 0 else (2,))
        assert isinstance(first.shortcut, nn.Identity) == (i == 0)
        if i:
            assert first.shortcut[0].kernel_size == (1,)
        assert isinstance(second.shortcut, nn.Identity) and _convs(second)[0].stride == (1,)
        assert all(c.kernel_size == (3,) for b in stage for c in _convs(b))
    # 18 weighted layers: the stem, 16 block convs, the linear head
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d) and m.kernel_size != (1,)]
    assert len(convs) + 1 == 18
    assert model.head.fc.in_features == 512 and model.head.fc.out_features == 9


def test_parameter_count_at_multiplier_one() -> None:
    # 1D ResNet-18 with kernel-3 blocks: ~3.84 M parameters (3,853,449 for 12 leads, 9 classes)
    n = count_parameters(_resnet18())
    assert 3_800_000 <= n <= 3_900_000, n
    assert count_parameters(build_model("resnet1d", in_channels=1, n_classes=2, preset="resnet18")) < n


def test_multiplier_scales_widths_and_size() -> None:
    assert resnet18_widths(1.0) == (64, 128, 256, 512)
    assert resnet18_widths(0.25) == (16, 32, 64, 128)
    assert resnet18_widths(0.125) == (8, 16, 32, 64)
    assert resnet18_widths(0.0625) == (4, 8, 16, 32)
    sizes = {}
    for m in (0.125, 0.25, 0.5, 1.0):
        model = _resnet18(m)
        assert [stage[-1].conv2[0].out_channels for stage in model.blocks] == list(resnet18_widths(m))
        sizes[m] = count_parameters(model)
    # block weights grow with the square of the width: about 4x per doubling
    for lo, hi in ((0.125, 0.25), (0.25, 0.5), (0.5, 1.0)):
        assert 3.5 < sizes[hi] / sizes[lo] < 4.1, sizes


def test_preset_ignores_the_custom_layout_and_keeps_kernel_for_the_stem() -> None:
    torch.manual_seed(0)
    a = _resnet18(0.125).state_dict()
    torch.manual_seed(0)
    b = _resnet18(0.125, width=8, depth=2, growth=1.0, stride=1, stem_stride=8).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    wide = _resnet18(0.125, kernel_size=15)
    assert wide.stem[0][0].kernel_size == (15,) and _convs(wide.blocks[0][0])[0].kernel_size == (3,)
    # the custom preset (the default) ignores width_multiplier
    assert count_parameters(build_model("resnet1d", in_channels=1, n_classes=2, width_multiplier=0.5)) == \
        count_parameters(build_model("resnet1d", in_channels=1, n_classes=2))
    assert family_presets("resnet1d")["resnet18"] == ("width", "depth", "growth", "stride", "stem_stride")
    assert family_presets("afnet") == {}


@pytest.mark.parametrize("samples", [250, 1250, 5000])
def test_forward_any_length(samples: int) -> None:
    model = _resnet18(0.125).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 12, samples))
    assert y.shape == (2, 9) and torch.isfinite(y).all()


def test_onnx_export_matches_torch() -> None:
    ort = pytest.importorskip("onnxruntime")
    from atml.onnx.convert import export_onnx, onnx_size_kb

    torch.manual_seed(0)
    model = _resnet18(0.25, kernel_size=15).eval()
    blob = export_onnx(model, 12, 2500)
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 12, 2500)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert got.shape == (batch, 9) and abs(got - expected).max() < 1e-4
    # float32 weights: ~4 bytes a parameter (962 KB at 0.25 with the kernel-7 stem)
    assert 900 < onnx_size_kb(model, 12, 2500) < 1024


@pytest.mark.parametrize(
    ("hp", "expected"),
    [
        ({"preset": "resnet50"}, r"^invalid value for 'preset' in model family 'resnet1d': 'resnet50' "
                                 r"\(must be one of: custom, resnet18\)$"),
        ({"preset": 18}, r"'preset' .* 18 \(must be one of"),
        ({"preset": "resnet18", "width_multiplier": 0.0}, r"'width_multiplier' .* 0\.0 \(must be in \[0\.0625, 2\.0\]\)"),
        ({"preset": "resnet18", "width_multiplier": 4}, r"'width_multiplier' .* 4\.0 \(must be in"),
        ({"preset": "resnet18", "width_multiplier": "0.5"}, r"'width_multiplier' .* '0\.5' \(must be a number\)"),
    ],
)
def test_bad_preset_values(hp: dict[str, Any], expected: str) -> None:
    with pytest.raises(SpaceError, match=expected):
        build_model("resnet1d", in_channels=12, n_classes=9, **hp)


# --------------------------------------------------------------------------
# the preset in a search space

_SPACE: dict[str, Any] = {
    "study": {"name": "r18"},
    "budget": {"n_trials": 1},
    "model": {"families": {"resnet1d": {"preset": "resnet18",
                                        "width_multiplier": {"type": "float", "low": 0.125, "high": 0.25}}}},
}


def _space(**resnet: Any) -> dict[str, Any]:
    raw = copy.deepcopy(_SPACE)
    fam = raw["model"]["families"]["resnet1d"]
    for k, v in resnet.items():
        if v is None:
            fam.pop(k, None)
        else:
            fam[k] = v
    return raw


@pytest.mark.parametrize(
    ("resnet", "expected"),
    [
        ({"preset": "resnet50"},
         "r18.yaml: model.families.resnet1d: invalid value for 'preset' in model family 'resnet1d': "
         "'resnet50' (must be one of: custom, resnet18)"),
        ({"preset": {"type": "categorical", "choices": ["custom", "resnet34"]}},
         "r18.yaml: model.families.resnet1d.preset: invalid value for 'preset'"),
        ({"width_multiplier": {"type": "float", "low": 0.0, "high": 0.5}},
         "r18.yaml: model.families.resnet1d.width_multiplier: invalid value for 'width_multiplier' in model "
         "family 'resnet1d': 0.0 (must be in [0.0625, 2.0])"),
        ({"width_multiplier": 3.0},
         "r18.yaml: model.families.resnet1d: invalid value for 'width_multiplier' in model family 'resnet1d': "
         "3.0 (must be in [0.0625, 2.0])"),
        ({"depth": 3},
         "r18.yaml: model.families.resnet1d.depth: not used by resnet1d preset 'resnet18', which ignores "
         "depth, growth, stem_stride, stride, width; remove it or choose a preset that uses it"),
        ({"preset": None, "width": 16},
         "r18.yaml: model.families.resnet1d.width_multiplier: not used by resnet1d preset 'custom' (the default)"),
    ],
)
def test_bad_preset_space_is_one_line_exit_2(tmp_path, write_space, capsys, resnet, expected) -> None:
    p = write_space(_space(**resnet), "r18.yaml")
    db = tmp_path / "s.db"
    code = main(["search", "--space", str(p), "--storage", f"sqlite:///{db}", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("atml: error: " + expected), err
    assert not db.exists()


def test_shared_key_unused_by_the_preset_is_named_there() -> None:
    raw = _space()
    raw["model"]["families"]["afnet"] = {}
    raw["model"]["width"] = 8
    with pytest.raises(SpaceError, match=r"^<space>: model\.width: not used by resnet1d preset 'resnet18'"):
        space_from_dict(raw)


def test_searched_preset_keeps_keys_of_either_preset() -> None:
    import optuna

    raw = _space(preset={"type": "categorical", "choices": ["custom", "resnet18"]},
                 depth={"type": "int", "low": 2, "high": 3})
    space = space_from_dict(raw)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(12):
        cfg = space.suggest(study.ask())
        model = build_model(cfg.family, in_channels=1, n_classes=2, **cfg.hparams)
        n_blocks = sum(isinstance(m, BasicBlock1D) for m in model.modules())
        assert n_blocks == (8 if cfg.hparams["preset"] == "resnet18" else cfg.hparams["depth"])
        seen.add(cfg.hparams["preset"])
    assert seen == {"custom", "resnet18"}

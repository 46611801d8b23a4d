"""Tests for atml.models: shapes, gradient flow, random sweeps, ONNX, errors."""

from __future__ import annotations

import io
import math
import random
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from atml.errors import SpaceError
from atml.models import (
    SPACE_HINTS,
    build_model,
    count_parameters,
    family_names,
    family_params,
)

FAMILIES = family_names()


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # One thread keeps timings stable on shared CI boxes; restored so other
    # test packages in the same session are unaffected.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _corner(family: str, pick: str) -> dict[str, Any]:
    """The smallest or largest corner of a family's SPACE_HINT box.

    Strides and groups keep their defaults: the corners are about parameter
    count, and more groups means fewer parameters.
    """
    out: dict[str, Any] = {}
    for name, rng in SPACE_HINTS[family].items():
        values = list(rng) if isinstance(rng, list) else [rng[0], rng[1]]
        lo, hi = min(values), max(values)
        if name in ("stride", "stem_stride", "groups"):
            continue
        out[name] = lo if pick == "small" else hi
    return out


def _random_point(family: str, rng: random.Random) -> dict[str, Any]:
    point: dict[str, Any] = {}
    for name, space in SPACE_HINTS[family].items():
        if isinstance(space, list):
            point[name] = rng.choice(space)
        elif isinstance(space[0], int) and isinstance(space[1], int):
            point[name] = rng.randint(space[0], space[1])
        else:
            point[name] = rng.uniform(float(space[0]), float(space[1]))
    return point


# --------------------------------------------------------------------------
# registry


def test_family_names() -> None:
    assert FAMILIES == ("afnet", "resnet1d", "sepnet", "inception1d")


@pytest.mark.parametrize("family", FAMILIES)
def test_family_params_and_hints(family: str) -> None:
    params = family_params(family)
    assert "in_channels" not in params and "n_classes" not in params
    for common in ("width", "depth", "kernel_size", "dropout"):
        assert common in params
    assert isinstance(params["width"], int) and isinstance(params["dropout"], float)
    # Every hinted name must be a real hyperparameter, and the defaults must
    # lie inside the hinted ranges so the default is a point of the space.
    for name, space in SPACE_HINTS[family].items():
        assert name in params, name
        default = params[name]
        if isinstance(space, list):
            assert default in space, (name, default, space)
        else:
            assert space[0] <= default <= space[1], (name, default, space)


# --------------------------------------------------------------------------
# shapes


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("corner", ["default", "small", "large"])
def test_forward_shapes(family: str, corner: str) -> None:
    hp = {} if corner == "default" else _corner(family, corner)
    torch.manual_seed(0)
    m1 = build_model(family, in_channels=1, n_classes=2, **hp)
    y = m1(torch.randn(4, 1, 1250))
    assert y.shape == (4, 2) and y.dtype == torch.float32
    assert torch.isfinite(y).all()
    m12 = build_model(family, in_channels=12, n_classes=5, **hp)
    y = m12(torch.randn(2, 12, 2500))
    assert y.shape == (2, 5) and torch.isfinite(y).all()
    # Shortest supported input, in eval mode with a single sample.
    m12.eval()
    with torch.no_grad():
        y = m12(torch.randn(1, 12, 250))
    assert y.shape == (1, 5) and torch.isfinite(y).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_deterministic_construction(family: str) -> None:
    torch.manual_seed(123)
    a = build_model(family, in_channels=1, n_classes=2).state_dict()
    torch.manual_seed(123)
    b = build_model(family, in_channels=1, n_classes=2).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_numpy_scalars_become_plain_types() -> None:
    np = pytest.importorskip("numpy")
    model = build_model(
        "sepnet", in_channels=np.int64(1), n_classes=2, width=np.int64(10), groups=4, growth=np.float32(1.2)
    )
    assert model.hparams["width"] == 10 and type(model.hparams["width"]) is int
    assert type(model.hparams["growth"]) is float
    # width 10 is rounded up to 12 channels so groups=4 divides it.
    assert model(torch.randn(2, 1, 300)).shape == (2, 2)


@pytest.mark.parametrize("family", FAMILIES)
def test_random_sweep(family: str) -> None:
    rng = random.Random(f"sweep-{family}")
    for _ in range(60):
        hp = _random_point(family, rng)
        in_ch = rng.choice([1, 12])
        samples = rng.randint(250, 2500)
        model = build_model(family, in_channels=in_ch, n_classes=3, **hp)
        model.eval()
        with torch.no_grad():
            y = model(torch.randn(2, in_ch, samples))
        assert y.shape == (2, 3), hp
        assert torch.isfinite(y).all(), hp


# --------------------------------------------------------------------------
# training


def _sine_problem(n: int = 32, samples: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: 1.5 Hz sine, class 1: 8 Hz sine (250 Hz sampling), plus noise."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    freq = torch.where(y == 1, 8.0, 1.5).unsqueeze(1)
    t = torch.arange(samples) / 250.0
    phase = torch.rand(n, 1, generator=g) * 2 * math.pi
    x = torch.sin(2 * math.pi * freq * t + phase) + 0.2 * torch.randn(n, samples, generator=g)
    return x.unsqueeze(1), y


@pytest.mark.parametrize("family", FAMILIES)
def test_trains(family: str) -> None:
    torch.manual_seed(0)
    model = build_model(family, in_channels=1, n_classes=2)
    x, y = _sine_problem()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(20):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if step == 0:
            # Every parameter must be reached by the gradient.
            for name, p in model.named_parameters():
                assert p.grad is not None, name
                assert torch.isfinite(p.grad).all(), name
                assert p.grad.abs().sum() > 0, name
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.6 * losses[0], losses


# --------------------------------------------------------------------------
# ONNX

# Defaults plus one variant per family that exercises a different code path
# (no SE, identity shortcuts, channel shuffle, partial residual group).
_EXPORT_CASES = [(f, {}) for f in FAMILIES] + [
    ("afnet", {"width": 4, "depth": 2, "kernel_size": 3, "se_reduction": 0}),
    ("afnet", {"rhythm": 2}),
    ("afnet", {"rhythm": 1, "depth": 1, "se_reduction": 0}),
    ("resnet1d", {"stride": 1, "growth": 1.0}),
    ("resnet1d", {"preset": "resnet18", "width_multiplier": 0.125}),
    ("sepnet", {"groups": 2, "expansion": 1}),
    ("sepnet", {"groups": 4, "width": 10}),
    ("inception1d", {"depth": 4}),
]


def _export(model: torch.nn.Module, in_channels: int) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but needs no onnxscript.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(2, in_channels, 1250),),
            buf,
            opset_version=17,
            dynamo=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )
    return buf.getvalue()


@pytest.mark.parametrize(("family", "hp"), _EXPORT_CASES)
def test_onnx_export_matches_torch(family: str, hp: dict[str, Any]) -> None:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    pytest.importorskip("onnx", reason="onnx not installed")
    torch.manual_seed(0)
    in_ch = 12 if family == "resnet1d" else 1
    model = build_model(family, in_channels=in_ch, n_classes=3, **hp).eval()
    blob = _export(model, in_ch)
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, in_ch, 1250)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(None, {"x": x.numpy()})
        assert got.shape == (batch, 3)
        assert abs(got - expected).max() < 1e-4


def test_smallest_afnet_is_tiny() -> None:
    model = build_model("afnet", in_channels=1, n_classes=2, **_corner("afnet", "small"))
    assert count_parameters(model) < 16_000
    default = build_model("afnet", in_channels=1, n_classes=2)
    assert count_parameters(default) < 16_000


def test_rhythm_branch_tells_a_regular_beat_from_an_irregular_one() -> None:
    """The autocorrelation the AFNet rhythm branch reads peaks at the beat period of a
    regular spike train and stays low at every lag for an irregular one."""
    from atml.models.blocks import RhythmFeatures

    rf = RhythmFeatures(1, 1, lags=24, hidden=4)
    with torch.no_grad():
        rf.proj.weight.fill_(1.0)
        rf.proj.bias.zero_()
    regular = torch.zeros(1, 1, 78)
    regular[..., 3::9] = 1.0  # a beat every 9 steps
    irregular = torch.zeros(1, 1, 78)
    t, gaps = 3, [5, 13, 7, 11, 6, 14, 8, 5, 10]
    for gap in gaps:
        irregular[..., t] = 1.0
        t += gap
    with torch.no_grad():
        reg = rf.autocorrelation(regular)[0, 0]
        irr = rf.autocorrelation(irregular)[0, 0]
    assert reg.shape == (24,)
    assert int(reg.argmax()) + 1 == 9 and reg[8] > 0.8 and reg[17] > 0.6  # lags 9 and 18
    assert irr.max() < 0.35
    short = rf.autocorrelation(regular[..., :10])[0, 0]  # 10 steps: lags 10..24 do not exist
    assert (short[9:] == 0).all()


def test_afnet_without_rhythm_keeps_its_weights_layout() -> None:
    plain = build_model("afnet", in_channels=1, n_classes=2)
    assert not any(k.startswith("rhythm") for k in plain.state_dict())
    rhythmic = build_model("afnet", in_channels=1, n_classes=2, rhythm=2)
    extra = count_parameters(rhythmic) - count_parameters(plain)
    assert 0 < extra < 1_000  # the branch is cheap
    assert rhythmic(torch.randn(2, 1, 250)).shape == (2, 2)  # the shortest input still works
    with pytest.raises(SpaceError, match="rhythm"):
        build_model("afnet", in_channels=1, n_classes=2, rhythm=-1)


def test_count_parameters() -> None:
    model = torch.nn.Linear(3, 2)
    assert count_parameters(model) == 8


# --------------------------------------------------------------------------
# errors


def test_unknown_family() -> None:
    with pytest.raises(SpaceError, match=r"unknown model family 'nope' \(known: afnet, "):
        build_model("nope", in_channels=1, n_classes=2)
    with pytest.raises(SpaceError, match="nope"):
        family_params("nope")


@pytest.mark.parametrize("family", FAMILIES)
def test_unknown_hparam(family: str) -> None:
    with pytest.raises(SpaceError) as info:
        build_model(family, in_channels=1, n_classes=2, widht=8)
    msg = str(info.value)
    assert "'widht'" in msg and family in msg and "width" in msg and "dropout" in msg


_BAD_VALUES = [
    ("width", 0),
    ("width", 2.5),
    ("width", True),
    ("depth", 0),
    ("kernel_size", 4),
    ("kernel_size", 1),
    ("dropout", 1.0),
    ("dropout", -0.1),
    ("dropout", "0.1"),
    ("stem_stride", 0),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("name", "value"), _BAD_VALUES)
def test_bad_common_values(family: str, name: str, value: Any) -> None:
    with pytest.raises(SpaceError) as info:
        build_model(family, in_channels=1, n_classes=2, **{name: value})
    msg = str(info.value)
    assert f"'{name}'" in msg and repr(value) in msg and family in msg


@pytest.mark.parametrize(
    ("family", "name", "value"),
    [
        ("afnet", "se_reduction", -1),
        ("afnet", "growth", 0.5),
        ("afnet", "stride", 0),
        ("resnet1d", "growth", 5.0),
        ("sepnet", "expansion", 0),
        ("sepnet", "groups", 0),
        ("inception1d", "bottleneck", 0),
        ("inception1d", "stride", 0),
    ],
)
def test_bad_family_values(family: str, name: str, value: Any) -> None:
    with pytest.raises(SpaceError, match=f"'{name}'.*{family}.*{value}"):
        build_model(family, in_channels=1, n_classes=2, **{name: value})


@pytest.mark.parametrize(("name", "value"), [("in_channels", 0), ("n_classes", 0)])
def test_bad_data_args(name: str, value: int) -> None:
    kwargs: dict[str, Any] = {"in_channels": 1, "n_classes": 2, name: value}
    with pytest.raises(SpaceError, match=name):
        build_model("afnet", **kwargs)

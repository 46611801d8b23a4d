"""atml.device: --device parsed and resolved, --gpus parsed, workers placed on GPUs, fp16 needs CUDA."""

from __future__ import annotations

import pytest
import torch

from atml.device import (
    DeviceError,
    check_precision,
    cuda_count,
    describe,
    parse_device,
    parse_gpus,
    place_workers,
    resolve_device,
)
from atml.errors import AtmlError

NO_CUDA = not torch.cuda.is_available()


@pytest.mark.parametrize(("text", "want"), [("auto", "auto"), ("CPU", "cpu"), (" cuda ", "cuda"),
                                            ("cuda:1", "cuda:1"), ("mps", "mps")])
def test_parse_device_normalises(text, want):
    assert parse_device(text) == want


@pytest.mark.parametrize("text", ["gpu", "cuda:", "cuda:x", "cpu:0", "mps:1", "", "cuda:-1", "tpu"])
def test_parse_device_rejects_other_names_in_one_line(text):
    with pytest.raises(DeviceError) as e:
        parse_device(text)
    assert isinstance(e.value, AtmlError) and "\n" not in str(e.value)
    assert "auto, cpu, cuda, cuda:N, mps" in str(e.value)


def test_auto_takes_cuda_when_present_else_the_cpu():
    assert resolve_device("auto") == ("cpu" if NO_CUDA else "cuda:0")
    assert resolve_device("cpu") == "cpu" and describe("cpu") == "cpu"


@pytest.mark.skipif(not NO_CUDA, reason="checks the error of a machine without CUDA")
@pytest.mark.parametrize("text", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_on_a_machine_without_it_is_one_line(text):
    with pytest.raises(DeviceError, match=rf"--device {text}: no CUDA device on this machine"):
        resolve_device(text)


def test_a_gpu_index_past_the_visible_ones_is_refused():
    n = cuda_count()
    with pytest.raises(DeviceError, match=f"--device cuda:{n + 3}: no"):
        resolve_device(f"cuda:{n + 3}")


def test_parse_gpus():
    assert parse_gpus("0,1,2,3") == (0, 1, 2, 3) and parse_gpus(" 2 ") == (2,)
    for bad in ("", "a", "0,,1", "-1", "0;1"):
        with pytest.raises(DeviceError, match="--gpus: a comma-separated list"):
            parse_gpus(bad)
    with pytest.raises(DeviceError, match="each GPU once"):
        parse_gpus("1,1")


def test_cpu_placement_is_unchanged():
    """Off CUDA: the --workers count (default one per core), no GPUs, the device as given."""
    p = place_workers("auto", 0, cores=4)
    assert (p.device, p.workers, p.gpus) == ("cpu", 4, ())
    assert place_workers("cpu", 8, workers=2).workers == 2 and place_workers("cpu", 8, workers=2).gpus == ()
    assert place_workers("auto", 0, workers=0).workers == 0


def test_cuda_placement_default_is_one_worker_per_visible_gpu():
    p = place_workers("auto", 4, cores=16)
    assert (p.device, p.workers, p.gpus) == ("cuda", 4, (0, 1, 2, 3))
    assert place_workers("cuda", 2).gpus == (0, 1)


def test_workers_per_gpu_and_an_explicit_count_deal_round_robin():
    p = place_workers("auto", 4, gpus=(0, 2), per_gpu=3)
    assert p.workers == 6 and p.gpus == (0, 2, 0, 2, 0, 2) and p.device == "cuda"
    assert place_workers("cuda", 4, gpus=(1, 3), workers=3).gpus == (1, 3, 1)
    assert place_workers("cuda:2", 4, per_gpu=2).gpus == (2, 2)  # a named GPU: all its workers there
    assert place_workers("cuda", 4, workers=0).workers == 0  # --workers 0: create the study only


@pytest.mark.parametrize(("kw", "message"), [
    ({"device": "auto", "n_cuda": 0, "gpus": (0,)}, "--gpus: no CUDA device on this machine"),
    ({"device": "auto", "n_cuda": 0, "per_gpu": 2}, "--workers-per-gpu: no CUDA device on this machine"),
    ({"device": "cpu", "n_cuda": 2, "gpus": (0,)}, "--gpus: --device cpu trains off the GPUs"),
    ({"device": "cuda", "n_cuda": 0}, "--device cuda: no CUDA device on this machine"),
    ({"device": "auto", "n_cuda": 2, "gpus": (0, 2)}, "--gpus: no GPU 2 on this machine (2 visible: 0 to 1)"),
    ({"device": "cuda:2", "n_cuda": 2}, "--device cuda:2: no such GPU (2 visible: cuda:0 to cuda:1)"),
    ({"device": "cuda:1", "n_cuda": 2, "gpus": (0,)}, "--device cuda:1 and --gpus 0 disagree"),
    ({"device": "cuda", "n_cuda": 2, "per_gpu": 0}, "--workers-per-gpu: must be >= 1"),
    ({"device": "cuda", "n_cuda": 2, "per_gpu": 2, "workers": 3}, "give --workers or --workers-per-gpu"),
])
def test_impossible_placements_are_one_line(kw, message):
    with pytest.raises(DeviceError) as e:
        place_workers(kw.pop("device"), kw.pop("n_cuda"), **kw)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_fp16_needs_cuda_bf16_runs_anywhere():
    check_precision(("fp32", "bf16"), "cpu")
    check_precision(("fp16",), "cuda:0")
    with pytest.raises(DeviceError, match="train.precision fp16 needs a CUDA device"):
        check_precision(("fp32", "fp16"), "cpu")
    with pytest.raises(DeviceError, match="fp16"):
        check_precision(("fp16",), "mps")

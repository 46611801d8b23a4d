"""Where a worker trains: ``--device`` parsed and resolved, the device described, workers placed on GPUs.

``auto`` takes the first CUDA device when there is one, else the CPU. A device that is not
there is a :class:`DeviceError` (one line, exit 2), raised before anything is written.
Placement is pure: :func:`place_workers` says which visible GPU each local worker gets,
from the machine's GPU count, so a test can check it on any machine.

torch is imported inside the functions that ask it: parsing and placement need none.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from atml.errors import AtmlError

__all__ = [
    "DEVICES", "DeviceError", "Placement",
    "parse_device", "resolve_device", "cuda_count", "describe", "parse_gpus", "place_workers", "check_precision",
]

DEVICES = "auto, cpu, cuda, cuda:N, mps"
_DEVICE = re.compile(r"(auto|cpu|mps|cuda)(:(\d+))?")


class DeviceError(AtmlError):
    """A device that is not on this machine, or a malformed ``--device`` / ``--gpus``."""


def parse_device(text: str) -> str:
    """``text`` normalised (``CUDA:1`` -> ``cuda:1``); DeviceError unless it is one of :data:`DEVICES`."""
    t = str(text).strip().lower()
    m = _DEVICE.fullmatch(t)
    if m is None or (m.group(2) and m.group(1) != "cuda"):
        raise DeviceError(f"--device: must be one of {DEVICES} (got {text!r})")
    return t


def cuda_count() -> int:
    """CUDA devices this process sees (0 without CUDA or without a CUDA build of torch)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(text: str) -> str:
    """The torch device a ``--device`` value means here: ``cpu``, ``mps`` or ``cuda:N``.

    Raises DeviceError for a device this machine does not have.
    """
    d = parse_device(text)
    if d == "cpu":
        return d
    if d == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise DeviceError("--device mps: no Apple MPS device on this machine")
        return d
    n = cuda_count()
    if d == "auto":
        return "cuda:0" if n else "cpu"
    index = int(d.partition(":")[2] or 0)
    if n == 0:
        raise DeviceError(f"--device {d}: no CUDA device on this machine (torch sees none; use cpu or auto)")
    if index >= n:
        raise DeviceError(f"--device {d}: no such GPU ({n} visible: cuda:0 to cuda:{n - 1})")
    return f"cuda:{index}"


def describe(device: str) -> str:
    """The device as a trial records it: ``cpu``, ``mps`` or ``cuda:0 (NVIDIA H200)``; a GPU picked by
    ``CUDA_VISIBLE_DEVICES`` also names that setting, so two workers' ``cuda:0`` tell apart."""
    if not device.startswith("cuda"):
        return device
    import torch

    index = int(device.partition(":")[2] or 0)
    text = f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"{text} CUDA_VISIBLE_DEVICES={visible}" if visible else text


def parse_gpus(text: str) -> tuple[int, ...]:
    """``--gpus 0,1,3`` -> ``(0, 1, 3)``: indices of visible CUDA devices, each once."""
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or not all(p.isdigit() for p in parts):
        raise DeviceError(f"--gpus: a comma-separated list of GPU indices such as 0,1,2,3 (got {text!r})")
    gpus = tuple(int(p) for p in parts)
    if len(set(gpus)) != len(gpus):
        raise DeviceError(f"--gpus: each GPU once (got {text!r}); --workers-per-gpu runs several on one")
    return gpus


@dataclass(frozen=True)
class Placement:
    """The local workers of a search: what each is told to train on, and its GPU."""

    device: str  # the --device every worker gets: cpu, mps, or cuda (its one visible GPU)
    workers: int = 0  # worker processes
    gpus: tuple[int, ...] = ()  # per worker: the index of its GPU among this process's visible ones


def place_workers(device: str, n_cuda: int, *, workers: int | None = None, gpus: tuple[int, ...] | None = None,
                  per_gpu: int | None = None, cores: int = 1) -> Placement:
    """Where the local workers of a search run, for ``--device`` ``device`` on a machine with ``n_cuda`` GPUs.

    On the CPU (or MPS): ``workers`` processes (default one per core). On CUDA: the GPUs of
    ``gpus`` (default: ``cuda:N`` alone, or every visible GPU), ``per_gpu`` workers on each
    (default 1); an explicit ``workers`` count is dealt round-robin over those GPUs instead.
    Each worker sees only its GPU (``CUDA_VISIBLE_DEVICES``), as ``cuda``.
    """
    d = parse_device(device)
    if per_gpu is not None and per_gpu < 1:
        raise DeviceError(f"--workers-per-gpu: must be >= 1 (got {per_gpu})")
    if workers is not None and workers < 0:
        raise DeviceError(f"--workers: must be >= 0 (got {workers})")
    if workers is not None and per_gpu is not None:
        raise DeviceError("give --workers or --workers-per-gpu, not both")
    on_cuda = d.startswith("cuda") or (d == "auto" and n_cuda > 0)
    if not on_cuda:
        if gpus is not None or per_gpu is not None:
            flag = "--gpus" if gpus is not None else "--workers-per-gpu"
            why = "no CUDA device on this machine" if n_cuda == 0 else f"--device {d} trains off the GPUs"
            raise DeviceError(f"{flag}: {why}")
        n = workers if workers is not None else max(1, cores)
        return Placement(device="cpu" if d == "auto" else d, workers=n)
    if n_cuda == 0:
        raise DeviceError(f"--device {d}: no CUDA device on this machine (torch sees none; use cpu or auto)")
    index = d.partition(":")[2]
    if index:
        if int(index) >= n_cuda:
            raise DeviceError(f"--device {d}: no such GPU ({n_cuda} visible: cuda:0 to cuda:{n_cuda - 1})")
        if gpus is not None and gpus != (int(index),):
            raise DeviceError(f"--device {d} and --gpus {','.join(map(str, gpus))} disagree: give one of them")
        gpus = (int(index),)
    elif gpus is None:
        gpus = tuple(range(n_cuda))
    missing = [g for g in gpus if g >= n_cuda]
    if missing:
        raise DeviceError(f"--gpus: no GPU {missing[0]} on this machine ({n_cuda} visible: 0 to {n_cuda - 1})")
    n = workers if workers is not None else len(gpus) * (per_gpu or 1)
    return Placement(device="cuda", workers=n, gpus=tuple(gpus[i % len(gpus)] for i in range(n)))


def check_precision(precisions: Iterable[str], device: str) -> None:
    """DeviceError when ``fp16`` is among ``precisions`` on a device that is not CUDA (bf16 runs anywhere)."""
    if "fp16" in set(precisions) and not device.startswith("cuda"):
        raise DeviceError(f"train.precision fp16 needs a CUDA device (this trains on {device}); use bf16 or fp32")

"""--device, --gpus and train.precision through the real command line: a device this machine lacks is
one line on stderr and exit 2, and nothing is written (no database, no cache, no study folder)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from _helpers import small_space

ROOT = Path(__file__).resolve().parents[2]
NO_CUDA = not torch.cuda.is_available()
needs_no_cuda = pytest.mark.skipif(not NO_CUDA, reason="checks the errors of a machine without CUDA")


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, **(env or {})})


def _one_error_line(r: subprocess.CompletedProcess, *parts: str) -> None:
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("atml: error: "), r.stderr
    for part in parts:
        assert part in lines[0], lines[0]


def _search(atml_cmd: list[str], tmp: Path, space: str = "search_spaces/afib.yaml") -> list[str]:
    return [*atml_cmd, "search", "--space", space, "--storage", f"sqlite:///{tmp / 'atml.db'}", "--no-progress"]


@needs_no_cuda
@pytest.mark.parametrize(("flags", "message"), [
    (["--device", "cuda"], "--device cuda: no CUDA device on this machine"),
    (["--device", "cuda:3"], "--device cuda:3: no CUDA device"),
    (["--gpus", "0,1"], "--gpus: no CUDA device on this machine"),
    (["--workers-per-gpu", "2"], "--workers-per-gpu: no CUDA device"),
])
def test_search_on_a_missing_device_writes_nothing(tmp_path, atml_cmd, flags, message):
    r = _run(_search(atml_cmd, tmp_path) + flags)
    _one_error_line(r, message)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("flags", "message"), [
    (["--device", "gpu"], "--device: must be one of auto, cpu, cuda, cuda:N, mps (got 'gpu')"),
    (["--gpus", "0,x"], "--gpus: a comma-separated list of GPU indices"),
    (["--device", "cpu", "--gpus", "0"], "--gpus:"),
])
def test_search_with_a_malformed_device_writes_nothing(tmp_path, atml_cmd, flags, message):
    r = _run(_search(atml_cmd, tmp_path) + flags)
    _one_error_line(r, message)
    assert list(tmp_path.iterdir()) == []


@needs_no_cuda
def test_atml_device_environment_is_the_default(tmp_path, atml_cmd):
    r = _run(_search(atml_cmd, tmp_path), env={"ATML_DEVICE": "cuda"})
    _one_error_line(r, "--device cuda: no CUDA device")
    assert list(tmp_path.iterdir()) == []


@needs_no_cuda
def test_worker_on_a_missing_device_touches_no_storage(tmp_path, atml_cmd):
    db = tmp_path / "atml.db"
    r = _run([*atml_cmd, "worker", "--storage", f"sqlite:///{db}", "--study", "s", "--device", "cuda:1"])
    _one_error_line(r, "--device cuda:1: no CUDA device")
    assert list(tmp_path.iterdir()) == []


@needs_no_cuda
def test_export_refit_on_a_missing_device_writes_nothing(tmp_path, atml_cmd):
    db = tmp_path / "atml.db"
    r = _run([*atml_cmd, "export", "--storage", f"sqlite:///{db}", "--study", "s", "--out",
              str(tmp_path / "m.onnx"), "--refit", "--device", "cuda"])
    _one_error_line(r, "--device cuda: no CUDA device")
    assert list(tmp_path.iterdir()) == []


def test_fp16_on_the_cpu_is_refused_before_the_study_exists(tmp_path, atml_cmd, write_space):
    space = small_space("half")
    space["train"]["precision"] = {"type": "categorical", "choices": ["fp32", "fp16"]}
    path = write_space(space)
    store = tmp_path / "store"
    store.mkdir()
    r = _run([*atml_cmd, "search", "--space", str(path), "--storage", f"sqlite:///{store / 'atml.db'}",
              "--device", "cpu", "--workers", "1", "--no-progress"])
    _one_error_line(r, "train.precision fp16 needs a CUDA device (this trains on cpu)")
    assert list(store.iterdir()) == []


def test_a_precision_atml_does_not_know_is_a_space_error(tmp_path, atml_cmd, write_space):
    space = small_space("p")
    space["train"]["precision"] = "fp8"
    r = _run([*atml_cmd, "search", "--space", str(write_space(space)), "--storage",
              f"sqlite:///{tmp_path / 'x' / 'atml.db'}", "--device", "cpu", "--no-progress"])
    _one_error_line(r, "train.precision: must be one of fp32, bf16, fp16 (got 'fp8')")
    assert not (tmp_path / "x").exists()

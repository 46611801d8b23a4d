"""Local workers on GPUs: which worker gets which GPU, and the environment the started processes see."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atml.device import DeviceError, place_workers
from atml.search.coordinator import SearchOptions, placement, worker_argv
from atml.search.local import LocalWorkers, worker_envs


def test_each_worker_sees_only_its_gpu():
    gpus = place_workers("auto", 4, gpus=(0, 1, 2, 3), per_gpu=2).gpus
    envs = worker_envs(gpus)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "2", "3", "0", "1", "2", "3"]
    assert all(set(e) == {"CUDA_VISIBLE_DEVICES"} for e in envs)


def test_gpu_indices_count_among_the_gpus_this_process_sees():
    """Under CUDA_VISIBLE_DEVICES=4,6 torch numbers those two 0 and 1: a worker on GPU 1 gets 6."""
    assert [e["CUDA_VISIBLE_DEVICES"] for e in worker_envs((0, 1, 1), visible="4, 6")] == ["4", "6", "6"]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in worker_envs((0,), visible="GPU-5f1c")] == ["GPU-5f1c"]
    assert worker_envs(()) == []


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads the workers' environment from /proc")
def test_started_workers_see_their_gpu_and_thread_settings(monkeypatch):
    """The real standby worker processes of a search, read back from /proc before they are cancelled."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    envs = worker_envs(place_workers("cuda", 2, per_gpu=2).gpus)
    workers = LocalWorkers(4, threads=3, envs=envs)
    try:
        seen = [_environ(p.pid) for p, _ in workers.procs]
    finally:
        workers.cancel()
    assert [e.get("CUDA_VISIBLE_DEVICES") for e in seen] == ["0", "1", "0", "1"]
    assert all(e["OMP_NUM_THREADS"] == "3" and e["MKL_NUM_THREADS"] == "3" for e in seen)
    plain = LocalWorkers(1, threads=1)  # a CPU search: nothing added
    try:
        assert "CUDA_VISIBLE_DEVICES" not in _environ(plain.procs[0][0].pid)
    finally:
        plain.cancel()
    assert all(p.poll() is not None for p, _ in workers.procs + plain.procs)


def test_search_placement_on_this_machine():
    opts = SearchOptions(space_path="s.yaml", storage="sqlite://", workers=None, device="cpu")
    p = placement(opts)
    assert p.device == "cpu" and p.gpus == () and p.workers >= 1
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="--gpus: no CUDA device"):
            placement(SearchOptions(space_path="s.yaml", storage="sqlite://", workers=None, gpus=(0,)))
        assert placement(SearchOptions(space_path="s.yaml", storage="sqlite://", workers=None)).device == "cpu"
    argv = worker_argv(opts, "st", "/tmp/a", "sqlite:///x.db", "cuda")
    assert argv[argv.index("--device") + 1] == "cuda"

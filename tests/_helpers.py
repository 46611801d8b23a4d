"""Plain helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import signal
import subprocess


def small_space(name: str = "t", n_trials: int = 3, epochs: int = 2, **overrides: object) -> dict:
    """A tiny but complete search space: two families, a few searchable parameters."""
    space = {
        "study": {"name": name, "metric": "f1", "direction": "maximize",
                  "sampler": {"type": "tpe", "seed": 7, "n_startup_trials": 2},
                  "pruner": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 1}},
        "budget": {"n_trials": n_trials},
        "data": {"synthetic": {"subjects": 8, "per_subject": 16, "seed": 1}, "drop_labels": ["UNK"]},
        "train": {"epochs": epochs, "batch_size": 32,
                  "lr": {"type": "float", "low": 1e-3, "high": 5e-3, "log": True}, "patience": 2},
        "model": {"families": {
            "afnet": {"width": {"type": "int", "low": 4, "high": 6}, "depth": 2},
            "sepnet": {"width": 8, "depth": {"type": "int", "low": 2, "high": 3}},
        }},
    }
    for k, v in overrides.items():
        space[k] = v
    return space


def stop_process(p: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM a process (a proxy, a worker) and wait; kill it if it does not end in ``timeout`` s."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

"""Peak memory (max RSS) of one worker process on the full 50,000-segment IESD set.

Runs a real `atml search` with one worker, one trial of one epoch over the whole
train.npz (subject split 80/20), and reports the peak RSS of the largest process
(the worker: cached arrays -> in-memory tensors, model, optimiser, validation pass).

    python bench/worker_memory.py [--epochs 1]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from atml.data import shared_data_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    npz = shared_data_dir() / "iesd2024" / "train.npz"
    space = {
        "study": {"name": "memory", "pruner": {"type": "none"}},
        "budget": {"n_trials": 1},
        "data": {"path": str(npz), "drop_labels": ["UNK"]},
        "train": {"epochs": args.epochs, "batch_size": 32},
        "model": {"families": {"afnet": {}}},
    }
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "space.yaml"
        p.write_text(yaml.safe_dump(space))
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "atml", "search", "--space", str(p), "--storage",
                            f"sqlite:///{tmp}/m.db", "--workers", "1", "--no-progress"],
                           capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(r.stderr[-2000:])
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"one worker, full IESD train.npz (50,000 segments), {args.epochs} epoch(s): "
          f"peak RSS {peak_mb:.0f} MB, wall {wall:.0f} s (includes building the data cache)")


if __name__ == "__main__":
    main()

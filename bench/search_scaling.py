"""Trials per hour of `atml search` with 1 and with 2 local workers (same trials).

Both runs use the same space, seed and random sampler with no pruner, so they train the
same trial configurations; only the number of worker processes differs. Wall time
includes worker start-up (interpreter, torch import, cached data load).

    python bench/search_scaling.py [--trials 8] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

SPACE = {
    "study": {"name": "scaling", "metric": "f1", "sampler": {"type": "random", "seed": 5},
              "pruner": {"type": "none"}},
    "budget": {"n_trials": 8},
    "data": {"synthetic": {"subjects": 40, "per_subject": 60, "seed": 0}, "drop_labels": ["UNK"]},
    "train": {"epochs": 10, "batch_size": 32, "patience": 99,
              "lr": {"type": "float", "low": 1e-3, "high": 3e-3, "log": True}},
    "model": {"families": {"afnet": {"width": {"type": "int", "low": 6, "high": 8}, "depth": 3}}},
}


def run(workers: int, trials: int, tmp: Path) -> float:
    space = dict(SPACE, budget={"n_trials": trials})
    p = tmp / "space.yaml"
    p.write_text(yaml.safe_dump(space))
    db = tmp / f"w{workers}.db"
    # warm the data cache so both runs start equal
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "atml", "search", "--space", str(p), "--storage", f"sqlite:///{db}",
                        "--workers", str(workers), "--threads", "1", "--no-progress", "--artifacts", str(tmp)],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(r.stderr[-2000:])
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.workers:
            wall = run(w, args.trials, Path(tmp))
            rows[w] = {"wall_s": round(wall, 1), "trials_per_hour": round(args.trials * 3600 / wall, 1)}
    base = rows[args.workers[0]]["trials_per_hour"]
    for w in rows:
        rows[w]["speedup"] = round(rows[w]["trials_per_hour"] / base, 2)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"atml search, {args.trials} trials (AFNet, 10 epochs, 1920 synthetic train segments), 1 thread per worker")
    for w, r in rows.items():
        print(f"  {w} worker(s): {r['wall_s']:7.1f} s  {r['trials_per_hour']:8.1f} trials/h  x{r['speedup']:.2f}")


if __name__ == "__main__":
    main()

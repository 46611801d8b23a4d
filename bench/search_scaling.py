"""Trials per hour of `atml search` with 1 and with 2 local workers (same trials), or on GPUs.

Both runs use the same space, seed and random sampler with no pruner, so they train the
same trial configurations; only the number of worker processes differs. The data cache
is built before timing. Two figures per run:

- end to end: the command's wall time, including start-up (interpreter, torch import,
  space and data checks, study creation) and the wait for the last trial and the exit;
- busy window: first trial start to last trial end, read from the study (the rate a long
  search settles at; start-up is a fixed cost of ~10 s per search).

On a CUDA machine, ``--gpus 0 --workers-per-gpu 1,2,4,8`` runs the search once per count
of workers sharing that GPU (each pinned to it by ``CUDA_VISIBLE_DEVICES``): how many
small-model workers one GPU takes before it stops adding trials per hour.

    python bench/search_scaling.py [--trials 32] [--workers 1 2]
    python bench/search_scaling.py --gpus 0 --workers-per-gpu 1,2,4,8 [--trials 32]
"""

from __future__ import annotations

import argparse
import json
import os
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


def write_space(trials: int, tmp: Path) -> Path:
    p = tmp / "space.yaml"
    p.write_text(yaml.safe_dump(dict(SPACE, budget={"n_trials": trials})))
    return p


def warm_cache(space_path: Path, tmp: Path) -> None:
    from atml.config import load_space
    from atml.search.coordinator import check_data

    check_data(load_space(space_path), None, str(tmp))


def busy_window(db: Path) -> tuple[float, float]:
    """(first start -> last end, mean trial duration) in seconds."""
    import optuna

    trials = optuna.load_study(study_name="scaling", storage=f"sqlite:///{db}").trials
    first = min(t.datetime_start for t in trials)
    last = max(t.datetime_complete for t in trials)
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    return (last - first).total_seconds(), sum(durations) / len(durations)


def run(workers: int, p: Path, tmp: Path, gpus: str | None = None) -> tuple[float, Path]:
    """One search: ``workers`` local workers, or (``gpus``) that many on each of those GPUs."""
    db = tmp / (f"g{workers}.db" if gpus else f"w{workers}.db")
    place = ["--gpus", gpus, "--workers-per-gpu", str(workers)] if gpus else ["--workers", str(workers),
                                                                             "--device", "cpu"]
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "atml", "search", "--space", str(p), "--storage", f"sqlite:///{db}",
                        *place, "--threads", "1", "--no-progress", "--artifacts", str(tmp)],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(r.stderr[-2000:])
    return wall, db


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--gpus", default=None, help="CUDA GPUs to run on, e.g. 0 (then --workers-per-gpu, not --workers)")
    ap.add_argument("--workers-per-gpu", default="1,2,4,8", help="with --gpus: counts to try, e.g. 1,2,4,8")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    counts = args.workers
    if args.gpus is not None:
        import torch

        if not torch.cuda.is_available():
            print("search_scaling: --gpus needs a GPU (torch sees no CUDA device)", file=sys.stderr)
            raise SystemExit(2)
        counts = [int(k) for k in args.workers_per_gpu.split(",")]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        space = write_space(args.trials, Path(tmp))
        warm_cache(space, Path(tmp))
        for w in counts:
            wall, db = run(w, space, Path(tmp), args.gpus)
            busy, mean = busy_window(db)
            rows[w] = {"wall_s": round(wall, 1), "trials_per_hour": round(args.trials * 3600 / wall, 1),
                       "busy_s": round(busy, 1), "busy_trials_per_hour": round(args.trials * 3600 / busy, 1),
                       "mean_trial_s": round(mean, 2)}
    base = rows[counts[0]]
    for w in rows:
        rows[w]["speedup"] = round(rows[w]["trials_per_hour"] / base["trials_per_hour"], 2)
        rows[w]["busy_speedup"] = round(rows[w]["busy_trials_per_hour"] / base["busy_trials_per_hour"], 2)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    where = f"on GPU {args.gpus}" if args.gpus is not None else f"on the CPU ({os.cpu_count()} cores)"
    unit = "/GPU" if args.gpus is not None else "    "
    print(f"atml search, {args.trials} trials (AFNet, 10 epochs, 1920 synthetic train segments), 1 thread per worker, "
          f"{where}")
    print("                     end to end                    busy window                   mean trial")
    for w, r in rows.items():
        print(f"  {w} worker(s){unit}: {r['wall_s']:7.1f} s {r['trials_per_hour']:7.1f}/h x{r['speedup']:.2f}   "
              f"{r['busy_s']:7.1f} s {r['busy_trials_per_hour']:7.1f}/h x{r['busy_speedup']:.2f}   "
              f"{r['mean_trial_s']:5.2f} s")


if __name__ == "__main__":
    main()

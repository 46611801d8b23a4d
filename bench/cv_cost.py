"""What subject-grouped cross-validation costs: holdout vs subject_kfold on the same space.

Runs the same search twice (same seed, sampler and median pruner), once scored on one
subject hold-out and once with ``validation: subject_kfold``, and prints for each: trials
per hour (busy window: first trial start to last trial end, one worker), the mean number
of models trained per trial (a holdout trial trains one; a CV trial up to K, fewer when
the pruner stops it after a fold) and the share of trials pruned.

    python bench/cv_cost.py [--data ../shared/data/iesd2024/txt_sample] [--trials 12] [--folds 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml


def space(data: str, trials: int, scheme: str, folds: int) -> dict:
    return {
        "study": {"name": f"cost-{scheme}", "metric": "f1", "sampler": {"type": "tpe", "seed": 5},
                  "pruner": {"type": "median", "n_startup_trials": 3}},
        "budget": {"n_trials": trials},
        "data": {"path": data, "target_fs": 125, "val_fraction": 0.34, "test_fraction": 0},
        "validation": {"scheme": scheme, "folds": folds},
        "train": {"epochs": 6, "batch_size": 32, "patience": 3,
                  "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "model": {"families": {"afnet": {"width": {"type": "int", "low": 4, "high": 8}, "depth": 3}}},
    }


def run(tmp: Path, data: str, trials: int, scheme: str, folds: int) -> dict:
    import optuna

    p = tmp / f"{scheme}.yaml"
    p.write_text(yaml.safe_dump(space(data, trials, scheme, folds)))
    db = tmp / f"{scheme}.db"
    cmd = [sys.executable, "-m", "atml", "search", "--space", str(p), "--storage", f"sqlite:///{db}",
           "--workers", "1", "--no-progress", "--artifacts", str(tmp / scheme)]
    subprocess.run(cmd, check=True, capture_output=True, cwd=tmp)
    ts = [t for t in optuna.load_study(study_name=f"cost-{scheme}", storage=f"sqlite:///{db}").trials
          if t.datetime_complete is not None]
    window = (max(t.datetime_complete for t in ts) - min(t.datetime_start for t in ts)).total_seconds()
    models = [len(t.user_attrs.get("folds") or []) or 1 for t in ts] if scheme == "subject_kfold" else [1] * len(ts)
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in ts)
    return {"scheme": scheme, "trials": len(ts), "window_s": window, "per_hour": 3600 * len(ts) / window,
            "models_per_trial": sum(models) / len(models), "pruned": pruned}


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(here.parent / "shared" / "data" / "iesd2024" / "txt_sample"))
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--folds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="atml-cv-cost-") as t:
        rows = [run(Path(t), args.data, args.trials, s, args.folds) for s in ("holdout", "subject_kfold")]
    print(f"{'scheme':14s} {'trials':>6s} {'trials/hour':>11s} {'models/trial':>12s} {'pruned':>6s}")
    for r in rows:
        print(f"{r['scheme']:14s} {r['trials']:6d} {r['per_hour']:11.0f} {r['models_per_trial']:12.2f} {r['pruned']:6d}")
    print(f"subject_kfold costs {rows[0]['per_hour'] / rows[1]['per_hour']:.2f}x holdout per trial "
          f"(at most {args.folds}x: {args.folds} folds)")


if __name__ == "__main__":
    main()

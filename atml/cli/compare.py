"""``atml compare``: two configurations cross-validated on the same subject folds, paired."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from atml.cli.common import Command, add_device_arg

__all__ = ["COMPARE"]


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("space_a", type=Path, help="the first configuration's space (e.g. the baseline)")
    p.add_argument("space_b", type=Path, help="the second configuration's space (e.g. the searched one)")
    p.add_argument("--params-a", default=None, help="JSON of A's parameters (a mapping, or an export sidecar)")
    p.add_argument("--params-b", default=None, help="JSON of B's parameters (a mapping, or an export sidecar)")
    p.add_argument("--folds", type=int, default=5, help="subject folds (default %(default)s)")
    p.add_argument("--repeats", type=int, default=1, help="fold deals (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold deal (default %(default)s)")
    p.add_argument("--test-fraction", type=float, default=None,
                   help="override both spaces' data.test_fraction (0: fold over every subject)")
    p.add_argument("--metric", default="f1", help="per-fold metric compared (default %(default)s)")
    p.add_argument("--cache", default="studies/cache", help="preprocessed-data cache (default %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="also write everything to this JSON file")
    p.add_argument("--jobs", type=int, default=1,
                   help="score the two sides side by side in 2 processes, the CPU cores shared (default %(default)s)")
    add_device_arg(p, "train both sides")


def _handler(args: argparse.Namespace) -> int:
    import logging

    import optuna

    from atml.device import describe, resolve_device
    from atml.errors import SpaceError
    from atml.search.compare import Side, compare, read_params, score_sides

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per side, then the table
    logging.getLogger("atml").setLevel(logging.WARNING)
    if args.jobs < 1:
        raise SpaceError(f"--jobs must be >= 1 (got {args.jobs})")
    device = resolve_device(args.device)  # a missing device: one line, exit 2, before any training

    sides = [Side(space, read_params(params) if params else {}, name=f"{tag} ({space.stem})")
             for tag, space, params in (("A", args.space_a, args.params_a), ("B", args.space_b, args.params_b))]

    def started(side: Side) -> None:
        print(f"scoring {side.name}: {args.folds} subject folds x {args.repeats} on {describe(device)} ...",
              flush=True)

    sides = score_sides(sides, jobs=args.jobs, on_start=started, folds=args.folds, repeats=args.repeats,
                        seed=args.seed, test_fraction=args.test_fraction, cache=args.cache, device=device)
    c = compare(*sides, metric=args.metric)
    m = args.metric
    print(f"\nfold  held-out subjects              A {m:8s} B {m:8s} B - A")
    for fa, fb, d in zip(c.a.folds, c.b.folds, c.diffs, strict=True):
        subj = ",".join(fa["held_subjects"])
        print(f"{fa['fold']:4d}  {subj[:30]:30s} {fa[m]:10.4f} {fb[m]:10.4f} {d:+.4f}")
    for side in (c.a, c.b):
        s = side.metrics
        print(f"{side.name}: pooled {m} {s.get(m, float('nan')):.4f}  subject F1 min {s.get('subject_f1_min', float('nan')):.3f}"
              f"  p10 {s.get('subject_f1_p10', float('nan')):.3f}  f1_lcb {s.get('f1_lcb', float('nan')):.4f}"
              f"  ({side.seconds:.0f} s)")
    print(f"B - A per fold: mean {c.mean:+.4f}, 95% paired interval [{c.low:+.4f}, {c.high:+.4f}]: {c.verdict}")
    if args.json:
        args.json.write_text(json.dumps({
            "metric": m, "folds": args.folds, "repeats": args.repeats, "seed": args.seed,
            "diffs": c.diffs, "mean": c.mean, "low": c.low, "high": c.high, "verdict": c.verdict,
            "sides": [{"name": s.name, "space": str(s.space_path), "params": s.params, "metrics": s.metrics,
                       "folds": s.folds, "subjects": s.subjects, "seconds": s.seconds} for s in (c.a, c.b)],
        }, indent=1, default=float))
    return 0


COMPARE = Command("compare", "cross-validate two configurations on the same subject folds, paired",
                  _arguments, _handler,
                  description="Score two configurations with subject-grouped k-fold cross-validation on the "
                              "same folds and print the per-fold difference and whether it exceeds the "
                              "fold-to-fold noise (a 95% paired t interval).")

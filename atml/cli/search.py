"""``atml search``, ``atml worker`` and ``atml studies``.

Light on purpose: the search, the worker and the storage are imported inside the
handlers, so ``atml --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from typing import Any

from atml.cli.common import Command, add_device_arg, add_storage_arg, env

__all__ = ["SEARCH", "STUDIES", "WORKER", "format_summary", "print_summary"]


def _search_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--space", required=True, help="search space YAML (e.g. search_spaces/afib.yaml)")
    add_storage_arg(s)
    workers = env("WORKERS")
    s.add_argument("--workers", type=int, default=int(workers) if workers is not None else None,
                   help="local worker processes (env ATML_WORKERS; default: one per core, on a CUDA machine "
                        "one per GPU); 0: only check the space and data and create (or resume) the study, for "
                        "`atml worker`s elsewhere")
    add_device_arg(s, "train the local workers' trials")
    s.add_argument("--gpus", default=env("GPUS"),
                   help="CUDA GPUs for the local workers, e.g. 0,1,2,3 (env ATML_GPUS; default: every visible "
                        "GPU); each worker sees only its own GPU (CUDA_VISIBLE_DEVICES)")
    s.add_argument("--workers-per-gpu", type=int, default=None,
                   help="worker processes on each GPU of --gpus (default 1; small models fill a GPU better "
                        "with several)")
    s.add_argument("--threads", type=int, default=int(env("THREADS", 1)),
                   help="torch threads per worker (default %(default)s)")
    s.add_argument("--data", default=None, help="data path overriding data.path (folder of .txt segments or .npz)")
    s.add_argument("--artifacts", default=env("ARTIFACTS"),
                   help="folder for checkpoints, caches and logs (default: beside the SQLite file, else ./studies)")
    s.add_argument("--artifact-store", default=env("ARTIFACT_STORE"),
                   help="gate folders' artifact store for other machines: path or s3://bucket")
    s.add_argument("--study", default=None, help="study name overriding study.name")
    s.add_argument("--n-trials", type=int, default=None, help="budget override (global, all workers)")
    s.add_argument("--timeout", type=float, default=None, help="budget override in seconds")
    s.add_argument("--seed", type=int, default=None, help="sampler seed override")
    s.add_argument("--heartbeat", type=int, default=10, help="workers' heartbeat interval, seconds")
    s.add_argument("--grace", type=int, default=30,
                   help="seconds without heartbeat before a worker's trial is failed and retried")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.add_argument("-v", "--verbose", action="store_true")


def _search(args: argparse.Namespace) -> int:
    from atml.device import parse_gpus
    from atml.search.coordinator import SearchOptions, run_search

    res = run_search(SearchOptions(
        device=args.device, gpus=parse_gpus(args.gpus) if args.gpus else None, workers_per_gpu=args.workers_per_gpu,
        space_path=args.space, storage=args.storage, workers=args.workers, threads=args.threads,
        data_path=args.data, artifacts=args.artifacts, study=args.study, n_trials=args.n_trials,
        timeout=args.timeout, seed=args.seed, progress=not args.no_progress, verbose=args.verbose,
        artifact_store=args.artifact_store, heartbeat_interval=args.heartbeat, grace_period=args.grace,
    ), note=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(res.__dict__, default=str, indent=2))
    elif res.workers == 0 and not res.already_spent:
        done = sum(v for k, v in res.counts.items() if k in ("COMPLETE", "PRUNED")) - res.skipped
        print(f"study {res.study} ready in {res.storage} ({done} trials finished so far)")
        from atml.storage import redact

        print(f"  workers join with: atml worker --storage {redact(res.storage)} --study {res.study}")
    else:
        print_summary(res)
    if res.workers == 0 and not res.already_spent:
        return 0
    if res.interrupted:
        return 130
    return 0 if res.best is not None else 1


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def format_summary(res: Any) -> str:
    """The text summary of a finished search (a ``SearchResult``), starting with a blank line."""
    c = dict(res.counts)
    if res.skipped:  # pruned before training: listed apart, as the budget does not count them
        c["PRUNED"] -= res.skipped
        c["SKIPPED (size cap, avoid list)"] = res.skipped
    lines = ["", f"study {res.study}  ({res.storage})"]
    lines.append("  trials: " + ", ".join(f"{k.lower()} {v}" for k, v in sorted(c.items())) +
                 f"  in {res.wall_seconds:.0f} s" + (f"  [{res.stop_reason}]" if res.stop_reason else ""))
    sp = res.split
    variants = sp.get("variants")
    # A space that searches preprocessing has one shape per variant; the splits are the same.
    shape = (f"shape {sp.get('shape')}" if not variants else "shapes " + ", ".join(
        f"{v['shape']} ({' '.join(f'data.{k}={_fmt(x)}' for k, x in v.items() if k not in ('shape', 'segments'))})"
        for v in variants))
    lines.append(f"  data: {sp.get('source')}  {shape}  skipped {sp.get('skipped', 0)}")
    for part in ("train", "val", "test"):
        info = sp.get(part)
        if info and info.get("segments"):
            lines.append(f"    {part:5s} " + ", ".join(f"{k} {_fmt(v)}" for k, v in info.items()))
    if res.best is None:
        lines.append("  no trial completed; see the worker logs: " + ", ".join(res.worker_logs))
        return "\n".join(lines)
    b = res.best
    size = f", ONNX {b['onnx_kb']:.1f} KB" if b.get("onnx_kb") is not None else ""
    lines.append(f"  best trial #{b['number']}: value {_fmt(b['value'])}  ({b['n_params']} parameters{size}, "
                 f"best epoch {b['best_epoch']})")
    if b.get("pareto_size"):
        lines.append(f"    (several objectives: {b['pareto_size']} trials on the Pareto front; shown: the best "
                     "by the first objective. See the dashboard for the front.)")
    m = b["metrics"]
    cv = sp.get("validation")
    label = (f"cross-validated ({cv['folds']} subject folds x {cv['repeats']} over {cv['subjects']} subjects, "
             "pooled out-of-fold)" if cv else "validation")
    lines.append(f"    {label}: " + "  ".join(
        f"{k} {_fmt(m[k])}" for k in ("f1", "accuracy", "precision", "recall", "auroc", "val_loss") if k in m))
    spread = [(k, v) for k, v in m.items() if k.endswith("_fold_std")]
    spread += [(k, m[k]) for k in ("subject_f1_min", "subject_f1_p10", "f1_lcb")
               if isinstance(m.get(k), int | float) and math.isfinite(m[k])]
    if spread:
        lines.append("    spread: " + "  ".join(f"{k} {_fmt(v)}" for k, v in spread))
    lines += [f"    {k} = {_fmt(v)}" for k, v in b["params"].items()]
    lines.append(f"    checkpoint: {b['checkpoint']}")
    if str(res.data_source).startswith("synthetic"):
        lines += ["  note: this ran on synthetic ECG (a demo: its figures say nothing about real recordings).",
                  "    For real data: --data PATH, or a real-data space such as search_spaces/afib_iesd.yaml,",
                  "    search_spaces/physionet2017.yaml, search_spaces/cpsc2021_af.yaml (see docs/datasets.md)."]
    return "\n".join(lines)


def print_summary(res: Any) -> None:
    """Print :func:`format_summary` of a finished search to stdout."""
    print(format_summary(res))


def _worker_arguments(w: argparse.ArgumentParser) -> None:
    add_storage_arg(w)
    w.add_argument("--study", required=True, help="study name")
    w.add_argument("--data", default=None, help="local copy of the study's data (default: the stored path)")
    w.add_argument("--artifacts", default=env("ARTIFACTS"), help="artifact folder (default as for search)")
    w.add_argument("--threads", type=int, default=int(env("THREADS", 1)),
                   help="torch threads of this worker (env ATML_THREADS; default %(default)s)")
    add_device_arg(w, "train this worker's trials")
    w.add_argument("--artifact-store", default=env("ARTIFACT_STORE"),
                   help="where gate folders are uploaded for other machines: a (shared) path or s3://bucket "
                        "(env ATML_ARTIFACT_STORE; default ARTIFACTS/artifact-store)")
    w.add_argument("--heartbeat", type=int, default=10, help="heartbeat interval, seconds")
    w.add_argument("--grace", type=int, default=30, help="seconds without heartbeat before a trial is failed")
    w.add_argument("--retries", type=int, default=2, help="retries of a trial whose worker died")
    w.add_argument("--quiet", action="store_true", help="only warnings")
    w.add_argument("-v", "--verbose", action="store_true")


def _worker(args: argparse.Namespace) -> int:
    from atml.search.coordinator import default_artifacts
    from atml.search.worker import WorkerOptions, run_worker

    n = run_worker(WorkerOptions(
        storage=args.storage, study=args.study, data_path=args.data,
        artifacts=args.artifacts or default_artifacts(args.storage), threads=args.threads,
        heartbeat_interval=args.heartbeat, grace_period=args.grace, max_retry=args.retries,
        artifact_store=args.artifact_store, device=args.device,
    ))
    logging.getLogger("atml.search.worker").info("worker ran %d trials", n)
    return 0


def _studies_arguments(st: argparse.ArgumentParser) -> None:
    add_storage_arg(st)
    st.add_argument("--json", action="store_true", help="print the list as JSON (one object per study)")


def _studies(args: argparse.Namespace) -> int:
    from atml.storage import list_studies, open_storage

    rows = list_studies(open_storage(args.storage))
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], default=str, indent=2))
        return 0
    if not rows:
        print("no studies")
        return 0
    print(f"{'study':24s} {'metric':8s} {'direction':9s} {'complete':>8s} {'pruned':>7s} {'fail':>5s} "
          f"{'running':>7s} {'best':>8s}  stop reason")
    for r in rows:
        c = r.counts
        best = "-" if r.best_value is None else f"{r.best_value:.4f}"
        print(f"{r.name:24s} {r.metric:8s} {','.join(r.directions):9s} {c.get('COMPLETE', 0):8d} "
              f"{c.get('PRUNED', 0):7d} {c.get('FAIL', 0):5d} {c.get('RUNNING', 0):7d} {best:>8s}  "
              f"{r.stop_reason or ''}")
        spread = _cv_spread(r.best_metrics)
        if spread:
            print(f"{'':24s} best trial #{r.best_trial}, cross-validated: {spread}")
    return 0


def _cv_spread(m: dict[str, float]) -> str:
    """The pooled out-of-fold figure of a cross-validated trial with its spread ('' for a holdout trial)."""
    key = next((k for k in m if k.endswith("_fold_std")), None)
    if key is None:
        return ""
    from atml.metrics import base_metric

    metric = key.removesuffix("_fold_std")
    base = base_metric(metric)
    parts = [f"pooled {base} {m.get(base, float('nan')):.4f}", f"{metric} fold s.d. {m[key]:.3f}"]
    for name, label in ((f"subject_{base}_min", "worst subject"), (f"subject_{base}_p10", "subject p10"),
                        (f"{base}_lcb", "lower bound")):
        if name in m:
            parts.append(f"{label} {m[name]:.3f}")
    return ", ".join(parts)


SEARCH = Command("search", "run a whole search with local worker processes", _search_arguments, _search)
WORKER = Command("worker", "join an existing study and run trials until its budget is spent",
                 _worker_arguments, _worker)
STUDIES = Command("studies", "list studies with trial counts and best value", _studies_arguments, _studies)

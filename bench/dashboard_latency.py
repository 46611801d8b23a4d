"""Dashboard API latency on a 10,000-trial study in PostgreSQL.

Builds (once; reused when it exists) a study shaped like what ``atml search`` writes:
afib.yaml's parameters, 12 intermediate values, the per-epoch history, metrics, ONNX
size, a few gate folders and avoid-list entries. The rows are bulk-inserted through
the storage's engine into Optuna's own tables (``add_trials`` would take minutes on 10k
trials), then read back only through the dashboard.

Then it measures, in-process with Starlette's TestClient, every API call the study and
trial pages make: p50/p95 over ``--repeat`` requests each, after one first request whose
time is shown as "cold" (the first one after start builds the trial cache). Then the
calls the study page repeats while a search runs, with another process adding a trial
every half second. Where optuna-dashboard is installed (``pip install optuna-dashboard``; for this
bench only, not a dependency), its API on the same storage is measured in the same run.

    python bench/dashboard_latency.py [--storage URL] [--trials 10000] [--repeat 30]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/atml_bench"
STUDY = "bench10k"
EPOCHS = 12

FAMILIES: dict[str, dict[str, Any]] = {
    "afnet": {"width": IntDistribution(4, 16), "depth": IntDistribution(2, 4),
              "kernel_size": CategoricalDistribution([5, 7, 9]), "se_reduction": CategoricalDistribution([2, 4])},
    "resnet1d": {"width": IntDistribution(8, 24, step=4), "depth": IntDistribution(2, 4),
                 "kernel_size": CategoricalDistribution([5, 7, 9])},
    "sepnet": {"width": IntDistribution(8, 24, step=4), "depth": IntDistribution(2, 4),
               "kernel_size": CategoricalDistribution([7, 9, 11]), "expansion": IntDistribution(2, 4)},
    "inception1d": {"width": IntDistribution(4, 12, step=4), "depth": IntDistribution(2, 4),
                    "kernel_size": CategoricalDistribution([11, 15, 21])},
}
SHARED: dict[str, Any] = {
    "train.batch_size": CategoricalDistribution([32, 64]),
    "train.lr": FloatDistribution(3e-4, 5e-3, log=True),
    "train.weight_decay": FloatDistribution(1e-5, 1e-2, log=True),
    "train.class_weighted": CategoricalDistribution([False, True]),
    "model.dropout": FloatDistribution(0.0, 0.3),
    "model.family": CategoricalDistribution(list(FAMILIES)),
}


def _ensure_database(url: str) -> None:
    """CREATE DATABASE for a PostgreSQL URL whose database does not exist yet."""
    import sqlalchemy as sa

    if not url.startswith("postgresql"):
        return
    base, db = url.rsplit("/", 1)
    eng = sa.create_engine(base + "/postgres", isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        if not c.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": db}).first():
            c.execute(sa.text(f'CREATE DATABASE "{db}"'))
    eng.dispose()


def _sample(rng: random.Random, dist: Any) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return rng.choice(dist.choices)
    if isinstance(dist, IntDistribution):
        return rng.randrange(dist.low, dist.high + 1, dist.step)
    if dist.log:
        return math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))
    return rng.uniform(dist.low, dist.high)


def _fake_trial(rng: random.Random, number: int, t0: dt.datetime) -> dict[str, Any]:
    """One trial as atml's objective writes it (params, attrs, per-epoch values)."""
    params: dict[str, Any] = {k: _sample(rng, d) for k, d in SHARED.items()}
    dists: dict[str, Any] = dict(SHARED)
    fam = params["model.family"]
    for k, d in FAMILIES[fam].items():
        params[f"{fam}.{k}"] = _sample(rng, d)
        dists[f"{fam}.{k}"] = d
    quality = 0.55 + 0.35 * rng.random() - 4 * abs(math.log10(params["train.lr"]) + 2.8) ** 2 * 0.05
    r = rng.random()
    state = TrialState.COMPLETE if r < 0.8 else TrialState.PRUNED if r < 0.95 else TrialState.FAIL
    n_ep = EPOCHS if state == TrialState.COMPLETE else rng.randint(1, 5)
    curve = [max(0.0, min(1.0, quality * (1 - math.exp(-(e + 1) / 3)) + rng.gauss(0, 0.01))) for e in range(n_ep)]
    history = [{"train_loss": 0.7 * math.exp(-e / 5) + 0.05, "val_loss": 0.75 * math.exp(-e / 6) + 0.1,
                "f1": v} for e, v in enumerate(curve)]
    start = t0 + dt.timedelta(seconds=number * 6)
    attrs: dict[str, Any] = {"worker": f"bench-host:{1000 + number % 8}", "n_params": rng.randint(2_000, 60_000),
                             "history": history, "epoch_seconds": 0.4, "trial_seconds": 0.4 * n_ep + 0.3}
    values = None
    if state == TrialState.COMPLETE:
        best = max(curve)
        tp, fn, fp, tn = rng.randint(40, 90), rng.randint(5, 30), rng.randint(5, 30), rng.randint(200, 300)
        attrs.update(
            metrics={"f1": best, "accuracy": (tp + tn) / (tp + tn + fp + fn), "precision": tp / (tp + fp),
                     "recall": tp / (tp + fn), "auroc": min(1.0, best + 0.05), "val_loss": history[-1]["val_loss"],
                     "train_loss": history[-1]["train_loss"], "tn": tn, "fp": fp, "fn": fn, "tp": tp},
            best_epoch=curve.index(best), epochs_run=n_ep, stopped_early=False,
            checkpoint=f"trials/{number:05d}/model.pt", onnx_kb=round(attrs["n_params"] * 4 / 1024 + 3, 1))
        values = [best]
    elif state == TrialState.PRUNED:
        attrs["reason"] = f"pruned by median at epoch {n_ep - 1}"
    else:
        attrs["reason"] = "RuntimeError: synthetic failure for the benchmark"
    return {"number": number, "state": state, "params": params, "dists": dists, "attrs": attrs,
            "values": values, "intermediate": curve, "start": start,
            "complete": start + dt.timedelta(seconds=attrs["trial_seconds"])}


def build_study(url: str, n_trials: int, seed: int = 0) -> float:
    """Create study ``bench10k`` with ``n_trials`` trials unless it already has them; returns seconds."""
    from atml.storage.optuna_internals import rdb_models

    m = rdb_models()

    from atml import records
    from atml.config import load_space
    from atml.storage import open_storage
    from atml.storage.optuna_internals import study_id

    t = time.perf_counter()
    _ensure_database(url)
    storage = open_storage(url, create=True)
    names = [s.study_name for s in storage.get_all_studies()]
    if STUDY in names:
        sid = storage.get_study_id_from_name(STUDY)
        import sqlalchemy as sa

        with storage.engine.connect() as c:
            have = c.execute(sa.select(sa.func.count()).select_from(m.TrialModel.__table__)
                             .where(m.TrialModel.__table__.c.study_id == sid)).scalar()
        if have >= n_trials:
            return 0.0
        optuna.delete_study(study_name=STUDY, storage=storage)
    space = load_space(ROOT / "search_spaces" / "afib.yaml")
    study = optuna.create_study(storage=storage, study_name=STUDY, direction="maximize")
    study.set_user_attr(records.SPACE, json.dumps({"source": "afib.yaml", "raw": space.raw}, sort_keys=True))
    study.set_user_attr("atml.metric", "f1")
    study.set_user_attr("atml.stop_reason", f"n_trials reached ({n_trials})")
    study.set_user_attr("atml.deadline", None)
    sid = study_id(study)
    rng = random.Random(seed)
    t0 = dt.datetime(2026, 1, 1)
    fakes = [_fake_trial(rng, i, t0) for i in range(n_trials)]
    for k, f in enumerate(sorted((f for f in fakes if f["values"]), key=lambda f: -f["values"][0])[:4]):
        folder = f"{int(f['attrs']['metrics']['f1'] * 100)}-{int(f['attrs']['metrics']['accuracy'] * 100)}"
        study.set_user_attr(f"atml.gate.{folder}", json.dumps({"folder": folder, "trial": f["number"],
                            "metrics": f["attrs"]["metrics"], "files": ["model.onnx", "trial.json"]}))
        if k == 3:
            study.set_user_attr(f"atml.gate.{folder}", None)  # a removed folder
    for f in [f for f in fakes if f["state"] == TrialState.FAIL][:5]:
        study.set_user_attr(f"atml.avoid.{f['number']}", json.dumps(
            {"trial": f["number"], "params": f["params"], "reason": "f1 below avoid_below 0.6", "metrics": {}}))
    tables = {name: getattr(m, name).__table__ for name in
              ("TrialModel", "TrialParamModel", "TrialValueModel", "TrialUserAttributeModel",
               "TrialIntermediateValueModel")}
    chunk = 1000
    with storage.engine.begin() as c:
        for i in range(0, n_trials, chunk):
            part = fakes[i:i + chunk]
            tt = tables["TrialModel"]
            ids = c.execute(tt.insert().returning(tt.c.trial_id, sort_by_parameter_order=True), [
                {"number": f["number"], "study_id": sid, "state": f["state"], "datetime_start": f["start"],
                 "datetime_complete": f["complete"]} for f in part]).scalars().all()
            params, values, attrs, inter = [], [], [], []
            for tid, f in zip(ids, part, strict=True):
                for k, v in f["params"].items():
                    d = f["dists"][k]
                    params.append({"trial_id": tid, "param_name": k, "param_value": d.to_internal_repr(v),
                                   "distribution_json": optuna.distributions.distribution_to_json(d)})
                if f["values"]:
                    values.append({"trial_id": tid, "objective": 0, "value": f["values"][0],
                                   "value_type": m.TrialValueModel.TrialValueType.FINITE})
                for k, v in f["attrs"].items():
                    attrs.append({"trial_id": tid, "key": k, "value_json": json.dumps(v)})
                for step, v in enumerate(f["intermediate"]):
                    inter.append({"trial_id": tid, "step": step, "intermediate_value": v,
                                  "intermediate_value_type": m.TrialIntermediateValueModel.TrialIntermediateValueType.FINITE})
            c.execute(tables["TrialParamModel"].insert(), params)
            if values:
                c.execute(tables["TrialValueModel"].insert(), values)
            c.execute(tables["TrialUserAttributeModel"].insert(), attrs)
            c.execute(tables["TrialIntermediateValueModel"].insert(), inter)
    storage.engine.dispose()
    return time.perf_counter() - t


def _pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def measure(client: Any, path: str, repeat: int, pause: float = 0.0, retry: tuple[int, ...] = (503,)) -> dict[str, Any]:
    """One cold request, then ``repeat`` timed ones. A 503 (the database restarting under
    us: other work shares this server) is waited out and not timed; the row counts them.
    optuna-dashboard answers such moments with a 500, so it passes ``retry=(500, 503)``."""
    unavailable = 0

    def get() -> tuple[Any, float]:
        nonlocal unavailable
        for _ in range(60):
            t = time.perf_counter()
            r = client.get(path)
            took = time.perf_counter() - t
            if r.status_code not in retry:
                if r.status_code != 200:
                    raise SystemExit(f"GET {path}: {r.status_code} {r.text[:300]}")
                return r, took
            unavailable += 1
            time.sleep(1.0)
        raise SystemExit(f"GET {path}: storage unavailable for a minute")

    r, cold = get()
    times = []
    for _ in range(repeat):
        time.sleep(pause)
        r, took = get()
        times.append(took)
    return {"path": path.replace(f"/api/studies/{STUDY}", "…"), "n": repeat, "cold_ms": cold * 1e3,
            "p50_ms": statistics.median(times) * 1e3, "p95_ms": _pct(times, 95) * 1e3, "kb": len(r.content) / 1024,
            "unavailable": unavailable}


STUDY_PAGE = ["/summary", "/trials?limit=25&sort=number&order=desc", "/trials?limit=25&sort=value&order=desc&state=COMPLETE",
              "/trials?limit=25&offset=5000", "/plots/history", "/plots/intermediate", "/plots/parallel",
              "/plots/importance", "/plots/pareto", "/gate", "/avoid", "/notes"]
TRIAL_PAGE = ["/trials/9999", "/trials/9999/plots/curves", "/trials/9999/plots/confusion"]
LIVE = ["/summary?since=x", "/trials?limit=25&sort=number&order=desc", "/plots/history", "/plots/intermediate",
        "/plots/importance"]


def _write_trials(url: str, every: float, stop: Any, added: Any) -> None:
    """Child process: add one finished trial every ``every`` seconds, as a worker would."""
    from atml.storage import open_storage

    storage = open_storage(url)  # plain RDBStorage: no client-side cache that re-reads 10k trials
    sid = storage.get_study_id_from_name(STUDY)
    import sqlalchemy as sa

    with storage.engine.connect() as c:  # get_n_trials would load every trial
        n = c.execute(sa.text("SELECT count(*) FROM trials WHERE study_id = :s"), {"s": sid}).scalar()
    rng = random.Random(1)
    while not stop.wait(every):
        f = _fake_trial(rng, n + added.value, dt.datetime.now())
        try:
            storage.create_new_trial(sid, template_trial=optuna.trial.create_trial(
                state=f["state"], values=f["values"], params=f["params"], distributions=f["dists"],
                user_attrs=f["attrs"], intermediate_values=dict(enumerate(f["intermediate"]))))
        except Exception as e:  # the database restarting: try again next tick
            print(f"writer: {type(e).__name__}", file=sys.stderr)
            continue
        added.value += 1


class _Writer:
    """A separate process adding trials while the dashboard is measured (workers are
    separate processes too: in a thread they would compete with the app for the GIL)."""

    def __init__(self, url: str, every: float) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.stop = ctx.Event()
        self._added = ctx.Value("i", 0)
        self.proc = ctx.Process(target=_write_trials, args=(url, every, self.stop, self._added), daemon=True)

    @property
    def added(self) -> int:
        return self._added.value

    def __enter__(self) -> _Writer:
        self.proc.start()
        time.sleep(2.0)  # let it import and connect before the clock starts
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.proc.join(timeout=30)


def bench_atml(url: str, repeat: int, live: bool) -> list[dict[str, Any]]:
    from fastapi.testclient import TestClient

    from atml.dashboard import create_app

    t = time.perf_counter()
    client = TestClient(create_app(url))
    print(f"atml app created in {(time.perf_counter() - t) * 1e3:.0f} ms", file=sys.stderr)
    s = f"/api/studies/{STUDY}"
    rows = [measure(client, "/api/studies", repeat)]
    rows += [measure(client, s + p, repeat) for p in STUDY_PAGE + TRIAL_PAGE]
    version = client.get(f"{s}/summary").json()["version"]
    rows.append(measure(client, f"{s}/summary?since={version}", repeat))
    for r in rows:
        r["who"] = "atml"
    if live:
        with _Writer(url, every=0.5) as w:
            t = time.perf_counter()
            for p in LIVE:
                r = measure(client, s + p, repeat, pause=0.1)
                r["who"] = "atml, live"
                rows.append(r)
            took = time.perf_counter() - t
        print(f"live: another process added {w.added} trials in {took:.0f} s ({w.added / took:.1f}/s) while the "
              "'atml, live' rows were measured", file=sys.stderr)
    client.close()
    return rows


def bench_optuna_dashboard(url: str, repeat: int) -> list[dict[str, Any]]:
    try:
        from optuna_dashboard import wsgi
    except ImportError:
        print("optuna-dashboard not installed: skipped (pip install optuna-dashboard)", file=sys.stderr)
        return []
    import httpx

    from atml.storage import open_storage

    storage = open_storage(url)
    app = wsgi(storage)
    sid = storage.get_study_id_from_name(STUDY)
    n = len(storage.get_all_trials(sid, deepcopy=False))
    rows = []
    # Its study page loads every trial in one response (after=0), then polls for newer ones
    # (after=<trials it has>). The full load takes tens of seconds here: 3 repeats.
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://od", timeout=600) as client:
        for p, k in (("/api/studies", repeat), (f"/api/studies/{sid}?after=0", min(repeat, 3)),
                     (f"/api/studies/{sid}?after={n}", min(repeat, 3)),
                     (f"/api/studies/{sid}/param_importances", repeat)):
            r = measure(client, p, k, retry=(500, 503))
            r["who"] = "optuna-dashboard"
            rows.append(r)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", default=DEFAULT_URL)
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--no-live", action="store_true", help="skip the run with a writer adding trials")
    ap.add_argument("--no-optuna-dashboard", action="store_true", help="skip optuna-dashboard even if installed")
    ap.add_argument("--no-atml", action="store_true", help="measure optuna-dashboard only")
    ap.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    took = build_study(args.storage, args.trials)
    print(f"study {STUDY}: {args.trials} trials " + (f"built in {took:.1f} s" if took else "reused"),
          file=sys.stderr)
    rows = [] if args.no_atml else bench_atml(args.storage, args.repeat, live=not args.no_live)
    if not args.no_optuna_dashboard:
        rows += bench_optuna_dashboard(args.storage, args.repeat)
    print(f"\n{'server':18s} {'GET (… = /api/studies/' + STUDY + ')':52s} {'n':>3s} {'cold ms':>8s} {'p50 ms':>8s} "
          f"{'p95 ms':>8s} {'KiB':>7s}")
    for r in rows:
        print(f"{r['who']:18s} {r['path']:52s} {r['n']:3d} {r['cold_ms']:8.0f} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f} "
              f"{r['kb']:7.0f}" + (f"  ({r['unavailable']} x 503 waited out)" if r.get("unavailable") else ""))
    slow = [r for r in rows if r["who"].startswith("atml") and r["p95_ms"] >= 300]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{args.trials} trials on {args.storage.split('@')[-1]}; {os.cpu_count()} CPUs, load average {load}; "
          "target p95 < 300 ms for every atml call: " + ("met" if not slow else "MISSED by " + ", ".join(
              f"{r['who']} {r['path']}" for r in slow)))
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0 if not slow else 1


if __name__ == "__main__":
    raise SystemExit(main())

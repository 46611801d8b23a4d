"""IESD-2024 AFIB results: the searched model against ATML's recipe, on held-out subjects.

Reads the two studies made by

    atml search --space search_spaces/afib_iesd_rate.yaml --workers 2
    atml search --space search_spaces/afib_iesd_atml_baseline.yaml --workers 1

(same data, same subject split; the test subjects are never used for selection, early
stopping or the gate), exports each study's best trial to verified ONNX (+ int8), scores
them with `atml evaluate --subjects test` and writes results/iesd2024/: best.onnx,
best.int8.onnx (+ sidecars), results.json, history.png and f1_vs_size.png.

    python bench/results_iesd.py [--storage sqlite:///studies/atml.db] [--artifacts studies] [--study afib_iesd_rate]
        [--refit] [--ensemble K] [--baseline-model results/iesd2024/atml_baseline.onnx] [--out results/iesd2024]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

import optuna

from atml.data import shared_data_dir
from atml.onnx.evaluate import evaluate_model
from atml.onnx.export import export_trial
from atml.storage import open_storage

OUT = Path(__file__).resolve().parents[1] / "results" / "iesd2024"


def _score(model: Path, npz: Path) -> dict:
    ev = evaluate_model(model, npz, subjects="test", runs=100).to_dict()
    f1s = [r["f1"] for r in ev["per_subject"] if r.get("f1") is not None]
    return {"size_kb": ev["size_kb"], "metrics": ev["metrics"], "segments": ev["segments"],
            "subjects": ev["subjects"], "latency_ms": ev["latency"],
            "per_subject_f1": {"min": min(f1s), "median": statistics.median(f1s), "max": max(f1s)} if f1s else None,
            "validation": ev["validation_metrics"]}


def _plots(study: optuna.Study, out: Path) -> None:
    name = study.study_name
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    xs, ys = [t.number for t in done], [t.value for t in done]
    best, run = [], 0.0
    for y in ys:
        run = max(run, y)
        best.append(run)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(xs, ys, s=14, label="trial (validation F1)")
    ax.step(xs, best, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation F1")
    ax.set_title(f"{name}: optimisation history")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "history.png", dpi=110)
    fig, ax = plt.subplots(figsize=(7, 4))
    sized = [t for t in study.trials if "onnx_kb" in t.user_attrs]
    for fam in sorted({t.params.get("model.family", "?") for t in sized}):
        pts = [t for t in sized if t.params.get("model.family", "?") == fam]
        ax.scatter([t.user_attrs["onnx_kb"] for t in pts if t.state.name == "COMPLETE"],
                   [t.value for t in pts if t.state.name == "COMPLETE"], s=16, label=fam)
    ax.axvline(64, color="grey", ls="--", lw=1, label="64 KB")
    ax.set_xlabel("ONNX size (KB)")
    ax.set_ylabel("validation F1")
    ax.set_title(f"{name}: F1 against ONNX size (all completed trials)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "f1_vs_size.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage", default="sqlite:///studies/atml.db")
    ap.add_argument("--artifacts", default=None)
    ap.add_argument("--study", default="afib_iesd_rate", help="the searched study")
    ap.add_argument("--refit", action="store_true", help="final fit on training + validation subjects")
    ap.add_argument("--ensemble", type=int, default=1, help="members of the final fit (mean logits)")
    ap.add_argument("--out", type=Path, default=OUT, help="folder for the models, results.json and plots")
    ap.add_argument("--baseline-study", default="afib_iesd_atml_baseline")
    ap.add_argument("--baseline-model", type=Path, default=None,
                    help="score this already exported baseline ONNX file instead of exporting --baseline-study")
    args = ap.parse_args()
    out = args.out
    npz = shared_data_dir() / "iesd2024" / "train.npz"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # The search's own best checkpoint, for comparison with the final fit.
        ck = export_trial(args.storage, args.study, Path(tmp) / "checkpoint.onnx", artifacts=args.artifacts)
        checkpoint = {"float": _score(ck.path, npz), "n_params": ck.sidecar["n_params"]}
        if args.baseline_model is None:
            base = export_trial(args.storage, args.baseline_study, Path(tmp) / "baseline.onnx",
                                artifacts=args.artifacts)
            shutil.copy(base.path, out / "atml_baseline.onnx")
            shutil.copy(f"{base.path}.json", out / "atml_baseline.onnx.json")
            n_base = base.sidecar["n_params"]
        else:
            n_base = json.loads(Path(f"{args.baseline_model}.json").read_text())["n_params"]
        baseline = {"float": _score(out / "atml_baseline.onnx" if args.baseline_model is None
                                    else args.baseline_model, npz), "n_params": n_base}
    res = export_trial(args.storage, args.study, out / "best.onnx", int8=True, artifacts=args.artifacts,
                       refit=args.refit, ensemble=args.ensemble)
    searched = {"float": _score(res.path, npz), "int8": _score(res.int8_path, npz),
                "trial": res.sidecar["trial"], "family": res.sidecar["family"], "n_params": res.sidecar["n_params"],
                "fit": res.sidecar["fit"], "checkpoint": checkpoint}
    study = optuna.load_study(study_name=args.study, storage=open_storage(args.storage))
    _plots(study, out)
    counts = {}
    for t in study.trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    wall = (max(t.datetime_complete for t in study.trials if t.datetime_complete)
            - min(t.datetime_start for t in study.trials if t.datetime_start)).total_seconds()
    summary = {"study": args.study, "searched": searched, "atml_baseline": baseline, "trials": counts, "search_wall_s": round(wall)}
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    print("| model | ONNX KB | test F1 | accuracy | precision | recall | AUROC | per-subject F1 min/median/max |")
    print("|---|---|---|---|---|---|---|---|")
    fit = res.sidecar["fit"]
    label = "final fit" if fit["mode"] == "checkpoint" else f"{fit['mode']} x{fit['members']}"
    rows = [(f"searched, {label} (float)", searched["float"]), (f"searched, {label} (int8)", searched["int8"]),
            ("searched, best trial's checkpoint (float)", checkpoint["float"]),
            ("ATML recipe (AFNet)", baseline["float"])]
    for name, r in rows:
        m, ps = r["metrics"], r["per_subject_f1"] or {}
        print(f"| {name} | {r['size_kb']:.1f} | {m['f1']:.4f} | {m['accuracy']:.4f} | {m['precision']:.4f} | "
              f"{m['recall']:.4f} | {m['auroc']:.4f} | {ps.get('min', 0):.3f} / {ps.get('median', 0):.3f} / "
              f"{ps.get('max', 0):.3f} |")
    print(f"search: {counts}, wall {wall / 60:.0f} min; test: {searched['float']['segments']} segments of "
          f"{searched['float']['subjects']} subjects")


if __name__ == "__main__":
    main()

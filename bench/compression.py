"""Compression on IESD-2024, scored by subject-grouped cross-validation: QAT against
post-training int8, a pruned model against an unpruned one of the same size, a distilled
student against the same student trained alone, and the F1 / int8-size front of them all.

Each configuration is one trial of a real ``atml search`` with ``validation.scheme:
subject_kfold`` over the non-test subjects (the 11 test subjects of split seed 2024 are
never loaded into a fold): its F1 is the pooled out-of-fold F1 of its fold models, its
``int8_f1`` that of their int8 exports (onnxruntime, calibrated on each fold's training
subjects), and a QAT trial also records the post-training int8 F1 of its weights before
QAT. The distilled student learns, fold by fold, from the base trial's model of the same
fold, which never saw that fold's subjects.

    python bench/compression.py [--data ../shared/data/iesd2024/train.npz] [--max-segments 10000]
        [--folds 5] [--epochs 8] [--workers 2] [--json out.json]

Prints one row per configuration: parameters, float and int8 KB, CV F1 of the float and
int8 models (and the post-training int8 F1 where QAT ran), the worst subject's F1.
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

ROOT = Path(__file__).resolve().parents[1]
BASE = {"width": 8, "depth": 4, "kernel_size": 7}
# name -> (afnet width, qat epochs, prune amount)
VARIANTS = {
    "base (float / post-training int8)": (8, 0, 0.0),
    "base + QAT 2 epochs": (8, 2, 0.0),
    "base pruned 50% + 2 fine-tuning epochs": (8, 0, 0.5),
    "half width, unpruned (same size as pruned)": (4, 0, 0.0),
    "half width + QAT 2 epochs": (4, 2, 0.0),
}
DISTILLED = {"half width, distilled from base (fold by fold)": 0, "half width, distilled + QAT 2 epochs": 2}


def space(name: str, data: str, max_segments: int, folds: int, epochs: int, distill: str | None = None) -> dict:
    model: dict = {"dropout": 0.2, "families": {"afnet": {**BASE, "width": {"type": "categorical",
                                                                            "choices": [4, 8]}}}}
    train: dict = {"epochs": epochs, "batch_size": 64, "patience": 3, "lr": 2e-3, "weight_decay": 1e-3,
                   "augment": 0.3, "qat": {"type": "categorical", "choices": [0, 2]},
                   "prune": {"amount": {"type": "categorical", "choices": [0.0, 0.5]}, "epochs": 2}}
    if distill:
        model["families"]["afnet"]["width"] = 4
        train = {k: v for k, v in train.items() if k != "prune"}
        train["distill"] = {"teacher": distill, "alpha": 0.5, "temperature": 4.0}
    return {
        "study": {"name": name, "objectives": [{"metric": "f1", "direction": "maximize"},
                                               {"metric": "int8_kb", "direction": "minimize"}],
                  "sampler": {"type": "random", "seed": 1}},
        "budget": {"n_trials": len(DISTILLED) if distill else len(VARIANTS)},
        "data": {"path": data, "drop_labels": ["UNK"], "bandpass": [1.0, 25.0], "target_fs": 125,
                 "max_segments": max_segments, "val_fraction": 0.15, "test_fraction": 0.2, "split_seed": 2024},
        "validation": {"scheme": "subject_kfold", "folds": folds, "seed": 2024},
        "train": train,
        "model": model,
    }


def _search(tmp: Path, raw: dict, url: str, workers: int, enqueue: list[dict]) -> None:
    import optuna

    from atml.config import load_space
    from atml.search.coordinator import create_or_resume
    from atml.storage import open_storage

    p = tmp / f"{raw['study']['name']}.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    create_or_resume(load_space(str(p)), url)
    study = optuna.load_study(study_name=raw["study"]["name"], storage=open_storage(url))
    for params in enqueue:
        study.enqueue_trial(params)
    r = subprocess.run([sys.executable, "-m", "atml", "search", "--space", str(p), "--storage", url,
                        "--workers", str(workers), "--no-progress"], cwd=tmp, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"search {raw['study']['name']} failed:\n{r.stderr[-3000:]}")


def _row(name: str, t) -> dict:
    m, a = t.user_attrs.get("metrics", {}), t.user_attrs
    ptq = (a.get("deployed") or {}).get("post_training_int8") or {}
    return {"configuration": name, "params": a.get("n_params"), "onnx_kb": a.get("onnx_kb"),
            "int8_kb": round(a.get("int8_kb", float("nan")), 2), "f1": round(m.get("f1", float("nan")), 4),
            "int8_f1": round(m.get("int8_f1", float("nan")), 4), "ptq_int8_f1": ptq.get("f1"),
            "f1_fold_std": round(m.get("f1_fold_std", float("nan")), 4), "f1_lcb": round(m.get("f1_lcb", float("nan")), 4),
            "subject_f1_min": round(m.get("subject_f1_min", float("nan")), 4),
            "int8_subject_f1_min": round(m.get("int8_subject_f1_min", float("nan")), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "iesd2024" / "train.npz"))
    ap.add_argument("--max-segments", type=int, default=10000)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", help="folder to keep the study database and checkpoints in")
    ap.add_argument("--json")
    args = ap.parse_args()
    import optuna

    from atml.storage import open_storage

    tmp = Path(args.keep or tempfile.mkdtemp(prefix="atml-compression-"))
    tmp.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{tmp / 'compression.db'}"
    t0 = time.time()
    raw = space("compression", args.data, args.max_segments, args.folds, args.epochs)
    _search(tmp, raw, url, args.workers, [{"afnet.width": w, "train.qat": q, "train.prune.amount": p}
                                          for w, q, p in VARIANTS.values()])
    study = optuna.load_study(study_name="compression", storage=open_storage(url))
    trials = sorted(study.trials, key=lambda t: t.number)
    base = next(t for t in trials if t.params == {"afnet.width": 8, "train.qat": 0, "train.prune.amount": 0.0})
    teacher = str(tmp / "compression" / base.user_attrs["checkpoint"])
    _search(tmp, space("compression-distilled", args.data, args.max_segments, args.folds, args.epochs, teacher),
            url, args.workers, [{"train.qat": q} for q in DISTILLED.values()])
    students = optuna.load_study(study_name="compression-distilled", storage=open_storage(url)).trials
    rows = [_row(name, next(t for t in trials if (t.params["afnet.width"], t.params["train.qat"],
                                                   t.params["train.prune.amount"]) == v))
            for name, v in VARIANTS.items()]
    rows += [_row(name, next(t for t in students if t.params["train.qat"] == q)) for name, q in DISTILLED.items()]
    print(f"IESD-2024 {args.data}: max_segments {args.max_segments}, {args.folds} subject folds over the non-test "
          f"subjects, {args.epochs} epochs; {time.time() - t0:.0f} s")
    cols = list(rows[0])
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

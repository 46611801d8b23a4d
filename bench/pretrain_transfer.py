"""Pretraining as a study: AFNet pretrained on IESD-2024, fine-tuned on a few CPSC 2021 subjects.

One ``atml search`` trial pretrains AFNet (a fixed configuration) on IESD-2024 single-lead
5 s segments at 250 Hz (``--max-segments`` of the 50,000, subject-stratified). Then, for
each draw of CPSC 2021 training subjects and each count n of them, the same AFNet is
trained on CPSC lead I, cut into 5 s windows and resampled 200 -> 250 Hz (input [1, 1250]
as in IESD), once from scratch and once warm-started from the pretraining trial
(``model.init.from: pretrain:0``; optionally with frozen leading blocks), with the same
data, epochs and trial seed. Every fine-tuning run is its own one-trial study on a folder
holding only its training subjects plus one fixed validation subject (epoch selection);
``data.split_seed`` is chosen so that the split puts exactly that subject in validation.
Every run is exported (``atml export``) and scored by ``atml evaluate`` on the SAME
held-out CPSC subjects, which no run trains or selects on.

    python bench/pretrain_transfer.py [--iesd ../shared/data/iesd2024/train.npz]
        [--cpsc ../shared/data/cpsc2021_sample] [--max-segments 20000] [--pretrain-epochs 8]
        [--epochs 12] [--seeds 0,1] [--freeze 0] [--json out.json] [--keep DIR]

Subjects (CPSC 2021 sample, 6 subjects): held out P21 (no AF) and P84 (persistent AF);
draw A trains on P101, +P35, +P8 (validation P92); draw B trains on P92, +P8, +P35
(validation P101). P101 and P92 are paroxysmal (both classes), so n = 1 is trainable.
Two held-out subjects, each of one class, make a very noisy score: read differences of a
few F1 points as noise.
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

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ATML_SHARED_DATA", ROOT.parent / "shared" / "data"))
MODEL = {"width": 8, "depth": 4, "kernel_size": 7}
DROPOUT = 0.1
SIGNAL = {"bandpass": [0.5, 40.0], "normalize": "zscore", "target_fs": 250}
HELD_OUT = ("P21", "P84")
# draw -> (validation subject, training subjects in the order they are added)
DRAWS = {"A": ("P92", ("P101", "P35", "P8")), "B": ("P101", ("P92", "P8", "P35"))}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _atml(args: list[str], cwd: Path) -> str:
    r = subprocess.run([sys.executable, "-m", "atml", *args], cwd=cwd, capture_output=True, text=True, env=ENV)
    if r.returncode != 0:
        sys.exit(f"atml {' '.join(args)} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return r.stdout


def _search(tmp: Path, raw: dict, url: str) -> None:
    p = tmp / f"{raw['study']['name']}.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    _atml(["search", "--space", str(p), "--storage", url, "--workers", "1", "--no-progress"], tmp)


def pretrain_space(iesd: str, max_segments: int, epochs: int) -> dict:
    return {
        "study": {"name": "pretrain", "metric": "f1", "sampler": {"type": "random", "seed": 7}},
        "budget": {"n_trials": 1},
        "data": {"path": iesd, "drop_labels": ["UNK"], **SIGNAL, "max_segments": max_segments,
                 "val_fraction": 0.15, "split_seed": 2024},
        "train": {"epochs": epochs, "batch_size": 64, "patience": 3, "lr": 2e-3, "weight_decay": 1e-3,
                  "class_weighted": True},
        "model": {"dropout": DROPOUT, "families": {"afnet": dict(MODEL)}},
    }


def finetune_space(name: str, folder: Path, val_fraction: float, split_seed: int, epochs: int, seed: int,
                   init: dict | None) -> dict:
    model: dict = {"dropout": DROPOUT, "families": {"afnet": {} if init else dict(MODEL)}}
    if init:
        model["init"] = init
    return {
        "study": {"name": name, "metric": "f1", "sampler": {"type": "random", "seed": seed}},
        "budget": {"n_trials": 1},
        "data": {"path": str(folder), "format": "wfdb_rhythm", "positive": ["AFIB"],
                 "classes": ["non-AFIB", "AFIB"], "window": 5.0, "stride": 2.5, "window_mixed": "drop",
                 "rhythm_default": "N", "leads": ["I"], **SIGNAL, "val_fraction": val_fraction,
                 "test_fraction": 0.0, "split_seed": split_seed},
        "train": {"epochs": epochs, "batch_size": 32, "patience": 4, "lr": 1e-3, "weight_decay": 1e-3,
                  "class_weighted": True},
        "model": model,
    }


def subject_folder(cpsc: Path, dest: Path, subjects: list[str]) -> Path:
    """A folder of links to the CPSC records of ``subjects`` only (file data_<subject>_<n>)."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(cpsc.iterdir()):
        parts = f.stem.split("_")
        if len(parts) == 3 and f"P{int(parts[1])}" in subjects:
            (dest / f.name).symlink_to(f.resolve())
    return dest


def split_seed_for(subject, y, subjects: list[str], val: str, val_fraction: float) -> int:  # noqa: ANN001
    """The first data.split_seed whose subject split of these subjects validates on ``val`` alone."""
    import numpy as np

    from atml.data.splits import subject_split

    keep = np.isin(subject, subjects)
    for seed in range(2000):
        s = subject_split(subject[keep], y[keep], val_fraction, 0.0, seed)
        if s.val_subjects == (val,) and s.train_subjects == tuple(sorted(x for x in subjects if x != val)):
            return seed
    sys.exit(f"no split_seed in 0..1999 puts {val} alone in validation of {subjects}")


def zero_shot(checkpoint: Path, x, y, subject) -> dict:  # noqa: ANN001
    """The pretrained IESD model, head and all, on the held-out CPSC windows (no CPSC training)."""
    import numpy as np
    import torch

    from atml.metrics import binary_metrics
    from atml.trial.checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    keep = np.isin(subject, HELD_OUT)
    with torch.no_grad():
        p = torch.softmax(model.eval()(torch.from_numpy(np.ascontiguousarray(x[keep], dtype=np.float32))), 1)
    p = p[:, 1].numpy()
    m = binary_metrics(y[keep], p)
    acc = {s: round(float(((p[subject[keep] == s] >= 0.5) == y[keep][subject[keep] == s]).mean()), 3)
           for s in HELD_OUT}
    return {"f1": round(m["f1"], 4), "auroc": round(m["auroc"], 4), "subject_acc": acc}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iesd", default=str(SHARED / "iesd2024" / "train.npz"))
    ap.add_argument("--cpsc", default=str(SHARED / "cpsc2021_sample"))
    ap.add_argument("--max-segments", type=int, default=20000, help="IESD segments for pretraining")
    ap.add_argument("--pretrain-epochs", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=12, help="fine-tuning / from-scratch epochs")
    ap.add_argument("--seeds", default="0,1", help="study (trial) seeds, comma-separated")
    ap.add_argument("--counts", default="1,2,3", help="training-subject counts")
    ap.add_argument("--draws", default="A,B", help=f"subject draws among {sorted(DRAWS)}")
    ap.add_argument("--freeze", default="0", help="freeze values of the warm start, comma-separated")
    ap.add_argument("--keep", help="folder to keep the study database, checkpoints and exports in")
    ap.add_argument("--json")
    args = ap.parse_args()
    import numpy as np
    import optuna

    from atml.data import DataSpec, load_dataset
    from atml.onnx.evaluate import evaluate_model
    from atml.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seeds = [int(s) for s in args.seeds.split(",")]
    counts = [int(c) for c in args.counts.split(",")]
    freezes = [int(f) for f in args.freeze.split(",")]
    cpsc = Path(args.cpsc).resolve()
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="atml-pretrain-transfer-")).resolve()
    tmp.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{tmp / 'transfer.db'}"
    t0 = time.time()

    def trial0(name: str):  # noqa: ANN202
        return optuna.load_study(study_name=name, storage=open_storage(url)).trials[0]

    _search(tmp, pretrain_space(str(Path(args.iesd).resolve()), args.max_segments, args.pretrain_epochs), url)
    pre = trial0("pretrain")
    pre_s = time.time() - t0
    pre_f1 = pre.user_attrs.get("metrics", {}).get("f1")
    print(f"pretrain: IESD {args.max_segments} segments, {args.pretrain_epochs} epochs, "
          f"validation F1 {pre_f1:.3f} (IESD validation subjects), {pre_s:.0f} s", flush=True)

    # Window labels of every CPSC subject, read as the fine-tuning runs read them, to pick split seeds.
    full = finetune_space("probe", cpsc, 0.25, 0, 1, 0, None)["data"]
    spec = DataSpec(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in full.items()})
    ds = load_dataset(spec, tmp / "probe-cache")
    subject, y = np.asarray(ds.subject).astype(str), np.asarray(ds.y)
    windows = {s: (int((subject == s).sum()), int(y[subject == s].sum())) for s in np.unique(subject)}
    print("CPSC windows (total, AF) per subject: " + ", ".join(f"{s} {n}/{a}" for s, (n, a) in windows.items()))
    print(f"held out (scored, never trained or selected on): {', '.join(HELD_OUT)}", flush=True)
    zero = zero_shot(tmp / "pretrain" / pre.user_attrs["checkpoint"], ds.x, y, subject)
    print(f"zero-shot (the IESD model and head as they are): held-out F1 {zero['f1']:.3f} AUROC "
          f"{zero['auroc']:.3f}, accuracy per subject {zero['subject_acc']}", flush=True)

    inits = [("scratch", None)] + [(f"pretrained{'' if f == 0 else f' freeze {f}'}",
                                    {"from": "pretrain:0", "storage": url, "freeze": f}) for f in freezes]
    rows = []
    for draw in args.draws.split(","):
        val, order = DRAWS[draw]
        for n in counts:
            train = list(order[:n])
            vf = 1.0 / (n + 1)
            split_seed = split_seed_for(subject, y, train + [val], val, vf)
            folder = subject_folder(cpsc, tmp / "data" / f"{draw}{n}", train + [val])
            for seed in seeds:
                for label, init in inits:
                    name = f"ft-{draw}{n}-s{seed}-{label.replace(' ', '')}"
                    t1 = time.time()
                    _search(tmp, finetune_space(name, folder, vf, split_seed, args.epochs, seed, init), url)
                    t = trial0(name)
                    onnx = tmp / "onnx" / f"{name}.onnx"
                    onnx.parent.mkdir(exist_ok=True)
                    _atml(["export", "--storage", url, "--study", name, "--trial", str(t.number),
                           "--out", str(onnx)], tmp)
                    ev = evaluate_model(onnx, cpsc, runs=1, warmup=1, subjects=",".join(HELD_OUT))
                    a = t.user_attrs
                    split = a.get("subjects")
                    row = {"draw": draw, "n_subjects": n, "train_subjects": train, "val_subject": val,
                           "init": label, "seed": seed,
                           "train_windows": sum(windows[s][0] for s in train),
                           "train_af": sum(windows[s][1] for s in train),
                           "test_subjects": list(HELD_OUT), "test_windows": ev.segments,
                           "f1": round(ev.metrics["f1"], 4), "auroc": round(ev.metrics["auroc"], 4),
                           "accuracy": round(ev.metrics["accuracy"], 4),
                           "val_f1": round(a.get("metrics", {}).get("f1", float("nan")), 4),
                           "best_epoch": a.get("best_epoch"), "epochs_run": a.get("epochs_run"),
                           "seconds": round(time.time() - t1, 1), "val_subjects": split,
                           "init_record": a.get("init"),
                           "subject_acc": {d["subject"]: round(d["accuracy"], 3) for d in ev.per_subject}}
                    rows.append(row)
                    print(f"{draw} n={n} train {'+'.join(train)} val {val} {label:20s} seed {seed}: "
                          f"held-out F1 {row['f1']:.3f} AUROC {row['auroc']:.3f} (val F1 {row['val_f1']:.3f}, "
                          f"best epoch {row['best_epoch']}/{row['epochs_run']}, accuracy per held-out subject "
                          f"{row['subject_acc']}) {row['seconds']:.0f} s", flush=True)

    wall = time.time() - t0
    print(f"\nIESD pretraining {args.max_segments} segments x {args.pretrain_epochs} epochs; fine-tuning "
          f"{args.epochs} epochs; scored on held-out CPSC subjects {', '.join(HELD_OUT)} "
          f"({rows[0]['test_windows']} windows); wall {wall:.0f} s")
    acc_cols = " | ".join(f"acc {s}" for s in HELD_OUT)
    print(f"| draw | n | train subjects | windows (AF) | init | F1 per seed | mean F1 | mean AUROC | {acc_cols} |")
    print("|---|---|---|---|---|---|---|---|" + "---|" * len(HELD_OUT))
    print(f"| - | 0 | none | 0 | zero-shot IESD model | {zero['f1']:.3f} | {zero['f1']:.3f} | {zero['auroc']:.3f} | "
          + " | ".join(f"{zero['subject_acc'][s]:.3f}" for s in HELD_OUT) + " |")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["draw"], r["n_subjects"], r["init"]), []).append(r)
    for (draw, n, label), g in groups.items():
        f1s = [r["f1"] for r in g]
        print(f"| {draw} | {n} | {'+'.join(g[0]['train_subjects'])} | {g[0]['train_windows']} "
              f"({g[0]['train_af']}) | {label} | {' / '.join(f'{f:.3f}' for f in f1s)} | "
              f"{sum(f1s) / len(f1s):.3f} | {sum(r['auroc'] for r in g) / len(g):.3f} | "
              + " | ".join(f"{sum(r['subject_acc'][s] for r in g) / len(g):.3f}" for s in HELD_OUT) + " |")
    print("| mean over draws | | | | | | | |" + " |" * len(HELD_OUT))
    for label, _ in inits:
        for n in counts:
            g = [r for r in rows if r["init"] == label and r["n_subjects"] == n]
            print(f"| all | {n} | | | {label} | | {sum(r['f1'] for r in g) / len(g):.3f} | "
                  f"{sum(r['auroc'] for r in g) / len(g):.3f} | "
                  + " | ".join(f"{sum(r['subject_acc'][s] for r in g) / len(g):.3f}" for s in HELD_OUT) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "pretrain": {
            "val_f1": pre_f1, "seconds": round(pre_s, 1), "zero_shot": zero}, "held_out": list(HELD_OUT),
            "windows": windows, "wall_s": round(wall, 1), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

"""Comparator vs supervised training when there are only a few training subjects (issue 17.3).

From ``iesd2024/train.npz`` (AFIB vs the rest, UNK dropped): ``--held`` subjects (seeded,
``--held-per-subject`` random segments each) are scored and never trained on; the training
sets are the first 2, 4, 8 (``--sizes``) of a seeded draw of *other* subjects that have both
classes (at least 10 segments of each), ``--per-subject`` random segments each. Every
setting trains the same AFNet for a fixed number of epochs (last epoch kept: nothing is
chosen on the held-out subjects) with ``train.mode`` supervised and comparator, for each
``--seeds`` (the seed draws the training subjects, their segments and the initial weights,
the same for both modes). Prints held-out F1 and AUROC per setting.

    nice -n 10 python bench/small_data.py [--sizes 2,4,8] [--per-subject 64] [--seeds 0,1] [--epochs 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from atml.data import shared_data_dir
from atml.data.preprocess import normalize
from atml.metrics import task_metrics
from atml.models import PrototypeClassifier, build_model
from atml.train import TrainConfig, fit, predict_proba

CLASSES = ("non-AFIB", "AFIB")


class Segments:
    """The npz's segments (UNK dropped): int16 signals, turned into network input only for the rows asked for."""

    def __init__(self, path: Path) -> None:
        with np.load(path) as z:
            keep = z["label"] != "UNK"
            self.signal, self.gain = z["signal"][keep], float(z["gain"])
            self.y = (z["label"][keep] == "AFIB").astype(np.int64)
            self.subject = z["subject"][keep].astype(np.int64)

    def x(self, rows: np.ndarray) -> torch.Tensor:
        """Float32 (N, 1, samples), z-scored per segment as the package's preprocessing does."""
        x = (self.signal[rows].astype(np.float32) / self.gain)[:, None, :]
        return torch.from_numpy(np.ascontiguousarray(normalize(x, "zscore"), dtype=np.float32))


def _rows(subject: np.ndarray, chosen: np.ndarray, per: int, rng: np.random.Generator) -> np.ndarray:
    out = [rng.choice(np.flatnonzero(subject == s), size=min(per, int((subject == s).sum())), replace=False)
           for s in chosen]
    return np.sort(np.concatenate(out))


def _run(mode: str, data: Segments, tr: np.ndarray, x_held: torch.Tensor, y_held: np.ndarray, seed: int,
         args: argparse.Namespace) -> dict[str, float]:
    torch.manual_seed(seed)
    model = build_model("afnet", in_channels=1, n_classes=2)
    if mode == "comparator":
        model = PrototypeClassifier(model, 2)
    cfg = TrainConfig(epochs=args.epochs, batch_size=32, lr=args.lr, keep="last", patience=args.epochs + 1,
                      min_epochs=args.epochs, seed=seed, mode=mode)
    xt, yt = data.x(tr), torch.from_numpy(data.y[tr])
    probe = slice(0, 64)  # fit wants validation tensors; nothing is chosen on them (keep: last)
    res = fit(model, xt, yt, xt[probe], yt[probe], cfg, classes=CLASSES, subjects=data.subject[tr])
    model.load_state_dict(res.state_dict)
    proba, _ = predict_proba(model, x_held)
    return task_metrics("binary", y_held, proba, CLASSES)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--npz", type=Path, default=None, help="default: <shared data>/iesd2024/train.npz")
    ap.add_argument("--sizes", default="2,4,8", help="training subjects per setting")
    ap.add_argument("--per-subject", type=int, default=64)
    ap.add_argument("--held", type=int, default=10)
    ap.add_argument("--held-per-subject", type=int, default=200)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = Segments(args.npz or shared_data_dir() / "iesd2024" / "train.npz")
    y, subject = data.y, data.subject
    rng = np.random.default_rng(1234)
    subjects = np.unique(subject)
    held_s = rng.choice(subjects, size=args.held, replace=False)
    held = _rows(subject, held_s, args.held_per_subject, rng)
    x_held = data.x(held)
    mixed = [s for s in subjects if s not in held_s and min(int((y[subject == s] == c).sum()) for c in (0, 1)) >= 10]
    sizes = [int(s) for s in args.sizes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"held out: {len(held_s)} subjects, {len(held)} segments ({int(y[held].sum())} AFIB); "
          f"training subjects drawn from {len(mixed)} with both classes")
    table: dict[tuple[int, str], list[dict[str, float]]] = {}
    t0 = time.perf_counter()
    for seed in seeds:
        srng = np.random.default_rng(seed)
        order = srng.permutation(mixed)
        for n in sizes:
            tr = _rows(subject, order[:n], args.per_subject, np.random.default_rng([seed, n]))
            for mode in ("supervised", "comparator"):
                m = _run(mode, data, tr, x_held, y[held], seed, args)
                table.setdefault((n, mode), []).append(m)
                print(f"  seed {seed} subjects {n} ({len(tr)} segments) {mode:10s} f1={m['f1']:.3f} "
                      f"auroc={m['auroc']:.3f}  [{time.perf_counter() - t0:.0f} s]", flush=True)
    print()
    print("| training subjects | segments | mode | F1 per seed | mean F1 | mean AUROC |")
    print("|---|---|---|---|---|---|")
    for (n, mode), ms in table.items():
        f1 = [m["f1"] for m in ms]
        print(f"| {n} | {n * args.per_subject} | {mode} | {' / '.join(f'{v:.3f}' for v in f1)} | "
              f"{statistics.mean(f1):.3f} | {statistics.mean(m['auroc'] for m in ms):.3f} |")
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

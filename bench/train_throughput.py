"""Training throughput of one worker (1 torch thread, batch 32, AFNet-style model).

Compares, in the same run, on the same device and on the real IESD-2024 segments:
  atml     - atml.train.fit over the cached arrays (what every trial runs; includes
             the per-epoch validation pass on 512 segments)
  plain    - a bare PyTorch loop over tensors already on the device (the practical limit)
  txt      - ATML's original way: a DataLoader that re-reads every segment from its
             text file each epoch (np.loadtxt), on the 344 real text segments
and the whole-trial wall time (model build, epochs, metrics, checkpoint) against the
sum of its epochs, so the per-trial overhead is visible. With several ``--precision``
values, atml and plain run once per precision (bf16: torch.autocast, in both loops).

    python bench/train_throughput.py [--segments 4096] [--epochs 2] [--device cpu|cuda]
                                     [--precision fp32 bf16] [--batch 32]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch

from atml.config import space_from_dict
from atml.data import DataSpec, load_dataset, shared_data_dir
from atml.models import build_model
from atml.train import TrainConfig, fit
from atml.trial import Objective, prepare_data


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def plain_loop(x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int, precision: str = "fp32") -> float:
    """Samples/s of a bare loop on ``x``'s device: no validation, no augmentation, no sync per batch."""
    device = x.device
    torch.manual_seed(0)
    model = build_model("afnet", in_channels=1, n_classes=2).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-3, weight_decay=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(x), device=device)
        for i in range(0, len(x), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            with _autocast(device, precision):
                loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    _sync(device)
    return len(x) * epochs / (time.perf_counter() - t0)


class TxtSegments(torch.utils.data.Dataset):
    """ATML's loader: one np.loadtxt per segment per epoch."""

    def __init__(self, folder: Path) -> None:
        self.files = sorted(folder.glob("*.txt"))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        sig = np.loadtxt(self.files[i], dtype=np.float32)
        sig = (sig - sig.mean()) / (sig.std() + 1e-6)
        label = 1 if self.files[i].name.split("-")[1] == "AFIB" else 0
        return torch.from_numpy(sig[None, :]), label


def txt_loop(folder: Path, epochs: int, batch: int, device: torch.device) -> float:
    torch.manual_seed(0)
    ds = TxtSegments(folder)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=0)
    model = build_model("afnet", in_channels=1, n_classes=2).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-3, weight_decay=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for _ in range(epochs):
        for xb, yb in dl:
            opt.zero_grad()
            loss_fn(model(xb.to(device)), yb.to(device)).backward()
            opt.step()
    _sync(device)
    return len(ds) * epochs / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segments", type=int, default=4096, help="training segments used")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32"],
                    help="one run of atml and of the plain loop per precision")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "atml-bench-cache"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("train_throughput: --device cuda needs a GPU (torch sees no CUDA device)", file=sys.stderr)
        raise SystemExit(2)
    device = torch.device(args.device)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = shared_data_dir() / "iesd2024"
    spec = DataSpec(path=str(data / "train.npz"), drop_labels=("UNK",), val_fraction=0.2, split_seed=0)
    ds = load_dataset(spec, args.cache)
    split = ds.split(spec)
    rng = np.random.default_rng(0)
    tr = np.sort(rng.choice(split.train, size=min(args.segments, len(split.train)), replace=False))
    va = np.sort(rng.choice(split.val, size=512, replace=False))
    # On the device once, as a worker holds its data: neither loop copies per batch.
    x_tr, y_tr = (torch.from_numpy(np.array(ds.x[tr])).to(device),
                  torch.from_numpy(np.array(ds.y[tr], dtype=np.int64)).to(device))
    x_va, y_va = (torch.from_numpy(np.array(ds.x[va])).to(device),
                  torch.from_numpy(np.array(ds.y[va], dtype=np.int64)).to(device))
    b = args.batch

    runs: dict[str, dict[str, float]] = {}
    for precision in args.precision:
        # Warm-up: the first forward of a new batch shape (e.g. the 1024-segment validation
        # batches) builds oneDNN or cuDNN kernels once per process; measure the steady state.
        plain_loop(x_tr[:256], y_tr[:256], 1, b, precision)
        fit(build_model("afnet", in_channels=1, n_classes=2), x_tr[:256], y_tr[:256], x_va, y_va,
            TrainConfig(epochs=1, batch_size=b, precision=precision))
        plain = plain_loop(x_tr, y_tr, args.epochs, b, precision)
        torch.manual_seed(0)
        res = fit(build_model("afnet", in_channels=1, n_classes=2), x_tr, y_tr, x_va, y_va,
                  TrainConfig(epochs=args.epochs, batch_size=b, patience=99, precision=precision))
        atml_sps = len(x_tr) * args.epochs / res.epoch_seconds
        runs[precision] = {"atml_samples_per_s": round(atml_sps, 1), "plain_samples_per_s": round(plain, 1),
                           "atml_vs_plain": round(atml_sps / plain, 3)}
    txt = txt_loop(data / "txt_sample", max(1, args.epochs), b, device)

    # Whole trial through the objective, as a worker runs it (data already cached).
    first = args.precision[0]
    raw = {"study": {"name": "bench", "pruner": {"type": "none"}}, "budget": {"n_trials": 1},
           "data": {"path": str(data / "train.npz"), "drop_labels": ["UNK"], "max_segments": args.segments + 1500},
           "train": {"epochs": args.epochs, "batch_size": b, "patience": 99, "precision": first},
           "model": {"families": {"afnet": {}}}}
    space = space_from_dict(raw)
    from atml.trial import data_spec

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        prepared = prepare_data(data_spec(space.data), args.cache, device)
        t_data = time.perf_counter() - t0
        study = optuna.create_study(direction="maximize")
        t1 = time.perf_counter()
        study.optimize(Objective(space, prepared, tmp), n_trials=1)
        t_trial = time.perf_counter() - t1
    epochs_s = study.trials[0].user_attrs["epoch_seconds"]
    head = runs[first]
    out = {
        "segments": len(x_tr), "epochs": args.epochs, "threads": 1, "batch": b, "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "precision": first,
        **head, "txt_dataloader_samples_per_s": round(txt, 1),
        "atml_vs_txt": round(head["atml_samples_per_s"] / txt, 2),
        "trial_wall_s": round(t_trial, 2), "trial_epochs_s": epochs_s,
        "trial_overhead_pct": round(100 * (t_trial - epochs_s) / epochs_s, 2),
        "worker_data_load_s": round(t_data, 2), "by_precision": runs,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    where = out["gpu"] or "CPU, 1 thread"
    print(f"training throughput, AFNet default, {where}, batch {b}, {len(x_tr)} IESD segments x {args.epochs} epochs")
    for precision, r in runs.items():
        print(f"  {precision}  atml fit (incl. validation) {r['atml_samples_per_s']:9.1f} samples/s   "
              f"{r['atml_vs_plain']:.2f}x plain ({r['plain_samples_per_s']:.1f} samples/s)")
    print(f"  txt DataLoader (ATML)             {txt:9.1f} samples/s   atml {first} is {out['atml_vs_txt']:.1f}x that")
    print(f"  whole trial ({first}) {t_trial:.2f} s vs epochs {epochs_s:.2f} s -> overhead "
          f"{out['trial_overhead_pct']:.2f}% (worker data load from cache, once per worker: {t_data:.2f} s)")


if __name__ == "__main__":
    main()

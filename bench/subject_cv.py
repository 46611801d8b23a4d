"""Subject-wise k-fold cross-validation of one configuration on a space's non-test subjects.

A search picks its winner by the validation subjects alone (8 of them in the IESD spaces),
and the maximum over a hundred trials on so few people is an optimistic, noisy figure.
This script asks the question a search cannot: how well does *this* configuration do on
people it has never seen, over every subject outside the test split? The training +
validation subjects are dealt into ``--folds`` folds (seeded); each fold is held out in
turn while the configuration trains on the others for a fixed number of epochs (the
held-out fold steers nothing: no early stopping, no learning-rate schedule, no choice of
epoch). The test subjects are never loaded.

    python bench/subject_cv.py --space search_spaces/afib_iesd_final.yaml \\
        --storage sqlite:///studies/atml.db --trial 52 [--set train.stretch=0.3] [--folds 6] [--jobs 2]
    python bench/subject_cv.py --space search_spaces/afib_iesd_final.yaml --set model.family=afnet ...

Prints the pooled held-out metrics per epoch (F1, accuracy, precision, recall, AUROC at the
last epoch), the spread over folds and the subjects with the lowest F1; ``--json`` writes it all.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _configuration(args: argparse.Namespace, space: Any) -> tuple[dict[str, Any], int | None]:
    """The flat parameters (a trial's, then ``--set``) and the trial's best_epoch + 1, if known."""
    flat: dict[str, Any] = {}
    trial_epochs = None
    if args.trial is not None:
        import optuna

        from atml.storage import open_storage

        study = optuna.load_study(study_name=args.study or space.study.name, storage=open_storage(args.storage))
        trial = study.trials[args.trial]
        flat.update(trial.params)
        if "best_epoch" in trial.user_attrs:
            trial_epochs = int(trial.user_attrs["best_epoch"]) + 1
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"subject_cv: --set needs key=value, got {item!r}")
        flat[key] = _parse_value(value)
    return flat, trial_epochs


def _fold_job(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    from atml.config import trial_seed
    from atml.data import load_dataset
    from atml.models import build_model
    from atml.train import TrainConfig, fit, predict_proba
    from atml.trial import data_spec

    torch.set_num_threads(job["threads"])
    spec = data_spec(job["data"])
    ds = load_dataset(spec, job["cache"])
    split = ds.split(spec)
    pool = np.sort(np.concatenate([split.train, split.val]))
    held = np.isin(ds.subject[pool], job["held"])
    tr, out = pool[~held], pool[held]
    x_tr = torch.from_numpy(np.ascontiguousarray(ds.x[tr]))
    y_tr = torch.from_numpy(np.asarray(ds.y[tr], dtype=np.int64))
    x_out = torch.from_numpy(np.ascontiguousarray(ds.x[out]))
    y_out = np.asarray(ds.y[out], dtype=np.int64)
    # What fit() calls validation (plateau schedule, its own bookkeeping) is a slice of the
    # training subjects here: the held-out fold must not steer anything.
    inner = torch.arange(0, len(tr), 10)
    seed = trial_seed(job["seed"], job["fold"])
    torch.manual_seed(seed)
    model = build_model(job["family"], in_channels=ds.n_leads, n_classes=len(ds.classes), **job["hparams"])
    cfg = TrainConfig.from_params(job["train"], epochs=job["epochs"], seed=seed, keep="last",
                                  patience=job["epochs"] + 1, min_epochs=job["epochs"])
    per_epoch: list[list[float]] = []

    def report(epoch: int, value: float, m: dict[str, float]) -> None:
        if epoch < job["epochs"] - 1:  # the last epoch is scored below, with the weights kept
            per_epoch.append(predict_proba(model, x_out)[0][:, 1].tolist())
            model.train()

    t0 = time.perf_counter()
    res = fit(model, x_tr, y_tr, x_tr[inner], y_tr[inner], cfg, report=report)
    model.load_state_dict(res.state_dict)  # with train.ema: the average, not the last step
    per_epoch.append(predict_proba(model, x_out)[0][:, 1].tolist())
    return {"fold": job["fold"], "subjects": [str(s) for s in ds.subject[out]], "y": y_out.tolist(),
            "p": per_epoch, "seconds": time.perf_counter() - t0, "train_segments": int(len(tr))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", required=True, type=Path)
    ap.add_argument("--storage", default="sqlite:///studies/atml.db", help="with --trial: where the study is")
    ap.add_argument("--study", default=None, help="with --trial: study name (default: the space's)")
    ap.add_argument("--trial", type=int, default=None, help="take this trial's parameters (and best_epoch + 1)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a parameter as a trial stores it (train.lr=5e-4, afnet.width=8); repeatable")
    ap.add_argument("--folds", type=int, default=6)
    ap.add_argument("--fold-seed", type=int, default=11, help="seed of the subject-to-fold deal")
    ap.add_argument("--epochs", type=int, default=None, help="default: the trial's best_epoch + 1, else train.epochs")
    ap.add_argument("--jobs", type=int, default=2, help="folds trained at once (one thread each)")
    ap.add_argument("--cache", default="studies/cache", help="preprocessed-data cache (shared with atml search)")
    ap.add_argument("--worst", type=int, default=8, help="subjects listed with the lowest F1")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from atml.config import load_space
    from atml.data import load_dataset
    from atml.errors import AtmlError
    from atml.metrics import binary_metrics
    from atml.trial import data_spec

    try:
        space = load_space(args.space)
        flat, trial_epochs = _configuration(args, space)
        params = space.params_from_flat(flat).as_dict()
    except KeyError as e:
        print(f"subject_cv: the configuration lacks {e.args[0]} (give it with --set or --trial)", file=sys.stderr)
        raise SystemExit(2) from None
    except AtmlError as e:
        print(f"subject_cv: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    searched = {p.name for p in space.params}
    for key, value in flat.items():  # settings the space fixes, changed with --set
        section, _, name = key.partition(".")
        if key in searched or not name:
            continue
        if section in ("train", "data"):
            params[section][name] = value
        elif section == params["model"]["family"]:
            params["model"]["hparams"][name] = value
    if args.folds < 2:
        print("subject_cv: --folds must be at least 2", file=sys.stderr)
        raise SystemExit(2)
    data_section = space.data_section(params["data"])
    spec = data_spec(data_section)
    ds = load_dataset(spec, args.cache)  # builds the cache once, before the workers read it
    split = ds.split(spec)
    subjects = np.array(sorted(set(split.train_subjects) | set(split.val_subjects)))
    order = np.random.default_rng(args.fold_seed).permutation(len(subjects))
    epochs = args.epochs or trial_epochs or int(params["train"].get("epochs", 20))
    jobs = [{"fold": k, "held": subjects[order[k::args.folds]].tolist(), "data": data_section,
             "cache": args.cache, "family": params["model"]["family"], "hparams": params["model"]["hparams"],
             "train": params["train"], "epochs": epochs, "seed": space.study.seed, "threads": 1}
            for k in range(args.folds)]
    print(f"{len(subjects)} subjects outside the test split in {args.folds} folds; "
          f"{params['model']['family']} {params['model']['hparams']}; {epochs} epochs per fold", flush=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as ex:
        results = sorted(ex.map(_fold_job, jobs), key=lambda r: r["fold"])
    wall = time.perf_counter() - t0

    y = np.concatenate([r["y"] for r in results])
    subj = np.concatenate([r["subjects"] for r in results])
    by_epoch = [binary_metrics(y, np.concatenate([r["p"][e] for r in results])) for e in range(epochs)]
    last_p = np.concatenate([r["p"][-1] for r in results])
    final = by_epoch[-1]
    folds = [binary_metrics(np.array(r["y"]), np.array(r["p"][-1]))["f1"] for r in results]
    per_subject = {}
    for s in np.unique(subj):
        m = binary_metrics(y[subj == s], last_p[subj == s])
        per_subject[str(s)] = {k: m[k] for k in ("f1", "tp", "fp", "fn", "tn")}
    print("pooled held-out F1 per epoch: " + " ".join(f"{m['f1']:.4f}" for m in by_epoch))
    print("last epoch: " + ", ".join(f"{k} {final[k]:.4f}" for k in ("f1", "accuracy", "precision", "recall", "auroc")))
    print(f"fold F1: mean {statistics.mean(folds):.4f}, min {min(folds):.4f}, max {max(folds):.4f}")
    scored = sorted(((v["f1"], s) for s, v in per_subject.items() if v["tp"] + v["fn"] + v["fp"]), key=lambda t: t[0])
    print("lowest subject F1: " + ", ".join(
        f"{s} {f:.3f} (fp {per_subject[s]['fp']}, fn {per_subject[s]['fn']})" for f, s in scored[:args.worst]))
    print(f"wall {wall:.0f} s for {args.folds} folds ({args.jobs} at once)")
    if args.json:
        args.json.write_text(json.dumps({
            "space": str(args.space), "configuration": flat, "epochs": epochs, "folds": args.folds,
            "fold_seed": args.fold_seed, "by_epoch": by_epoch, "fold_f1": folds, "per_subject": per_subject,
            "wall_s": wall}, indent=1, default=float))


if __name__ == "__main__":
    main()

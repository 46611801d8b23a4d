"""``atml export`` and ``atml evaluate``.

Light on purpose: torch, onnx and onnxruntime are imported inside the handlers so that
``atml --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from atml.cli.common import Command, add_device_arg, add_storage_arg, env

__all__ = ["EVALUATE", "EXPORT"]

_METRICS = ("f1", "accuracy", "precision", "recall", "auroc")


def _export_arguments(e: argparse.ArgumentParser) -> None:
    add_storage_arg(e)
    e.add_argument("--study", required=True, help="study name")
    e.add_argument("--trial", type=int, default=None, help="trial number (default: the study's best trial)")
    e.add_argument("--out", required=True, help="ONNX file to write, e.g. best.onnx (sidecar: <out>.json)")
    e.add_argument("--int8", action="store_true",
                   help="also write <name>.int8.onnx (static QDQ int8, calibrated on training segments)")
    e.add_argument("--artifacts", default=env("ARTIFACTS"),
                   help="folder holding <study>/trials/ (default: beside the SQLite file, else ./studies)")
    e.add_argument("--data", default=None, help="local copy of the study's data (default: the stored path)")
    e.add_argument("--refit", action="store_true",
                   help="retrain the trial's configuration on training + validation subjects for its best "
                        "epoch count (test subjects stay unseen; validation figures become in-sample)")
    e.add_argument("--ensemble", type=int, default=1, metavar="K",
                   help="train K members with different seeds and export their mean logits as one model")
    e.add_argument("--from-folds", action="store_true",
                   help="a cross-validated trial (validation.scheme: subject_kfold): ship its K fold models as "
                        "one mean-logits model, no retraining (together they saw every non-test subject; the "
                        "sidecar keeps the out-of-fold figures as the estimate)")
    e.add_argument("--no-preprocessing", action="store_true",
                   help="ship the network alone, fed preprocessed input (default: a graph that takes the "
                        "recording as the source has it and does the trial's preprocessing inside)")
    add_device_arg(e, "train --refit/--ensemble members (export and int8 run on the CPU)")
    e.add_argument("--json", action="store_true", help="print the sidecar(s) as one JSON object")
    e.add_argument("-v", "--verbose", action="store_true")
    e.set_defaults(quiet=True)  # warnings only, so an error stays the one line on stderr


def _evaluate_arguments(v: argparse.ArgumentParser) -> None:
    v.add_argument("--model", required=True, help="ONNX file written by atml export (its .json sidecar beside it)")
    v.add_argument("--data", required=True, help="labelled data: folder of IESD .txt segments, .npz, ...")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.add_argument("--batch-latency", action="store_true", help="also time batches of 16 and 128 segments")
    v.add_argument("--subjects", default=None,
                   help="score only these subjects: 'test' (the study's held-out test subjects, from the "
                        "sidecar) or a comma-separated list")
    v.add_argument("--on-bad", choices=("error", "skip"), default=None,
                   help="a file that cannot be read: stop with its name (error, the default) or skip it, "
                        "score the rest and report how many were skipped (skip; data.on_bad in a space)")
    v.add_argument("--runs", type=int, default=200, help="timed batch-1 runs after 20 warm-up runs (default 200)")
    v.add_argument("-v", "--verbose", action="store_true")
    v.set_defaults(quiet=True)


def _f(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _metric_line(m: dict[str, Any] | None) -> str:
    return "  ".join(f"{k} {_f(m.get(k))}" for k in _METRICS) if m else "n/a"


def _band(band: list[float | None]) -> str:
    low, high = band
    if low is not None and high is not None:
        return f"band-pass {low:g}-{high:g} Hz"
    return f"high-pass {low:g} Hz" if low is not None else f"low-pass {high:g} Hz"


def _steps(s: dict[str, Any]) -> str:
    """The preprocessing a sidecar describes, in words."""
    pre, net = s["preprocessing"], s["network"]
    graph = pre.get("graph") or {}
    out = []
    if pre.get("leads"):
        out.append(f"leads {', '.join(pre['leads'])}")
    if pre.get("target_fs") and (graph.get("resample") or not pre.get("in_graph")):
        src = graph["resample"]["from_hz"] if graph.get("resample") else None
        out.append(f"resample {src} -> {pre['target_fs']} Hz" if src else f"resampled to {pre['target_fs']} Hz")
    if pre.get("bandpass"):
        out.append(_band(pre["bandpass"]))
    if pre.get("window"):
        out.append(f"one {pre['window']:g} s window" if pre.get("in_graph") else f"{pre['window']:g} s windows")
    if pre.get("normalize") == "zscore":
        out.append("z-score per lead")
    done = ", ".join(out) or "none"
    return f"{done}; network input [{', '.join(map(str, net['shape']))}] @ {net['fs']} Hz"


def _export(args: argparse.Namespace) -> int:
    from atml.errors import ExportError
    from atml.onnx.export import export_trial
    from atml.onnx.sidecar import sidecar_path

    if args.trial is not None and args.trial < 0:
        raise ExportError(f"--trial must be >= 0 (got {args.trial})")
    from atml.device import resolve_device

    device = resolve_device(args.device)  # a missing device: one line, exit 2, before anything is read
    res = export_trial(args.storage, args.study, args.out, trial=args.trial, int8=args.int8,
                       artifacts=args.artifacts, data_path=args.data, refit=args.refit, ensemble=args.ensemble,
                       from_folds=args.from_folds, preprocessing=not args.no_preprocessing, device=device)
    s = res.sidecar
    if args.json:
        print(json.dumps({"model": str(res.path), "sidecar": s, "int8_model": str(res.int8_path or "") or None,
                          "int8_sidecar": res.int8_sidecar}, indent=2))
        return 0
    inp, par, raw = s["input"], s["parity"], s["input"]["kind"] == "raw"
    outs = [s["output"], *([s["probabilities"]] if s.get("probabilities") else [])]
    print(f"exported trial #{s['trial']['number']} of study {s['study']!r} ({s['family']}, "
          f"{s['n_params']} parameters) -> {res.path}")
    print(f"  onnx opset {s['opset']}: input {inp['name']} [{', '.join(map(str, inp['shape']))}] float32 "
          f"{'raw ' if raw else ''}@ {inp['fs']} Hz, output{'s' if len(outs) > 1 else ''} "
          + ", ".join(f"{o['name']} [{', '.join(map(str, o['shape']))}]" for o in outs) + "; onnx.checker ok")
    print(f"  {'preprocessing in the graph' if raw else 'input must be preprocessed'}: {_steps(s)}")
    print(f"  parity vs torch on {par['segments']} validation segments: max |diff| {par['max_abs_diff']:.3g} "
          f"(< {par['tolerance']:g})")
    if raw:
        rp = par["raw"]
        print(f"  raw graph vs Python preprocessing + torch on {rp['segments']} validation items: "
              f"max |probability diff| {rp['max_prob_diff']:.3g} (< {rp['tolerance']:g})")
        tm = rp.get("training_match")
        if tm:
            print(f"  note: {tm['note']}: probabilities differ from the network's on the {tm['segments']} "
                  f"training-style validation windows by up to {tm['max_prob_diff']:.3g} "
                  f"(agreement {tm['agreement']:.3f})")
    net_kb = (s["network"].get("size_bytes") or 0) / 1024
    print(f"  size {s['size_bytes']} bytes ({s['size_kb']:.1f} KB" + (f"; network alone {net_kb:.1f} KB" if raw else "")
          + f")  sha256 {s['sha256'][:16]}...")
    fit = s["fit"]
    if fit["mode"] == "folds":
        print(f"  folds: the trial's {fit['members']} fold models averaged (mean logits), not retrained; "
              f"together they saw {len(fit.get('subjects_seen') or [])} subjects")
    elif fit["mode"] != "checkpoint":
        print(f"  {fit['mode']}: {fit['members']} member(s) trained on {fit['subjects']} subjects "
              f"({fit['segments']} segments" + (f", {fit['epochs']} epochs" if fit.get("epochs") else "")
              + f", {fit['seconds']:.0f} s)" + (f", {fit['combine']}" if fit.get("combine") else ""))
    where = "" if s["validation"]["held_out"] else (", in-sample after refit" if fit["mode"] != "folds"
                                                   else ", in-sample: the fold models trained on it")
    print(f"  validation ({s['validation']['segments']} segments, onnxruntime{where}): "
          f"{_metric_line(s['metrics']['float'])}")
    cv = fit.get("cross_validated")
    if cv:
        print(f"  cross-validated estimate ({cv['folds']} subject folds, out-of-fold): {_metric_line(cv['metrics'])}")
    if res.int8_sidecar is not None:
        q = res.int8_sidecar
        ratio = q["size_bytes"] / s["size_bytes"]
        print(f"  int8 -> {res.int8_path}: {q['size_bytes']} bytes ({q['size_kb']:.1f} KB, {ratio:.2f}x float), "
              f"agreement with float {q['quantization']['agreement_with_float']:.3f}")
        print(f"  int8 validation: {_metric_line(q['metrics']['int8'])}")
    print(f"  sidecar {sidecar_path(res.path)}" + (f", {sidecar_path(res.int8_path)}" if res.int8_path else "")
          + f"  ({res.seconds:.1f} s)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from atml.errors import ExportError
    from atml.onnx.evaluate import evaluate_model

    if args.runs < 1:
        raise ExportError(f"--runs must be >= 1 (got {args.runs})")
    ev = evaluate_model(args.model, args.data, batch_latency=args.batch_latency, runs=args.runs,
                        subjects=args.subjects, on_bad=args.on_bad)
    d = ev.to_dict()
    if args.json:
        print(json.dumps(d, indent=2, allow_nan=False))
        return 0
    print(f"model {d['model']} ({d['precision']}, {d['size_bytes']} bytes = {d['size_kb']:.1f} KB, "
          f"input [{', '.join(map(str, d['input_shape']))}] {'raw ' if d['input_kind'] == 'raw' else ''}"
          f"@ {d['input_fs']} Hz)")
    print(f"data  {d['data']} ({d['format']}): {d['segments']} segments, {d['subjects']} subjects"
          + (f", {d['skipped']} skipped" if d["skipped"] else ""))
    print(f"  test:       {_metric_line(d['metrics'])}")
    if d["validation_metrics"]:
        where = "search split, from the sidecar" if d["validation_held_out"] else \
            "search split, from the sidecar; in-sample: the refit trained on it"
        print(f"  validation: {_metric_line(d['validation_metrics'])}  ({where})")
    neg, pos = d["classes"][0], d["classes"][1]
    (tn, fp), (fn, tp) = d["confusion"]["matrix"]
    w = max(len(neg), len(pos), 8)
    print(f"  confusion (rows true, columns predicted):\n    {'':{w}s} {neg:>{w}s} {pos:>{w}s}\n"
          f"    {neg:{w}s} {tn:>{w}d} {fp:>{w}d}\n    {pos:{w}s} {fn:>{w}d} {tp:>{w}d}")
    print(f"  per subject:\n    {'subject':10s} {'segments':>8s} {'positives':>9s} {'accuracy':>8s} {'f1':>6s}")
    for r in d["per_subject"]:
        print(f"    {r['subject']:10s} {r['segments']:8d} {r['positives']:9d} {r['accuracy']:8.3f} "
              f"{_f(r['f1']) if r['f1'] is None else format(r['f1'], '.3f'):>6s}")
    lat = d["latency"]
    print(f"  latency per segment, batch 1, 1 thread: mean {lat['mean_ms']:.3f} ms  p95 {lat['p95_ms']:.3f} ms  "
          f"({lat['runs']} runs after {lat['warmup']} warm-up)")
    for b in d["batch_latency"]:
        print(f"  latency per segment, batch {b['batch']}, 1 thread: mean {b['mean_ms']:.3f} ms  "
              f"p95 {b['p95_ms']:.3f} ms")
    if d["sha256_matches_sidecar"] is False:
        print("  note: the model file differs from the one its sidecar describes (sha256)")
    return 0


EXPORT = Command("export", "export a trial (default: the best) to a verified ONNX file", _export_arguments, _export)
EVALUATE = Command("evaluate", "score an exported ONNX model on labelled data (the official test)",
                   _evaluate_arguments, _evaluate)

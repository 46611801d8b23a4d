"""``atml avoid list|clear|export`` and ``atml gate list|sync`` (light module)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from atml.cli.common import Command, add_storage_arg, env

__all__ = ["AVOID", "GATE"]


def _avoid_arguments(a: argparse.ArgumentParser) -> None:
    asub = a.add_subparsers(dest="avoid_command", required=True)
    for name, helptext in (("list", "show the entries"), ("clear", "remove every entry"),
                           ("export", "write ATML's avoid.txt (one parameter) or YAML")):
        p = asub.add_parser(name, help=helptext)
        add_storage_arg(p)
        p.add_argument("--study", required=True)
        if name == "list":
            p.add_argument("--json", action="store_true")
        if name == "export":
            p.add_argument("--out", default="-", help="file to write (default: stdout)")


def _gate_arguments(gp: argparse.ArgumentParser) -> None:
    gsub = gp.add_subparsers(dest="gate_command", required=True)
    p = gsub.add_parser("list", help="filed folders, best first")
    add_storage_arg(p)
    p.add_argument("--study", required=True)
    p.add_argument("--json", action="store_true")
    p = gsub.add_parser("sync", help="materialise the gate folders on this machine from the artifact store")
    add_storage_arg(p)
    p.add_argument("--study", required=True)
    p.add_argument("--artifacts", default=env("ARTIFACTS"),
                   help="local artifacts folder (default: beside the SQLite file, else ./studies)")
    p.add_argument("--artifact-store", default=env("ARTIFACT_STORE"),
                   help="the store workers uploaded to (default ARTIFACTS/artifact-store)")


def _study(args: argparse.Namespace) -> tuple[Any, Any]:
    import optuna

    from atml.search.worker import load_study_space
    from atml.storage import open_storage

    storage = open_storage(args.storage)
    space = load_study_space(storage, args.study)
    return optuna.load_study(study_name=args.study, storage=storage), space


def _avoid(args: argparse.Namespace) -> int:
    from atml import gate as g

    study, space = _study(args)
    entries = g.avoid_entries(study.user_attrs)
    if args.avoid_command == "clear":
        n = g.clear_avoid(study)
        print(f"cleared {n} avoid-list entries of study {args.study}")
        return 0
    if args.avoid_command == "list":
        if args.json:
            print(json.dumps([e.__dict__ for e in entries], indent=2))
            return 0
        if not entries:
            print("avoid list is empty")
        for e in entries:
            params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in e.params.items())
            print(f"trial {e.trial:4d}  {e.reason}\n            {params}")
        return 0
    names = [p.name for p in space.params]
    if len(names) == 1:  # ATML's avoid.txt: one avoided value per line
        text = "".join(f"{e.params[names[0]]}\n" for e in entries if names[0] in e.params)
    else:
        import yaml

        text = yaml.safe_dump({"study": args.study, "radius": space.gate.radius,
                               "entries": [e.__dict__ for e in entries]}, sort_keys=False)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
        print(f"wrote {len(entries)} entries to {args.out}")
    return 0


def _gate(args: argparse.Namespace) -> int:
    from atml import gate as g
    from atml.search.coordinator import default_artifacts

    study, _ = _study(args)
    recs = g.gate_records(study.user_attrs)
    if args.gate_command == "list":
        if args.json:
            print(json.dumps(recs, indent=2))
            return 0
        if not recs:
            print("no gate folders")
        for r in recs:
            m = "  ".join(f"{k} {v:.4f}" for k, v in r["metrics"].items())
            print(f"{r['folder']:12s} trial {r['trial']:4d}  {m}")
        return 0
    artifacts = Path(args.artifacts or default_artifacts(args.storage))
    store = g.artifact_store(args.artifact_store or artifacts / "artifact-store")
    written, removed = g.sync_folders(study.user_attrs, store, artifacts / args.study / "gate")
    print(f"gate folders of {args.study} in {artifacts / args.study / 'gate'}: {len(recs)} recorded, "
          f"{len(written)} written, {len(removed)} removed")
    return 0


AVOID = Command("avoid", "the study's shared avoid list", _avoid_arguments, _avoid)
GATE = Command("gate", "gate folders recorded in the study", _gate_arguments, _gate)

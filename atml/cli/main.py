"""The ``atml`` command line: the static command table, the parser and the entry points.

Each command group lives in its own module (:mod:`atml.cli.search`, :mod:`atml.cli.export`,
:mod:`atml.cli.dashboard`, :mod:`atml.cli.gate`, :mod:`atml.cli.storage`); all of them are
light, importing torch, optuna or fastapi only inside their handlers, so ``atml --help``
stays fast. User errors (:class:`AtmlError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from atml import __version__
from atml.cli import compare, dashboard, export, gate, search, storage
from atml.cli.common import Command
from atml.errors import AtmlError

__all__ = ["COMMANDS", "EXIT_USAGE", "build_parser", "main", "run"]

EXIT_USAGE = 2

# The order is the order of `atml --help`.
COMMANDS: Mapping[str, Command] = {c.name: c for c in (
    search.SEARCH, search.WORKER, search.STUDIES, compare.COMPARE,
    export.EXPORT, export.EVALUATE,
    dashboard.DASHBOARD,
    gate.AVOID, gate.GATE,
    storage.STORAGE_PROXY, storage.BACKUP,
)}


def build_parser() -> argparse.ArgumentParser:
    """The ``atml`` argument parser with every command of :data:`COMMANDS`.

    Option defaults read the ``ATML_*`` environment when the parser is built."""
    ap = argparse.ArgumentParser(prog="atml", description="AutoML search for ECG classifiers.")
    ap.add_argument("--version", action="version", version=f"atml {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_parser(sub)
    return ap


def run() -> None:
    """The console script and ``python -m atml``: :func:`main`, then exit.

    ``search`` and ``worker`` end with ``os._exit`` once their output is flushed: by then
    every result is committed to the storage and every file renamed into place, and the
    interpreter's own teardown of torch, scipy and sklearn takes over a second for
    nothing, which every search would otherwise wait for at its end (once in each worker,
    once in itself).
    """
    rc = main()
    if sys.argv[1:2] in (["search"], ["worker"]):
        logging.shutdown()
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except (OSError, ValueError):
                pass
        os._exit(rc)
    sys.exit(rc)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``atml`` console script: parse ``argv``, run the command, return its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["worker", "--standby"]:
        return _standby()
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if getattr(args, "verbose", False) else (
        logging.WARNING if getattr(args, "quiet", False) or args.command == "search" else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING if level >= logging.WARNING else optuna.logging.INFO)
        return COMMANDS[args.command].handler(args)
    except AtmlError as e:
        print(f"atml: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C before the workers ran (a search handles its own)
        print("atml: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `atml ... | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _standby() -> int:
    """``atml worker --standby``, started by ``atml search`` before it validates the space:
    import everything a trial needs, then wait for one JSON line on stdin naming the
    worker's arguments and its log file. End of input (the search failed or was
    stopped first) exits without touching the storage.

    Here rather than in :mod:`atml.cli.search`: it ends by calling :func:`main`."""
    from atml.search.worker import preload

    preload()
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    order = json.loads(line)
    fd = os.open(order["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return main(order["argv"])

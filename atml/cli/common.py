"""What every command module of the CLI shares: the :class:`Command` record of the
static command table, ``ATML_*`` environment defaults and the ``--storage`` and
``--device`` options.

Light on purpose, like every module of :mod:`atml.cli`: the heavy libraries (torch,
optuna, fastapi) are imported inside the command handlers, so ``atml --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Command", "Handler", "add_storage_arg", "add_device_arg", "env"]

Handler = Callable[[argparse.Namespace], int]
"""A command's body: parsed arguments in, exit code out."""


@dataclass(frozen=True)
class Command:
    """One ``atml`` subcommand: its name, one-line help, its options and its handler."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Handler
    description: str | None = None

    def add_parser(self, subparsers: Any) -> argparse.ArgumentParser:
        """Add this command to ``subparsers`` (of ``add_subparsers``) with its options."""
        p = subparsers.add_parser(self.name, help=self.help, description=self.description)
        self.add_arguments(p)
        return p


def env(name: str, default: Any = None) -> Any:
    """The value of environment variable ``ATML_<name>``, else ``default``."""
    return os.environ.get(f"ATML_{name}", default)


def add_storage_arg(p: argparse.ArgumentParser) -> None:
    """The ``--storage URL`` option shared by every command that opens a study storage."""
    # Imported here, not at the top: keeps `import atml.cli.main` free of the storage package.
    from atml.storage import DEFAULT_STORAGE

    p.add_argument("--storage", default=env("STORAGE", DEFAULT_STORAGE),
                   help="study storage URL: sqlite:///FILE or postgresql+psycopg://USER@HOST/DB "
                        "(env ATML_STORAGE; default %(default)s)")


def add_device_arg(p: argparse.ArgumentParser, what: str = "train") -> None:
    """The ``--device`` option of every command that trains (env ``ATML_DEVICE``; default ``auto``).

    The value stays text here: the command resolves it with :func:`atml.device.resolve_device`,
    so a device this machine lacks is one error line (exit 2), not an argparse usage dump."""
    p.add_argument("--device", default=env("DEVICE", "auto"),
                   help=f"where to {what}: auto (CUDA when present, else the CPU), cpu, cuda, cuda:N or mps "
                        "(env ATML_DEVICE; default %(default)s)")

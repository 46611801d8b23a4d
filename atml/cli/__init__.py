"""The ``atml`` command line."""

from __future__ import annotations

from atml.cli.main import main, run

__all__ = ["main", "run"]

"""``python -m atml``: the ``atml`` command line."""

from __future__ import annotations

from atml.cli import run

run()

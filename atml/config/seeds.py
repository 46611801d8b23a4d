"""Seeds derived from a study's seed: one per trial, the same on every machine."""

from __future__ import annotations

import hashlib

__all__ = ["trial_seed"]


def trial_seed(seed: int, number: int) -> int:
    """A 32-bit seed for item ``number`` (a trial, a fold, an ensemble member) of ``seed``.

    A hash rather than ``seed + number`` so that neighbouring studies (seed 0 and 1) do not
    share trials shifted by one.
    """
    digest = hashlib.sha256(f"{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")

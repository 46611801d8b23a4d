"""Preprocessing steps applied to whole datasets before caching: the seeded subsample and
per-segment normalisation.

The steps are pure functions on arrays so the in-memory path (text folders, synthetic) and
the streaming path (large npz) share them exactly.  Label mapping is :mod:`atml.data.labels`,
signal transforms :mod:`atml.data.transforms`.
"""

from __future__ import annotations

import numpy as np

from atml.data.spec import NORMALIZATIONS
from atml.errors import DataError

__all__ = ["SUBSAMPLE_SEED", "normalize", "subsample"]

# Seed of the max_segments subsample: fixed (not split_seed) because the subsample is cached
# and the cache key deliberately ignores split fields.
SUBSAMPLE_SEED = 0


def subsample(subjects: np.ndarray, max_segments: int | None, seed: int = SUBSAMPLE_SEED) -> np.ndarray:
    """Sorted indices of at most ``max_segments`` items, each subject keeping its share.

    Per-subject quotas follow the largest-remainder rule so every subject with data stays
    represented when possible; items inside a subject are drawn at random (seeded).
    """
    n = len(subjects)
    if max_segments is None or max_segments >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    uniq, inverse, counts = np.unique(subjects, return_inverse=True, return_counts=True)
    exact = counts * (max_segments / n)
    quota = np.floor(exact).astype(np.int64)
    rest = max_segments - int(quota.sum())
    if rest > 0:
        order = np.lexsort((rng.random(len(uniq)), -(exact - quota)))
        quota[order[:rest]] += 1
    chosen = []
    for k in range(len(uniq)):
        members = np.flatnonzero(inverse == k)
        if quota[k]:
            chosen.append(rng.choice(members, size=int(quota[k]), replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def normalize(x: np.ndarray, method: str) -> np.ndarray:
    """Normalise float32 (N, leads, samples) in place per segment and lead; returns x.

    Flat leads (std ~ 0, e.g. a disconnected electrode) are only centred, never divided,
    so they stay zeros instead of becoming NaN.
    """
    if method == "none":
        return x
    if method != "zscore":
        raise DataError(f"normalize = {method!r}: must be one of {', '.join(NORMALIZATIONS)}")
    mean = x.mean(axis=-1, keepdims=True, dtype=np.float64)
    std = x.std(axis=-1, keepdims=True, dtype=np.float64)
    std[std < 1e-8] = 1.0
    x -= mean.astype(np.float32)
    x /= std.astype(np.float32)
    return x

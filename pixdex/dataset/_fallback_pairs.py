"""STAND-IN for ``pixdex.dedup.semantic`` until it is merged: exact cosine pairs by blocked matrix products.

Same signatures as the real module (``similar_pairs``, ``cross_pairs``, ``Pairs``), exact and O(N^2 d):
fine for tests and a bench at 100k rows, far too slow at a million. ``pixdex.dataset.labels.default_finder``
uses it only when ``pixdex.dedup.semantic`` cannot be imported; delete this file when merging.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_ROWS, _COLS = 2048, 16384


@dataclass(frozen=True)
class Pairs:
    i: np.ndarray  # int64
    j: np.ndarray  # int64
    score: np.ndarray  # float32 cosine


def _collect(parts) -> Pairs:
    if not parts:
        return Pairs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    i, j, s = (np.concatenate(p) for p in zip(*parts))
    return Pairs(i.astype(np.int64), j.astype(np.int64), s.astype(np.float32))


def similar_pairs(vectors: np.ndarray, threshold: float) -> Pairs:
    """Every pair ``i < j`` of unit vectors with cosine >= ``threshold``."""
    x = np.asarray(vectors, dtype=np.float32)
    n, parts = len(x), []
    for a in range(0, n, _ROWS):
        b = min(a + _ROWS, n)
        for c in range(a, n, _COLS):
            d = min(c + _COLS, n)
            sim = x[a:b] @ x[c:d].T
            ii, jj = np.nonzero(sim >= threshold)
            ii, jj = ii + a, jj + c
            keep = jj > ii
            parts.append((ii[keep], jj[keep], sim[ii[keep] - a, jj[keep] - c]))
    return _collect(parts)


def cross_pairs(queries: np.ndarray, base: np.ndarray, threshold: float) -> Pairs:
    """Every (query ``i``, base ``j``) with cosine >= ``threshold``."""
    q, x = np.asarray(queries, dtype=np.float32), np.asarray(base, dtype=np.float32)
    parts = []
    for a in range(0, len(q), _ROWS):
        b = min(a + _ROWS, len(q))
        for c in range(0, len(x), _COLS):
            d = min(c + _COLS, len(x))
            sim = q[a:b] @ x[c:d].T
            ii, jj = np.nonzero(sim >= threshold)
            parts.append((ii + a, jj + c, sim[ii, jj]))
    return _collect(parts)

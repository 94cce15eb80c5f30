"""The container every dedup tier returns: aligned arrays of row pairs and their scores."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pairs:
    """Aligned arrays: row ``i`` (int64), row ``j`` (int64) and ``score`` (float32), sorted by (i, j).

    Within one set (:func:`pixdex.dedup.semantic.similar_pairs`) ``i < j`` and each pair appears once;
    between two sets (:func:`pixdex.dedup.semantic.cross_pairs`) ``i`` indexes the queries and ``j`` the
    base. What ``score`` means is the tier's (cosine for semantic; see :mod:`pixdex.dedup.groups`).
    """

    i: np.ndarray
    j: np.ndarray
    score: np.ndarray

    def __post_init__(self) -> None:
        if not (self.i.shape == self.j.shape == self.score.shape) or self.i.ndim != 1:
            raise ValueError("Pairs arrays must be 1-D and of the same length")

    def __len__(self) -> int:
        return int(self.i.size)

    @classmethod
    def empty(cls) -> Pairs:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))

    @classmethod
    def of(cls, i, j, score) -> Pairs:
        """Pairs from array-likes, converted to int64/int64/float32 (no sorting or checks of order)."""
        return cls(
            np.asarray(i, dtype=np.int64).reshape(-1),
            np.asarray(j, dtype=np.int64).reshape(-1),
            np.asarray(score, dtype=np.float32).reshape(-1),
        )

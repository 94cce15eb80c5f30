"""All pairs of binary hashes within a Hamming distance, with dihedral variants, never an N x N matrix.

``copy_pairs(hashes, D, dihedral)`` finds every pair (i < j) of the N hashes whose distance is <= D;
with ``dihedral`` (N, 8, nbytes) the distance of a pair is the smallest over the 8 variants of either
image against the other's canonical hash (``hashes[k]`` must equal ``dihedral[k, 0]``), so rotated and
mirrored copies pair up. ``cross_copy_pairs`` does the same for queries against a base set.

Exact in both regimes (same pairs as brute force):

- small sets: FAISS ``IndexBinaryFlat.range_search`` over blocks of queries (linear scan per query);
- large sets: multi-index hashing, FAISS ``IndexBinaryMultiHash``: the bits are split into ``m``
  chunks of ``b`` bits, one hash table per chunk; by the pigeonhole principle two hashes within D
  differ in at most ``D // m`` bits of some chunk, so probing every key within ``nflip = D // m`` bits
  of each query chunk finds every candidate, which is then checked on the full hash. ``b`` is chosen
  to minimise probes plus expected candidates for N (``plan_multihash``).

Memory is linear in N plus the pairs found; queries go in blocks so FAISS result buffers stay bounded.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)

QUERY_BLOCK = 65536
# cost model in units of "one full-hash comparison" (measured on FAISS 1.15, x86-64)
_PROBE_COST = 130.0  # one hash-table probe (FAISS IndexBinaryMultiHash, measured)
_CANDIDATE_COST = 130.0  # one candidate fetched from a table and checked on the full hash


@dataclass(frozen=True)
class Pairs:
    """Pairs ``(i[k], j[k])`` at Hamming distance ``distance[k]``; ``dihedral[k]`` is the variant of
    the first image's hash that matched (index into ``perceptual.DIHEDRAL``, 0 = as is)."""

    i: np.ndarray  # int64
    j: np.ndarray  # int64
    distance: np.ndarray  # int32
    dihedral: np.ndarray  # int8

    def __len__(self) -> int:
        return len(self.i)

    def as_set(self) -> set[tuple[int, int]]:
        return set(zip(self.i.tolist(), self.j.tolist()))


def _empty() -> Pairs:
    z = np.zeros(0, dtype=np.int64)
    return Pairs(z, z.copy(), np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int8))


@dataclass(frozen=True)
class MultiHashPlan:
    bits: int  # b: bits per chunk (hash-table key)
    chunks: int  # m
    nflip: int  # D // m
    cost: float  # estimated comparisons per query


def plan_multihash(nbits: int, n: int, max_distance: int) -> Optional[MultiHashPlan]:
    """The cheapest exact multi-index-hashing layout for ``n`` hashes of ``nbits``, or None if none fits."""
    best = None
    for b in range(8, 33):
        if nbits % b:
            continue
        m = nbits // b
        r = max_distance // m
        if r > 4:  # probe count explodes; the linear scan is cheaper
            continue
        probes = m * sum(math.comb(b, k) for k in range(r + 1))
        cost = probes * (_PROBE_COST + _CANDIDATE_COST * n / 2.0**b)
        if best is None or cost < best.cost:
            best = MultiHashPlan(b, m, r, cost)
    return best


def _check_arrays(base: np.ndarray, queries: np.ndarray) -> None:
    for name, a in (("base", base), ("queries", queries)):
        if a.dtype != np.uint8 or a.ndim != 2:
            raise ValueError(f"{name} hashes must be a 2-D uint8 array, got {a.dtype} {a.shape}")
    if base.shape[1] != queries.shape[1]:
        raise ValueError(f"hash lengths differ: {base.shape[1]} and {queries.shape[1]} bytes")


def range_pairs(
    base: np.ndarray,
    queries: np.ndarray,
    max_distance: int,
    method: str = "auto",
    progress: Optional[Callable[[int], None]] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (query q, base b) with hamming(queries[q], base[b]) <= max_distance -> (q, b, distance).

    ``method``: ``"flat"`` (linear scan), ``"multihash"`` or ``"auto"`` (the cheaper by the cost model).
    ``progress(n)`` is called with the number of queries done after each block.
    """
    import faiss

    base = np.ascontiguousarray(base, dtype=np.uint8)
    queries = np.ascontiguousarray(queries, dtype=np.uint8)
    _check_arrays(base, queries)
    if max_distance < 0 or len(base) == 0 or len(queries) == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z.copy(), np.zeros(0, dtype=np.int32)
    nbits = base.shape[1] * 8
    plan = plan_multihash(nbits, len(base), max_distance)
    if method == "auto":
        method = "multihash" if plan is not None and plan.cost < len(base) else "flat"
    if method == "multihash":
        if plan is None:
            raise ValueError(f"no exact multi-hash layout for {nbits} bits at distance {max_distance}")
        index = faiss.IndexBinaryMultiHash(nbits, plan.chunks, plan.bits)
        index.nflip = plan.nflip
        log.debug("hamming search: multi-hash %s over %d hashes", plan, len(base))
    elif method == "flat":
        index = faiss.IndexBinaryFlat(nbits)
        log.debug("hamming search: linear scan over %d hashes", len(base))
    else:
        raise ValueError(f"unknown method {method!r}")
    index.add(base)
    qs, bs, ds = [], [], []
    for s in range(0, len(queries), QUERY_BLOCK):
        block = queries[s : s + QUERY_BLOCK]
        lims, dist, ids = index.range_search(block, max_distance + 1)  # FAISS keeps distance < radius
        counts = np.diff(lims).astype(np.int64)
        qs.append(np.repeat(np.arange(s, s + len(block), dtype=np.int64), counts))
        bs.append(ids.astype(np.int64))
        ds.append(dist.astype(np.int32))
        if progress is not None:
            progress(s + len(block))
    return np.concatenate(qs), np.concatenate(bs), np.concatenate(ds)


def _best_per_pair(i, j, d, g, n_keys: int) -> Pairs:
    """One row per (i, j): the smallest distance (then the lowest variant)."""
    if len(i) == 0:
        return _empty()
    key = i * n_keys + j
    order = np.lexsort((g, d, key))
    key, i, j, d, g = key[order], i[order], j[order], d[order], g[order]
    first = np.ones(len(key), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    return Pairs(i[first], j[first], d[first].astype(np.int32), g[first].astype(np.int8))


def _dihedral_queries(hashes: np.ndarray, dihedral: Optional[np.ndarray]) -> tuple[np.ndarray, int]:
    if dihedral is None:
        return hashes, 1
    dihedral = np.asarray(dihedral, dtype=np.uint8)
    if dihedral.ndim != 3 or dihedral.shape[0] != hashes.shape[0] or dihedral.shape[2] != hashes.shape[1]:
        raise ValueError(
            f"dihedral must be (N, K, nbytes) matching hashes {hashes.shape}, got {dihedral.shape}"
        )
    return dihedral.reshape(-1, dihedral.shape[2]), dihedral.shape[1]


def copy_pairs(
    hashes: np.ndarray,
    max_distance: int,
    dihedral: Optional[np.ndarray] = None,
    method: str = "auto",
    progress: Optional[Callable[[int], None]] = None,
) -> Pairs:
    """All pairs i < j of ``hashes`` (N, nbytes) within ``max_distance``, each once at its best distance.

    With ``dihedral`` (N, 8, nbytes): each image's variants are compared with the others' canonical
    hashes; ``Pairs.dihedral`` then says which variant of ``hashes[i]`` matched (if the match came from
    j's side, the variant of j).
    """
    hashes = np.ascontiguousarray(hashes, dtype=np.uint8)
    n = len(hashes)
    queries, k = _dihedral_queries(hashes, dihedral)
    q, b, d = range_pairs(hashes, queries, max_distance, method, progress)
    a = q // k
    g = (q % k).astype(np.int8)
    keep = a != b
    a, b, d, g = a[keep], b[keep], d[keep], g[keep]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return _best_per_pair(lo, hi, d, g, max(n, 1))


def cross_copy_pairs(
    query_hashes: np.ndarray,
    base_hashes: np.ndarray,
    max_distance: int,
    query_dihedral: Optional[np.ndarray] = None,
    method: str = "auto",
    progress: Optional[Callable[[int], None]] = None,
) -> Pairs:
    """Pairs (query i, base j) within ``max_distance``; with ``query_dihedral`` (M, 8, nbytes) the
    query's variants are compared with the base's canonical hashes (rotated/mirrored copies)."""
    query_hashes = np.ascontiguousarray(query_hashes, dtype=np.uint8)
    base_hashes = np.ascontiguousarray(base_hashes, dtype=np.uint8)
    queries, k = _dihedral_queries(query_hashes, query_dihedral)
    q, b, d = range_pairs(base_hashes, queries, max_distance, method, progress)
    return _best_per_pair(q // k, b, d, (q % k).astype(np.int8), max(len(base_hashes), 1))

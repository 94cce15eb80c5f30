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

Approximate, for large sets (``method="lsh"``, chosen by ``"auto"`` above :data:`EXACT_MAX` base
hashes, where exact search grows with N^2): bit-sampling LSH. Each of T tables keys every hash by
``k`` of its bits (whole bytes at random positions, plus part of one); a base hash and a query with
the same key are checked on the full hash. A pair at distance d shares a table's key with probability
about (1 - d / nbits)^k, so T is chosen for a miss rate of at most :data:`LSH_MISS` at d = D (pairs
closer than D are missed far less often). Keys are direct-addressed (``2^k`` counters, k <= 24) and
the hash bytes are read column by column, so a table costs a few passes over N + Q integers.
``bench/copy_scale.py`` measures recall against exact pairs and time at 100k and 1M.
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
EXACT_MAX = 20_000  # "auto" searches exactly up to this many base hashes, approximately (LSH) above
LSH_MISS = 0.01  # LSH tables are added until a pair at exactly D is missed at most this often
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
    self_group: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (query q, base b) with hamming(queries[q], base[b]) <= max_distance -> (q, b, distance).

    ``method``: ``"flat"`` (linear scan), ``"multihash"``, ``"lsh"`` (approximate, see the module doc)
    or ``"auto"`` (exact, the cheaper by the cost model, up to EXACT_MAX base hashes; LSH above).
    ``progress(n)`` is called with the number of queries done after each block (LSH: each table,
    scaled to the number of queries). ``self_group`` k > 0 allows leaving out the pairs of query row q
    with base row q // k (an image with its own variants; only LSH uses it, callers still filter).
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
        if len(base) > EXACT_MAX and max_distance < nbits // 4:
            method = "lsh"
        else:
            method = "multihash" if plan is not None and plan.cost < len(base) else "flat"
    if method == "lsh":
        return lsh_range_pairs(base, queries, max_distance, progress=progress, self_group=self_group)
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


@dataclass(frozen=True)
class LshPlan:
    key_bits: int
    tables: int


def plan_lsh(nbits: int, n: int, n_queries: int, max_distance: int, miss: float = LSH_MISS) -> LshPlan:
    """Key length for about one random candidate per 16 queries (at most 24 bits, at least 16), and
    enough tables that a pair at ``max_distance`` is missed with probability <= ``miss``."""
    k = int(min(24, max(16, math.ceil(math.log2(max(n, 2))) + 4)))
    p = (1.0 - max_distance / nbits) ** k
    tables = 1 if p >= 1.0 else max(1, math.ceil(math.log(miss) / math.log1p(-p)))
    return LshPlan(k, tables)


def lsh_range_pairs(
    base: np.ndarray,
    queries: np.ndarray,
    max_distance: int,
    plan: Optional[LshPlan] = None,
    seed: int = 0,
    progress: Optional[Callable[[int], None]] = None,
    self_group: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Approximate :func:`range_pairs` by bit-sampling LSH (module doc): every pair returned is within
    ``max_distance`` (checked on the full hash); a pair within it is missed with small probability.
    ``self_group`` k > 0: query row q is a variant of base row q // k, and those pairs are left out."""
    nbytes = base.shape[1]
    if nbytes % 8:
        raise ValueError("LSH search needs hashes of a multiple of 8 bytes")
    plan = plan or plan_lsh(nbytes * 8, len(base), len(queries), max_distance)
    rng = np.random.default_rng(seed)
    base_cols = np.ascontiguousarray(base.T)  # byte columns: a key reads 3 contiguous rows, not N rows
    query_cols = np.ascontiguousarray(queries.T)
    b64, q64 = base.view(np.uint64), queries.view(np.uint64)
    whole, part = divmod(plan.key_bits, 8)

    def key(cols: np.ndarray, pos: np.ndarray) -> np.ndarray:
        k = cols[pos[0]].astype(np.uint32)
        for p in pos[1:whole]:
            k = (k << 8) | cols[p]
        if part:
            k = (k << part) | (cols[pos[whole]] >> (8 - part))
        return k

    found_q, found_b, found_d = [], [], []
    for t in range(plan.tables):
        pos = rng.choice(nbytes, whole + (1 if part else 0), replace=False)
        kb = key(base_cols, pos)
        counts = np.bincount(kb, minlength=1 << plan.key_bits)
        start = np.concatenate(([0], np.cumsum(counts)[:-1]))
        order = np.argsort(kb, kind="stable")
        kq = key(query_cols, pos)
        cnt = counts[kq]
        hit = np.flatnonzero(cnt)
        c = cnt[hit]
        qi = np.repeat(hit, c)
        offset = np.arange(len(qi), dtype=np.int64) - np.repeat(np.cumsum(c) - c, c)
        bi = order[np.repeat(start[kq[hit]], c) + offset]
        d = _popcount_rows(q64[qi] ^ b64[bi])
        ok = d <= max_distance
        if self_group:
            ok &= qi // self_group != bi
        found_q.append(qi[ok])
        found_b.append(bi[ok].astype(np.int64))
        found_d.append(d[ok])
        if len(found_q) >= 16:  # a pair is found by several tables: keep memory to the distinct ones
            q, b, d = _distinct(found_q, found_b, found_d, len(base))
            found_q, found_b, found_d = [q], [b], [d]
        if progress is not None:
            progress(len(queries) * (t + 1) // plan.tables)
    return _distinct(found_q, found_b, found_d, len(base))


def _popcount_rows(x: np.ndarray) -> np.ndarray:
    """Set bits per row of a (n, w) uint64 array, as int32 (numpy < 2 has no bitwise_count)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).sum(axis=1, dtype=np.int32)
    return np.unpackbits(x.view(np.uint8), axis=1).sum(axis=1, dtype=np.int32)


def _distinct(qs: list, bs: list, ds: list, nbase: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q, b, d = np.concatenate(qs), np.concatenate(bs), np.concatenate(ds)
    _, first = np.unique(q * nbase + b, return_index=True)
    return q[first], b[first], d[first]


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
    q, b, d = range_pairs(hashes, queries, max_distance, method, progress, self_group=k)
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

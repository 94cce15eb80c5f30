"""Semantic duplicates: every pair of vectors with cosine >= a threshold, never an N x N matrix.

Two ways, chosen by the amount of work (see :data:`EXACT_MAX_DOTS`):

- **exact** (small inputs): blocked matrix products, ``BLOCK`` rows at a time, so memory is
  ``BLOCK x BLOCK`` floats whatever N is.
- **clustered** (large inputs), SemDeDup-style with multi-assignment: the vectors are projected on
  their ``PCA_DIM`` principal directions (fitted on a seeded sample) and a seeded k-means there makes
  ``nlist`` ~ sqrt(4 * NPROBE * N) cells (:func:`nlist_for`). Every vector has a *home* cell (the nearest) and *probes* its
  ``NPROBE`` nearest cells. A pair (a, b) is compared (in the full dimension) when b's home is among
  a's probes or a's home is among b's probes: each cell is one blocked matrix product, (home members
  + probers) x home members, so pairs near a cell border are still compared. The projection only
  decides what is compared (k-means and assignment cost 8x less than in 512-d); every score is a
  full-dimension cosine. Cost about ``N * nlist * PCA_DIM + NPROBE * N^2 / nlist * d``; measured
  figures and the recall against exact search are in ``bench/dedup_scale.py``.

Both ways pick candidates on the blocked products with a small slack below the threshold, then score
every candidate with the same row-wise float32 dot product and keep those >= threshold, so the two ways
agree on the score of every pair they both find and the result does not depend on the blocking.
Results are deterministic for a given machine and thread count (seeded sampling and k-means, fixed
blocking, pairs sorted by (i, j)).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Optional

import numpy as np

from pixdex.dedup.pairs import Pairs
from pixdex.errors import PixdexError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

BLOCK = 4096  # rows per matrix-product block (a BLOCK x BLOCK float32 block is 64 MiB)
# exact up to this many dot products (self: N^2/2, cross: Nq*Nb). Measured (2 cores, d=512): the two
# ways cost the same CPU near N = 12k (about 1.2 s); at 16k exact costs ~2.5 s, twice the clustered
# way, a second worth paying for exact recall; at 30k it is 8 s against 3 s.
EXACT_MAX_DOTS = 16_384 * 16_384 // 2
NPROBE = 4  # lists each vector is compared in (its home list and the 3 next nearest)
KMEANS_ITER = 10
PCA_DIM = 64  # the cells are made in this many principal directions
KMEANS_POINTS_PER_LIST = 32  # k-means training sample per list
SEED = 1234
_SLACK = 1e-5  # candidates are taken from the products at threshold - _SLACK, then scored exactly


# ---------------------------------------------------------------------- public API


def similar_pairs(
    vectors: np.ndarray,
    threshold: float,
    *,
    exact: Optional[bool] = None,
    progress: Optional[Progress] = None,
) -> Pairs:
    """Every pair (i < j) of rows of ``vectors`` (N, d), L2-normalised, with cosine >= ``threshold``.

    ``exact=None`` picks the exact way for small N and the clustered way above; ``True``/``False``
    force one. ``progress(done, total)`` is called as work advances (abstract units, ``done`` reaches
    ``total`` at the end).
    """
    x = _check_vectors(vectors, "vectors")
    t = _check_threshold(threshold)
    n = x.shape[0]
    if n < 2:
        return Pairs.empty()
    if exact is None:
        exact = n * (n - 1) // 2 <= EXACT_MAX_DOTS
    if exact:
        i, j = _exact_candidates(x, x, t, same=True, progress=progress)
    else:
        i, j = _clustered_candidates(x, x, t, same=True, progress=progress)
    return _finish(x, x, i, j, t)


def cross_pairs(
    queries: np.ndarray,
    base: np.ndarray,
    threshold,
    *,
    exact: Optional[bool] = None,
    progress: Optional[Progress] = None,
) -> Pairs:
    """Every pair (query row i, base row j) with cosine >= ``threshold``; both L2-normalised.

    ``threshold``: one cosine, or one per query (an array of ``len(queries)``; a value over 1 asks for
    nothing): one search then serves queries that each need their own bound.
    Exact when ``len(queries) * len(base)`` is small (e.g. a few photos against any store), clustered
    as in :func:`similar_pairs` otherwise (a store against another store).
    """
    q = _check_vectors(queries, "queries")
    b = _check_vectors(base, "base")
    if q.shape[1] != b.shape[1]:
        raise PixdexError(f"queries have {q.shape[1]} dimensions but the base has {b.shape[1]}")
    t = _check_threshold(threshold) if np.ndim(threshold) == 0 else _check_row_thresholds(threshold, q)
    if q.shape[0] == 0 or b.shape[0] == 0:
        return Pairs.empty()
    if exact is None:
        exact = q.shape[0] * b.shape[0] <= EXACT_MAX_DOTS
    if exact:
        i, j = _exact_candidates(q, b, t, same=False, progress=progress)
    else:
        i, j = _clustered_candidates(q, b, t, same=False, progress=progress)
    return _finish(q, b, i, j, t)


# ---------------------------------------------------------------------- checks


def _check_vectors(v: np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(v)
    if v.ndim != 2 or v.shape[1] == 0:
        raise PixdexError(f"{name} must be a 2-D array (N, d), got shape {v.shape}")
    if not np.issubdtype(v.dtype, np.floating):
        raise PixdexError(f"{name} must hold floats, got {v.dtype}")
    v = np.ascontiguousarray(v, dtype=np.float32)
    if v.shape[0]:
        step = max(1, v.shape[0] // 4096)
        norms = np.linalg.norm(v[::step], axis=1)
        if not np.all(np.abs(norms - 1.0) < 1e-3):
            raise PixdexError(f"{name} must be L2-normalised (finite, norm 1)")
    return v


def _check_threshold(t: float) -> float:
    t = float(t)
    # a computed threshold (a score plus a margin) may pass 1 by a rounding error: that is "nothing above"
    if math.isnan(t) or not (-1.001 <= t <= 1.001):
        raise PixdexError(f"the cosine threshold must be within [-1, 1], got {t}")
    return t


def _check_row_thresholds(t, q: np.ndarray) -> np.ndarray:
    t = np.asarray(t, dtype=np.float32).reshape(-1)
    if t.shape[0] != q.shape[0]:
        raise PixdexError(f"{t.shape[0]} thresholds for {q.shape[0]} queries")
    if not np.all(np.isfinite(t)) or (t.size and float(t.min()) < -1.001):
        raise PixdexError("per-query cosine thresholds must be finite and >= -1")
    return t


def _rows(t, rows: np.ndarray):
    """The threshold of the query rows ``rows`` as a column (or the one threshold)."""
    return t if np.ndim(t) == 0 else t[rows][:, None]


def _cols(t, cols: np.ndarray):
    """The threshold of the query rows ``cols`` as a row (or the one threshold)."""
    return t if np.ndim(t) == 0 else t[cols][None, :]


# ---------------------------------------------------------------------- shared pieces


def _block_pairs(a: np.ndarray, b: np.ndarray, t) -> tuple[np.ndarray, np.ndarray]:
    """(rows of a, rows of b) where a @ b.T >= t - slack (``t``: a number, or a column / row of them)."""
    r, c = np.nonzero(a @ b.T >= t - _SLACK)
    return r.astype(np.int64), c.astype(np.int64)


def _finish(a: np.ndarray, b: np.ndarray, i: np.ndarray, j: np.ndarray, t: float) -> Pairs:
    """Unique sorted candidates scored row-wise (one score function for every way), kept if >= t."""
    if i.size == 0:
        return Pairs.empty()
    key = np.unique(i * np.int64(b.shape[0]) + j)
    i, j = key // b.shape[0], key % b.shape[0]
    score = np.empty(i.size, np.float32)
    for s in range(0, i.size, BLOCK * 4):
        e = s + BLOCK * 4
        score[s:e] = np.einsum("ij,ij->i", a[i[s:e]], b[j[s:e]])
    keep = score >= (np.float32(t) if np.ndim(t) == 0 else t[i])
    return Pairs(i[keep], j[keep], score[keep])


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


# ---------------------------------------------------------------------- exact


def _exact_candidates(
    a: np.ndarray, b: np.ndarray, t, same: bool, progress: Optional[Progress]
) -> tuple[np.ndarray, np.ndarray]:
    na, nb = a.shape[0], b.shape[0]
    rb, cb = -(-na // BLOCK), -(-nb // BLOCK)
    total = rb * (rb + 1) // 2 if same else rb * cb  # block products
    done = 0
    out_i: list[np.ndarray] = []
    out_j: list[np.ndarray] = []
    for r0 in range(0, na, BLOCK):
        ra = a[r0 : r0 + BLOCK]
        for c0 in range(r0 if same else 0, nb, BLOCK):
            r, c = _block_pairs(ra, b[c0 : c0 + BLOCK], _rows(t, np.arange(r0, r0 + ra.shape[0])))
            if same and c0 == r0:  # diagonal block: the upper triangle only
                r, c = r[r < c], c[r < c]
            if r.size:
                out_i.append(r + r0)
                out_j.append(c + c0)
            done += 1
            if progress is not None:
                progress(done, total)
    return _cat(out_i), _cat(out_j)


# ---------------------------------------------------------------------- clustered


def nlist_for(n: int, m: Optional[int] = None) -> int:
    """Lists for the clustered way over ``n`` vectors (or ``n`` queries against ``m`` base vectors):
    about ``sqrt(4 * NPROBE * h)``, ``h`` the harmonic mean ``2nm / (n + m)`` (``h = n`` for one set).

    Assigning costs about ``(n + m) * nlist`` products in ``PCA_DIM`` dimensions and comparing about
    ``NPROBE * n * m / nlist`` in the full one (8x more per product at d = 512), so the total is least
    near that count, and ``h`` keeps the two balanced when one side is small. Measured at 1M x 512 (CPU
    seconds, 2 cores): one set 94 s at 4096 lists against 100 s at 2048 (same pairs); 1M queries
    against 10k 32 s at 512 lists against 56 s at 2048 (the old rule, ``max(n, m)``; same pairs).
    Fewer, larger cells keep more low-cosine cross pairs (cosine ~0.3 across modalities): dataset
    dedup looks for those with its few low rows as queries, which get such cells from ``h``.
    """
    h = n if m is None or m == n else 2.0 * n * m / max(1, n + m)
    largest = max(n, m or 0) // 32
    return int(max(1, min(largest, 2 ** round(math.log2(max(1.0, math.sqrt(4 * NPROBE * h)))))))


def _sample(xs: tuple[np.ndarray, ...], m: int) -> np.ndarray:
    """A deterministic sample of about ``m`` rows drawn from the arrays in proportion to their sizes."""
    n = sum(x.shape[0] for x in xs)
    if n <= m:
        return np.concatenate(xs)
    pick = np.sort(np.random.default_rng(SEED).choice(n, size=m, replace=False))
    out, off = [], 0
    for x in xs:
        sel = pick[(pick >= off) & (pick < off + x.shape[0])] - off
        out.append(x[sel])
        off += x.shape[0]
    return np.concatenate(out)


class _Partition:
    """k-means cells in a PCA projection of the vectors (the cells only decide what is compared)."""

    def __init__(self, sample: np.ndarray, nlist: int, dim: int):
        import faiss

        sample = np.ascontiguousarray(sample, dtype=np.float32)
        self.mean = sample.mean(axis=0)
        c = sample - self.mean
        _, vecs = np.linalg.eigh((c.T @ c).astype(np.float64))
        self.proj = np.ascontiguousarray(vecs[:, ::-1][:, : min(dim, sample.shape[1])], dtype=np.float32)
        km = faiss.Kmeans(
            self.proj.shape[1],
            nlist,
            niter=KMEANS_ITER,
            seed=SEED,
            max_points_per_centroid=KMEANS_POINTS_PER_LIST,
            min_points_per_centroid=1,
        )
        km.train(self.project(sample))
        self.index = faiss.IndexFlatL2(self.proj.shape[1])
        self.index.add(km.centroids)

    def project(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((x - self.mean) @ self.proj)

    def assign(self, x: np.ndarray, k: int, tick: Callable[[int], None]) -> np.ndarray:
        """(n, k) int64: each row's k nearest cells, nearest first."""
        out = np.empty((x.shape[0], k), np.int64)
        step = 16 * BLOCK
        for s in range(0, x.shape[0], step):
            _, out[s : s + step] = self.index.search(self.project(x[s : s + step]), k)
            tick(min(x.shape[0], s + step) - s)
        return out


def _members(lists: np.ndarray, nlist: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, bounds): rows sorted by list; rows of list c are order[bounds[c]:bounds[c+1]]."""
    order = np.argsort(lists, kind="stable")
    bounds = np.searchsorted(lists[order], np.arange(nlist + 1))
    return order.astype(np.int64), bounds


def _compare(
    xp: np.ndarray,
    probers: np.ndarray,
    xh: np.ndarray,
    home: np.ndarray,
    t,
    out: list,
    queries_home: bool = False,
) -> None:
    """Append (probers row, home row) candidates of ``xp[probers] @ xh[home].T``, block by block.
    Per-query thresholds ``t`` belong to the probers, or to the home rows when ``queries_home``."""
    for c0 in range(0, home.size, 2 * BLOCK):
        hc = home[c0 : c0 + 2 * BLOCK]
        hb = xh[hc]
        for r0 in range(0, probers.size, BLOCK):
            pr = probers[r0 : r0 + BLOCK]
            r, c = _block_pairs(xp[pr], hb, _cols(t, hc) if queries_home else _rows(t, pr))
            if r.size:
                out.append((pr[r], hc[c]))


def _clustered_candidates(
    a: np.ndarray, b: np.ndarray, t, same: bool, progress: Optional[Progress]
) -> tuple[np.ndarray, np.ndarray]:
    na, nb = a.shape[0], b.shape[0]
    nlist = nlist_for(nb) if same else nlist_for(na, nb)
    nprobe = min(NPROBE, nlist)
    total = (na if same else na + nb) * 2
    done = [0]

    def tick(k: int) -> None:
        done[0] += k
        if progress is not None:
            progress(min(done[0], total), total)

    part = _Partition(_sample((b,) if same else (a, b), KMEANS_POINTS_PER_LIST * nlist), nlist, PCA_DIM)
    pa = part.assign(a, nprobe, tick)
    pb = pa if same else part.assign(b, nprobe, tick)
    # home members of each list, and members probing it without it being their home
    a_home_order, a_home_b = _members(pa[:, 0], nlist)
    b_home_order, b_home_b = (a_home_order, a_home_b) if same else _members(pb[:, 0], nlist)
    rows_a = np.repeat(np.arange(na, dtype=np.int64), nprobe - 1)
    a_probe_order, a_probe_b = _members(pa[:, 1:].reshape(-1), nlist)
    a_probe_rows = rows_a[a_probe_order]
    if not same:
        rows_b = np.repeat(np.arange(nb, dtype=np.int64), nprobe - 1)
        b_probe_order, b_probe_b = _members(pb[:, 1:].reshape(-1), nlist)
        b_probe_rows = rows_b[b_probe_order]
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for c in range(nlist):
        ha = a_home_order[a_home_b[c] : a_home_b[c + 1]]
        hb = b_home_order[b_home_b[c] : b_home_b[c + 1]]
        extra_a = a_probe_rows[a_probe_b[c] : a_probe_b[c + 1]]
        if same:
            # (home + probers) x home in one product: a pair is met in the home list of either row,
            # so both orders of a pair may come out (canonicalised below, deduplicated in _finish)
            if hb.size:
                _compare(a, np.concatenate([ha, extra_a]), b, hb, t, out)
            tick(ha.size)
        else:
            # queries probing this list x its base members, and base rows probing it x its queries
            extra_b = b_probe_rows[b_probe_b[c] : b_probe_b[c + 1]]
            if hb.size:
                _compare(a, np.concatenate([ha, extra_a]), b, hb, t, out)
            if ha.size and extra_b.size:
                part_out: list[tuple[np.ndarray, np.ndarray]] = []
                _compare(b, extra_b, a, ha, t, part_out, queries_home=True)
                out.extend((i, j) for j, i in part_out)
            tick(ha.size + hb.size)
    i, j = _cat([p[0] for p in out]), _cat([p[1] for p in out])
    if same:
        keep = i != j
        i, j = np.minimum(i[keep], j[keep]), np.maximum(i[keep], j[keep])
    return i, j


class _ExactFinder:
    """``similar_pairs`` / ``cross_pairs`` forced to the exact (blocked) way: a reference for tests and
    benchmarks, usable wherever a pair finder is a parameter."""

    Pairs = Pairs

    @staticmethod
    def similar_pairs(vectors, threshold, *, progress=None) -> Pairs:
        return similar_pairs(vectors, threshold, exact=True, progress=progress)

    @staticmethod
    def cross_pairs(queries, base, threshold, *, progress=None) -> Pairs:
        return cross_pairs(queries, base, threshold, exact=True, progress=progress)


EXACT = _ExactFinder()

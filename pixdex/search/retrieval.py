"""Nearest-neighbour retrieval: FAISS candidates re-ranked exactly with the stored vectors.

Guarantees:
- scores are exact inner products of the query with the vectors stored in SQLite (the FAISS file only
  proposes candidates, so an approximate (IVF/PQ) or slightly stale index never reports a wrong score);
- only live rows (indexed, not failed, not deleted) are returned, whatever the FAISS file contains;
- row filters never shrink the answer below k while more matching images exist: a selective filter is
  answered exactly over the matching ids; a broad one searches FAISS with an ID selector and widens the
  search (more candidates, more IVF lists, up to all of them) until k matches are found.

``source`` is any object with the methods of :class:`pixdex.search.store_view.StoreView` used here:
``vectors(ids) -> (ids, vecs)`` (live rows only), ``matching_ids(filters)`` (sorted
int64 ids of live rows passing the row filters) and ``all_vectors() -> (ids, vecs)``.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from pixdex.errors import PixdexError
from pixdex.search.filters import Filters

log = logging.getLogger(__name__)

# Filters matching at most this many images are answered by exact search over their stored vectors.
EXACT_FILTER_LIMIT = 4096
# FAISS candidates re-ranked with the stored vectors: max(k * RERANK_FACTOR, RERANK_MIN).
RERANK_FACTOR = 4
RERANK_MIN = 64


def choose_nprobe(nlist: int) -> int:
    """IVF lists to probe for recall@10 >= 0.95 against exact search: storage's ``default_nprobe``
    (about 2*sqrt(nlist)), the one rule for both the store and search.

    Measured with bench/search_latency.py (512-d clustered vectors, queries across a modality gap):
    recall@10 0.973 at nlist 1024 / nprobe 65 (100k images) and 0.998 at nlist 4096 / nprobe 129 (1M);
    nlist/32 probes already falls to 0.966 at 100k, so fewer probes would leave little margin.
    """
    from pixdex.storage.faiss_index import default_nprobe

    return default_nprobe(nlist)


def ivf_of(index):
    """The IndexIVF inside ``index`` (through IDMap/PreTransform wrappers), or None for flat indexes."""
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _exact(source, q: np.ndarray, ids: Optional[np.ndarray], k: int) -> list[tuple[int, float]]:
    if ids is None:
        ids, vecs = source.all_vectors()
    else:
        ids, vecs = source.vectors(ids)
    if len(ids) == 0:
        return []
    scores = vecs @ q
    k = min(k, len(ids))
    top = np.argpartition(-scores, k - 1)[:k] if k < len(ids) else np.arange(len(ids))
    top = top[np.lexsort((ids[top], -scores[top]))]
    return [(int(ids[i]), float(scores[i])) for i in top]


def _rerank(
    source, q: np.ndarray, cand: np.ndarray, allowed: Optional[np.ndarray]
) -> list[tuple[int, float]]:
    cand = cand[cand >= 0]
    if allowed is not None and len(cand):  # allowed is sorted: a binary search per candidate
        pos = np.minimum(np.searchsorted(allowed, cand), len(allowed) - 1)
        cand = cand[allowed[pos] == cand]
    if len(cand) == 0:
        return []
    # (no np.unique: it imports numpy.ma, ~50 ms on a cold start; a FAISS answer holds each id once)
    ids, vecs = source.vectors(np.fromiter(dict.fromkeys(cand.tolist()), dtype=np.int64))
    if len(ids) == 0:
        return []
    scores = vecs @ q
    order = np.lexsort((ids, -scores))
    return [(int(ids[i]), float(scores[i])) for i in order]


def _selector(allowed: np.ndarray):
    import faiss

    return faiss.IDSelectorBatch(len(allowed), faiss.swig_ptr(allowed))


def search_vectors(
    source, index, q: np.ndarray, k: int, filters: Optional[Filters] = None, nprobe: Optional[int] = None
) -> list[tuple[int, float]]:
    """Top-``k`` ``(id, score)`` for the unit query vector ``q``, best first (ties: lower id first)."""
    if k <= 0:
        raise PixdexError("k must be at least 1")
    filters = filters or Filters()
    q = np.ascontiguousarray(q, dtype=np.float32).reshape(-1)
    if index is not None and index.d != q.shape[0]:
        raise PixdexError(f"the query has {q.shape[0]} dimensions but the store's index has {index.d}")
    allowed = None
    if filters.restricts_rows:
        allowed = np.sort(np.asarray(source.matching_ids(filters), dtype=np.int64))  # primary keys: distinct
        if len(allowed) == 0:
            return []
        if index is None or len(allowed) <= max(EXACT_FILTER_LIMIT, 2 * k):
            return _cut(_exact(source, q, allowed, k), filters, k)
    if index is None or index.ntotal == 0:
        return _cut(_exact(source, q, None, k), filters, k)
    return _cut(_faiss_search(source, index, q, k, allowed, nprobe), filters, k)


def _faiss_search(source, index, q, k, allowed, nprobe) -> list[tuple[int, float]]:
    import faiss

    ivf = ivf_of(index)
    nlist = ivf.nlist if ivf is not None else 1
    probe = min(nlist, nprobe or choose_nprobe(nlist))
    limit = min(index.ntotal, len(allowed) if allowed is not None else index.ntotal)
    kk = min(limit, max(k * RERANK_FACTOR, RERANK_MIN))
    sel = _selector(allowed) if allowed is not None else None
    qq = q.reshape(1, -1)
    while True:
        if ivf is not None:
            params = (
                faiss.SearchParametersIVF(nprobe=probe, sel=sel)
                if sel is not None
                else faiss.SearchParametersIVF(nprobe=probe)
            )
        else:
            params = faiss.SearchParameters(sel=sel) if sel is not None else None
        _, labels = index.search(qq, kk, params=params) if params is not None else index.search(qq, kk)
        cand = labels[0]
        found = int((cand >= 0).sum())
        hits = _rerank(source, q, cand, allowed)
        if len(hits) >= k:
            return hits
        exhausted_lists = found < kk  # the probed lists hold fewer candidates than asked for
        if exhausted_lists and probe < nlist:
            probe = min(nlist, probe * 4)
        elif kk < limit:
            kk = min(limit, kk * 4)
        else:
            break
    # The index cannot supply k live matches (stale index, or rows missing from it): answer exactly.
    log.debug("FAISS gave %d of %d hits; falling back to exact search", len(hits), k)
    return _exact(source, q, allowed, k)


def _cut(hits: list[tuple[int, float]], filters: Filters, k: int) -> list[tuple[int, float]]:
    hits = hits[:k]
    if filters.min_score is not None:
        hits = [h for h in hits if h[1] >= filters.min_score]
    return hits

"""Retrieval: FAISS candidates re-ranked with stored vectors, live rows only, filters never shrink k."""

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from pixdex.errors import PixdexError
from pixdex.search.filters import Filters, make_filters
from pixdex.search.retrieval import choose_nprobe, search_vectors


class ArraySource:
    """The store-view interface over in-memory arrays (ids 1..n, some dead)."""

    def __init__(self, vecs, paths, dead=()):
        self.ids = np.arange(1, len(vecs) + 1, dtype=np.int64)
        self.vecs = vecs
        self.paths = paths
        self.live = np.ones(len(vecs), bool)
        self.live[np.asarray(list(dead), dtype=np.int64) - 1] = False

    def live_count(self):
        return int(self.live.sum())

    def vectors(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        ids = ids[self.live[ids - 1]]
        return ids, self.vecs[ids - 1]

    def matching_ids(self, f):
        keep = [i for i in self.ids[self.live] if f.path_ok(self.paths[i - 1])]
        return np.array(keep, dtype=np.int64)

    def all_vectors(self):
        return self.ids[self.live], self.vecs[self.live]


def clustered(n, d=32, centers=40, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.35 * rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def ivf_index(x, nlist=64):
    q = faiss.IndexFlatIP(x.shape[1])
    ivf = faiss.IndexIVFFlat(q, x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(x)
    ivf.add_with_ids(x, np.arange(1, len(x) + 1, dtype=np.int64))
    return ivf


def exact_top(src, q, k, f=None):
    ids, vecs = src.all_vectors()
    if f is not None and f.restricts_rows:
        keep = np.array([f.path_ok(src.paths[i - 1]) for i in ids])
        ids, vecs = ids[keep], vecs[keep]
    s = vecs @ q
    o = np.lexsort((ids, -s))[:k]
    return [int(i) for i in ids[o]], s[o]


@pytest.fixture(scope="module")
def data():
    x = clustered(6000)
    paths = [f"/photos/{'beach' if i % 10 == 0 else 'home'}/img_{i}.jpg" for i in range(1, len(x) + 1)]
    rng = np.random.default_rng(1)
    queries = clustered(40, seed=5) + 0.05 * rng.normal(size=(40, x.shape[1])).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return x, paths, queries, ivf_index(x)


def test_ivf_recall_at_10_against_exact(data):
    x, paths, queries, index = data
    src = ArraySource(x, paths)
    rec = []
    for q in queries:
        got = [i for i, _ in search_vectors(src, index, q, 10)]
        want, _ = exact_top(src, q, 10)
        rec.append(len(set(got) & set(want)) / 10)
    assert np.mean(rec) >= 0.95


def test_scores_are_exact_stored_inner_products(data):
    x, paths, queries, index = data
    src = ArraySource(x, paths)
    hits = search_vectors(src, index, queries[0], 15)
    assert len(hits) == 15
    for i, s in hits:
        assert s == pytest.approx(float(x[i - 1] @ queries[0]), abs=1e-6)
    scores = [s for _, s in hits]
    assert scores == sorted(scores, reverse=True)


def test_flat_index_equals_exact(data):
    x, paths, queries, _ = data
    flat = faiss.IndexIDMap(faiss.IndexFlatIP(x.shape[1]))
    flat.add_with_ids(x, np.arange(1, len(x) + 1, dtype=np.int64))
    src = ArraySource(x, paths)
    for q in queries[:5]:
        assert [i for i, _ in search_vectors(src, flat, q, 10)] == exact_top(src, q, 10)[0]
        assert [i for i, _ in search_vectors(src, None, q, 10)] == exact_top(src, q, 10)[0]


def test_dead_rows_in_the_index_are_never_returned(data):
    x, paths, queries, index = data
    q = queries[3]
    best = [i for i, _ in search_vectors(ArraySource(x, paths), index, q, 30)]
    dead = set(best[:20])  # the 20 best matches were deleted or failed after FAISS was written
    src = ArraySource(x, paths, dead=dead)
    hits = search_vectors(src, index, q, 10)
    assert len(hits) == 10
    assert not dead & {i for i, _ in hits}
    assert [i for i, _ in hits] == exact_top(src, q, 10)[0]


@pytest.mark.parametrize(
    "pattern,expect_exact", [("*/img_7.jpg", True), ("beach/*", True), ("home/*", False)]
)
def test_filters_never_shrink_below_k(data, pattern, expect_exact):
    x, paths, queries, index = data
    src = ArraySource(x, paths)
    f = make_filters(path_glob=pattern)
    n_match = len(src.matching_ids(f))
    for q in queries[:8]:
        hits = search_vectors(src, index, q, 50, f)
        assert len(hits) == min(50, n_match)
        assert all(f.path_ok(paths[i - 1]) for i, _ in hits)
        want, _ = exact_top(src, q, 50, f)
        overlap = len({i for i, _ in hits} & set(want)) / len(want)
        assert overlap == 1.0 if expect_exact else overlap >= 0.9


def test_rare_filter_far_from_query_still_fills_k(data):
    """Matching images that live in IVF lists the query does not probe are still found."""
    x, paths, queries, index = data
    q = queries[0]
    far = np.argsort(x @ q)[:1000] + 1  # the 1000 least similar images
    paths2 = [
        p.replace("/photos/", "/far/") if (i + 1) in set(far.tolist()) else p for i, p in enumerate(paths)
    ]
    src = ArraySource(x, paths2)
    f = make_filters(path_glob="/far/*")
    hits = search_vectors(src, index, q, 20, f, nprobe=1)
    assert [i for i, _ in hits] == exact_top(src, q, 20, f)[0]
    # and a broad filter (more than the exact-search limit) through the ID selector path
    far = set((np.argsort(x @ q)[:5000] + 1).tolist())
    paths3 = ["/far/x.jpg" if (i + 1) in far else p for i, p in enumerate(paths)]
    src = ArraySource(x, paths3)
    hits = search_vectors(src, index, q, 20, f, nprobe=1)
    assert len(hits) == 20 and all(paths3[i - 1] == "/far/x.jpg" for i, _ in hits)


def test_min_score_cuts_and_k_validated(data):
    x, paths, queries, index = data
    src = ArraySource(x, paths)
    hits = search_vectors(src, index, queries[0], 20)
    cut = hits[5][1]
    got = search_vectors(src, index, queries[0], 20, Filters(min_score=cut))
    assert [h[0] for h in got] == [h[0] for h in hits if h[1] >= cut]
    with pytest.raises(PixdexError):
        search_vectors(src, index, queries[0], 0)
    with pytest.raises(PixdexError):
        search_vectors(src, index, np.ones(7, np.float32), 5)


def test_choose_nprobe_grows_with_nlist():
    assert choose_nprobe(1) == 1
    probes = [choose_nprobe(n) for n in (2, 16, 64, 1024, 4096, 65536)]
    assert probes == sorted(probes) and all(
        1 <= p <= n for p, n in zip(probes, (2, 16, 64, 1024, 4096, 65536))
    )
    assert choose_nprobe(1024) >= 64 and choose_nprobe(4096) >= 128  # the measured recall@10 >= 0.95 points

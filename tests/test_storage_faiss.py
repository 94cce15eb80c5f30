"""The derived FAISS index: flat/IVF choice, nlist, retraining, repair by id, atomic save, checksums."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pixdex.storage import faiss_index as fi
from pixdex.storage.contract import FAISS_FILE
from pixdex.storage.faiss_index import VectorIndex, id_checksum, nlist_for, reconcile

DIM = 16


def unit(rng, n):
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class Db:
    """Vectors by id, standing in for the store."""

    def __init__(self, n, seed=0, start=1):
        rng = np.random.default_rng(seed)
        self.vecs = {i: v for i, v in zip(range(start, start + n), unit(rng, n))}

    def ids(self):
        return np.asarray(sorted(self.vecs), dtype=np.int64)

    def fetch(self, ids):
        ids = [int(i) for i in ids if int(i) in self.vecs]
        return np.asarray(ids, np.int64), np.stack([self.vecs[i] for i in ids]) if ids else np.zeros(
            (0, DIM), np.float32
        )


def test_nlist_is_a_power_of_two_near_4_sqrt_n_with_enough_points():
    for n in (80, 500, 3000, 50_000, 1_000_000):
        k = nlist_for(n)
        assert k & (k - 1) == 0
        assert n >= fi.MIN_POINTS_PER_LIST * k
        if n >= 50_000:
            assert 0.5 <= k / (4 * math.sqrt(n)) <= 2
    assert nlist_for(10) == 1


def test_id_checksum_is_order_independent_and_sensitive():
    a = np.array([5, 1, 9, 1000], np.int64)
    assert id_checksum(a) == id_checksum(a[::-1]) == id_checksum(list(a))
    assert id_checksum(a) != id_checksum(np.array([5, 1, 9, 1001]))
    assert id_checksum([1, 2]) != id_checksum([3])  # same sum


def test_flat_reconcile_repairs_missing_and_extra_ids():
    db = Db(50)
    vi, c = reconcile(None, DIM, db.ids(), db.fetch, threshold=1000)
    assert vi.kind == "flat" and vi.ntotal == 50 and c["rebuilt"] == 1
    vi.remove(np.array([3, 4], np.int64))  # as if a crash lost some adds ...
    vi.add(np.array([999], np.int64), db.fetch([1])[1])  # ... and kept a deleted row
    vi, c = reconcile(vi, DIM, db.ids(), db.fetch, threshold=1000)
    assert (c["added"], c["removed"], c["rebuilt"]) == (2, 1, 0)
    assert np.sort(vi.ids()).tolist() == db.ids().tolist()
    _, labels = vi.search(db.vecs[7], 1)
    assert labels[0, 0] == 7


def test_ivf_above_threshold_retrained_after_4x_growth(tmp_path):
    db = Db(400, seed=1)
    vi, _ = reconcile(None, DIM, db.ids(), db.fetch, threshold=300)
    assert vi.kind == "ivf" and vi.nlist == nlist_for(400) > 1 and vi.trained_on == 400
    hits = sum(int(vi.search(db.vecs[i], 1, nprobe=vi.nlist)[1][0, 0] == i) for i in range(1, 401, 20))
    assert hits == 20  # exhaustive probing of an IVF-Flat is exact
    more = Db(800, seed=2, start=401)
    db.vecs.update(more.vecs)  # 1200 = 3x: kept, only the new ids added
    vi, c = reconcile(vi, DIM, db.ids(), db.fetch, threshold=300)
    assert (c["rebuilt"], c["added"], vi.trained_on) == (0, 800, 400)
    db.vecs.update(Db(400, seed=3, start=1201).vecs)  # 1600 = 4x: retrained with more lists
    vi, c = reconcile(vi, DIM, db.ids(), db.fetch, threshold=300)
    assert c["rebuilt"] == 1 and vi.trained_on == 1600 and vi.nlist == nlist_for(1600) > nlist_for(400)
    assert np.sort(vi.ids()).tolist() == db.ids().tolist()
    vi.save(tmp_path / "ivf.faiss")
    back = VectorIndex.load(tmp_path / "ivf.faiss", trained_on=1600)
    assert back.kind == "ivf" and back.nlist == vi.nlist and np.sort(back.ids()).tolist() == db.ids().tolist()
    for i in range(1, 1200):  # shrinking well below the threshold goes back to flat
        del db.vecs[i]
    vi, c = reconcile(vi, DIM, db.ids(), db.fetch, threshold=1000)
    assert vi.kind == "flat" and vi.ntotal == 401


def test_save_is_atomic_and_load_checks_the_layout(tmp_path):
    import faiss

    db = Db(30)
    vi, _ = reconcile(None, DIM, db.ids(), db.fetch, threshold=1000)
    path = tmp_path / FAISS_FILE
    vi.save(path)
    assert [p.name for p in tmp_path.iterdir()] == [FAISS_FILE]  # no temp file left behind
    back = VectorIndex.load(path)
    assert back.kind == "flat" and np.sort(back.ids()).tolist() == db.ids().tolist()
    path.write_bytes(path.read_bytes()[:100])  # torn or corrupt: treated as absent, then rebuilt
    assert VectorIndex.load(path) is None
    faiss.write_index(faiss.IndexFlatIP(DIM), str(path))  # a layout we never write
    assert VectorIndex.load(path) is None
    assert VectorIndex.load(tmp_path / "missing.faiss") is None


def test_dimension_change_rebuilds():
    db = Db(10)
    vi = VectorIndex.flat(DIM * 2)
    vi2, c = reconcile(vi, DIM, db.ids(), db.fetch, threshold=1000)
    assert c["rebuilt"] == 1 and vi2.dim == DIM


@pytest.mark.gpu
def test_ivf_training_on_gpu_when_present():
    if fi._gpu_count() == 0:
        pytest.skip("no faiss GPU support or no CUDA device")
    db = Db(400)
    vi = fi.build("ivf", DIM, db.ids(), db.fetch, use_gpu=True)
    assert vi.kind == "ivf" and vi.ntotal == 400

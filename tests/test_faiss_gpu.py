"""FAISS on the GPU: large searches and large IVF builds go to the GPU when faiss has one, with the
CPU's results. Without a GPU the same code runs against a stand-in (a CPU copy of the index), so the id
mapping and probe count are checked here too; the real GPU test is marked gpu."""

from __future__ import annotations

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from pixdex.storage import faiss_index as fi


def unit(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fetcher(vecs: np.ndarray):
    def fetch(ids):
        ids = np.asarray(ids, np.int64)
        return ids, vecs[ids - 1000]

    return fetch


@pytest.fixture
def stand_in(monkeypatch):
    """A "GPU" that is a CPU copy of the index; counts how often it was used."""
    used = []

    def to_gpu(index):
        used.append(type(index).__name__)
        return faiss.clone_index(index)

    monkeypatch.setattr(fi, "gpu_available", lambda: True)
    monkeypatch.setattr(fi, "to_gpu", to_gpu)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", lambda x: x, raising=False)
    monkeypatch.setattr(fi, "GPU_MIN_ADD", 100)
    return used


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_large_searches_and_builds_on_the_gpu_give_the_cpus_results(kind, stand_in, monkeypatch):
    vecs = unit(3000)
    ids = np.arange(1000, 4000, dtype=np.int64)
    q = unit(fi.GPU_MIN_QUERIES, seed=1)
    monkeypatch.setattr(fi, "gpu_available", lambda: False)
    ref_index = fi.build(kind, 32, ids, fetcher(vecs), use_gpu=False)
    want = ref_index.search(q, 10, nprobe=3)
    monkeypatch.setattr(fi, "gpu_available", lambda: True)
    vi = fi.build(kind, 32, ids, fetcher(vecs))
    assert len(stand_in) == (2 if kind == "ivf" else 0)  # the IVF build trained and added on the "GPU"
    got = vi.search(q, 10, nprobe=3)
    assert len(stand_in) == (3 if kind == "ivf" else 1)
    assert np.array_equal(got[1], want[1]) and np.allclose(got[0], want[0], atol=1e-5)
    assert set(got[1].ravel()) <= set(ids.tolist())
    vi.search(q[:1], 10)  # one query: the CPU
    vi.remove(np.array([int(got[1][0, 0])]))  # a change drops the GPU copy
    again = vi.search(q, 10, nprobe=3)
    assert len(stand_in) == (4 if kind == "ivf" else 2) and int(got[1][0, 0]) not in again[1][0]


def test_no_gpu_use_when_turned_off(monkeypatch):
    monkeypatch.setenv("PIXDEX_FAISS_GPU", "0")
    assert fi.gpu_available() is False


@pytest.mark.gpu
@pytest.mark.skipif(fi._gpu_count() == 0, reason="needs faiss with GPU support and a GPU")
def test_real_gpu_ivf_build_and_search(monkeypatch):
    monkeypatch.setattr(fi, "GPU_MIN_ADD", 1000)
    vecs = unit(20000, 64)
    ids = np.arange(1000, 21000, dtype=np.int64)
    cpu = fi.build("ivf", 64, ids, fetcher(vecs), use_gpu=False)
    gpu = fi.build("ivf", 64, ids, fetcher(vecs))
    assert gpu.ntotal == cpu.ntotal and not isinstance(gpu.index, faiss.GpuIndex)
    q = unit(256, 64, seed=3)
    a, b = cpu.search(q, 10), gpu.search(q, 10)
    assert (a[1] == b[1]).mean() > 0.95  # trained on different hardware: cells may differ slightly

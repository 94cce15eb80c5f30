"""The FAISS index of a store: derived from the vectors in SQLite, saved atomically.

Layout (a contract, see docs/ARCHITECTURE.md): ``index.faiss`` holds either

- ``flat``: ``IndexIDMap(IndexFlatIP(dim))`` (exact) for stores below the IVF threshold, or
- ``ivf``: ``IndexIVFFlat(IndexFlatIP(dim), dim, nlist, METRIC_INNER_PRODUCT)`` with nlist about
  ``4*sqrt(N)`` (a power of two), trained on 39..256 points per list, retrained when the store has grown
  4x since training.

FAISS ids are ``images.id``. Vectors are float32 and L2-normalised, so inner product is cosine.
The file is never trusted: :func:`reconcile` compares its ids with the database and repairs it.
faiss is imported inside functions (no import cost on other paths).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Optional

import numpy as np

from pixdex.fsutil import atomic_write
from pixdex.storage.contract import FAISS_FILE

log = logging.getLogger(__name__)

IdsFn = Callable[[], np.ndarray]
VectorsFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

DEFAULT_IVF_THRESHOLD = 50_000
MIN_POINTS_PER_LIST = 39
MAX_POINTS_PER_LIST = 256
RETRAIN_GROWTH = 4
_CHUNK = 4096


def ivf_threshold(value: Optional[int] = None) -> int:
    """The store size from which an IVF index is used: ``value``, else $PIXDEX_IVF_THRESHOLD, else default."""
    if value is not None:
        return max(1, int(value))
    env = os.environ.get("PIXDEX_IVF_THRESHOLD")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            log.warning("ignoring PIXDEX_IVF_THRESHOLD=%r (not an integer)", env)
    return DEFAULT_IVF_THRESHOLD


def nlist_for(n: int) -> int:
    """About 4*sqrt(n) lists, a power of two, with at least MIN_POINTS_PER_LIST training points each."""
    if n < 2 * MIN_POINTS_PER_LIST:
        return 1
    nlist = 2 ** max(0, round(math.log2(4 * math.sqrt(n))))
    while nlist > 1 and n < MIN_POINTS_PER_LIST * nlist:
        nlist //= 2
    return nlist


def id_checksum(ids: Iterable[int]) -> str:
    """Order-independent checksum of a set of ids (xor and sum of splitmix64 hashes)."""
    a = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64).astype(np.uint64)
    if a.size == 0:
        return "0" * 32
    with np.errstate(over="ignore"):
        z = a + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        x = int(np.bitwise_xor.reduce(z))
        s = int(z.sum(dtype=np.uint64))
    return f"{x:016x}{s:016x}"


SAMPLE_SIZE = 32  # vectors compared with the database by status and at the start of each index run


def file_checksum(path: Path) -> str:
    """blake2b-128 of a file's bytes (recorded in ``store.json`` when the FAISS file is saved)."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def sample(index: VectorIndex, k: int = SAMPLE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of up to ``k`` entries spread evenly over the index, as the file holds them."""
    import faiss

    n = index.ntotal
    if n == 0:
        return np.zeros(0, np.int64), np.zeros((0, index.dim), np.float32)
    if index.kind == "flat":
        pos = np.unique(np.linspace(0, n - 1, min(k, n)).astype(np.int64))
        ids = faiss.vector_to_array(index.index.id_map)[pos].astype(np.int64)
        inner = faiss.downcast_index(index.index.index)
        vecs = np.stack([inner.reconstruct(int(p)) for p in pos]).astype(np.float32)
        return ids, vecs
    inv = index.index.invlists
    lists = [lst for lst in range(index.index.nlist) if inv.list_size(lst)]
    pick = [lists[int(i)] for i in np.unique(np.linspace(0, len(lists) - 1, min(k, len(lists))).astype(int))]
    ids, vecs = [], []
    for lst in pick:
        n_l = inv.list_size(lst)
        j = n_l // 2  # the middle entry: not always the first bytes of a list
        id_ptr, code_ptr = inv.get_ids(lst), inv.get_codes(lst)
        ids.append(int(faiss.rev_swig_ptr(id_ptr, n_l)[j]))
        codes = faiss.rev_swig_ptr(code_ptr, n_l * inv.code_size)
        row = np.array(codes[j * inv.code_size : (j + 1) * inv.code_size], dtype=np.uint8, copy=True)
        inv.release_ids(lst, id_ptr)
        inv.release_codes(lst, code_ptr)
        vecs.append(row.view(np.float32))
    return np.asarray(ids, np.int64), np.stack(vecs)


def sample_problem(index: VectorIndex, fetch: VectorsFn, k: int = SAMPLE_SIZE) -> Optional[str]:
    """Whether a sample of the index's vectors equals the database's vectors of the same ids (the
    database is the source of truth); a one-line reason when not, None when they agree."""
    ids, vecs = sample(index, k)
    if ids.size == 0:
        return None
    got_ids, got = fetch(ids)
    by_id = {int(i): v for i, v in zip(got_ids, got)}
    common = [j for j, i in enumerate(ids) if int(i) in by_id]
    if not common:
        return None  # only ids the database no longer has: the id comparison reports those
    want = np.stack([by_id[int(ids[j])] for j in common])
    if want.shape[1] != vecs.shape[1]:
        return f"its vectors have {vecs.shape[1]} dimensions, the database's {want.shape[1]}"
    bad = int((~np.all(np.abs(vecs[common] - want) <= 1e-6, axis=1)).sum())
    if bad:
        return (
            f"{bad} of {len(common)} sampled vectors differ from the database's (garbled, or another store's)"
        )
    return None


def _gpu_count() -> int:
    import faiss

    try:
        return int(faiss.get_num_gpus()) if hasattr(faiss, "StandardGpuResources") else 0
    except (RuntimeError, AttributeError):
        return 0


GPU_MIN_QUERIES = 64  # fewer queries search on the CPU: the copy to the GPU would cost more
GPU_MIN_ADD = 50_000  # an IVF build adds on the GPU from this many vectors (assignment to the lists)
_gpu_res = None


def gpu_available() -> bool:
    """Whether FAISS has a GPU to use (faiss built with GPU support and a device) and
    ``PIXDEX_FAISS_GPU`` is not ``0``."""
    return os.environ.get("PIXDEX_FAISS_GPU", "1") != "0" and _gpu_count() > 0


def to_gpu(index):
    """A GPU copy of ``index`` (one shared ``StandardGpuResources``), or None when that fails (logged)."""
    import faiss

    global _gpu_res
    try:
        if _gpu_res is None:
            _gpu_res = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(_gpu_res, 0, index)
    except (RuntimeError, AttributeError) as e:
        log.warning("cannot use the GPU for FAISS (%s); staying on the CPU", str(e).splitlines()[0][:160])
        return None


class VectorIndex:
    """A FAISS index over (id, vector) pairs with the operations the store needs."""

    def __init__(self, index, kind: str, trained_on: int = 0):
        self.index = index
        self.kind = kind
        self.trained_on = int(trained_on)
        self._gpu = None  # (GPU copy, id map or None) for large searches; dropped on every change

    # ------------------------------------------------------------------ construction

    @classmethod
    def flat(cls, dim: int) -> VectorIndex:
        import faiss

        return cls(faiss.IndexIDMap(faiss.IndexFlatIP(int(dim))), "flat")

    @classmethod
    def train_ivf(cls, sample: np.ndarray, nlist: int, trained_on: int, use_gpu: bool = True) -> VectorIndex:
        import faiss

        sample = np.ascontiguousarray(sample, dtype=np.float32)
        dim = sample.shape[1]
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, int(nlist), faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 1234
        gpu = to_gpu(index) if use_gpu and gpu_available() else None
        if gpu is not None:
            try:
                gpu.train(sample)
                index = faiss.index_gpu_to_cpu(gpu)
                log.info("trained IVF%d on the GPU with %d points", nlist, len(sample))
                return cls(index, "ivf", trained_on)
            except RuntimeError as e:  # no usable CUDA device after all: train on the CPU
                log.warning("faiss GPU training failed (%s); training on the CPU", e)
                index = faiss.IndexIVFFlat(
                    faiss.IndexFlatIP(dim), dim, int(nlist), faiss.METRIC_INNER_PRODUCT
                )
                index.cp.seed = 1234
        index.train(sample)
        log.info("trained IVF%d on the CPU with %d points", nlist, len(sample))
        return cls(index, "ivf", trained_on)

    @classmethod
    def load(cls, path: Path, trained_on: int = 0) -> Optional[VectorIndex]:
        """The index in ``path``, or None when it is missing or unreadable (it is rebuilt then)."""
        import faiss

        path = Path(path)
        if not path.is_file():
            return None
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as e:
            log.warning(
                "cannot read %s (%s); it will be rebuilt", path, str(e).splitlines()[0] if str(e) else e
            )
            return None
        if isinstance(index, faiss.IndexIVF):
            return cls(index, "ivf", trained_on)
        if not isinstance(index, faiss.IndexIDMap):  # a layout we do not write: rebuild rather than guess
            log.warning("unexpected FAISS layout in %s; it will be rebuilt", path)
            return None
        return cls(index, "flat")

    # ------------------------------------------------------------------ queries

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def nlist(self) -> Optional[int]:
        return int(self.index.nlist) if self.kind == "ivf" else None

    def ids(self) -> np.ndarray:
        """Every id in the index (int64, unsorted; duplicates kept)."""
        import faiss

        if self.kind == "flat":
            return faiss.vector_to_array(self.index.id_map).astype(np.int64, copy=False)
        inv = self.index.invlists
        parts = []
        for lst in range(self.index.nlist):
            n = inv.list_size(lst)
            if n:
                ptr = inv.get_ids(lst)
                parts.append(np.array(faiss.rev_swig_ptr(ptr, n), dtype=np.int64, copy=True))
                inv.release_ids(lst, ptr)
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def search(
        self, queries: np.ndarray, k: int, nprobe: Optional[int] = None
    ) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if self.kind == "ivf":
            self.index.nprobe = int(nprobe or default_nprobe(self.nlist))
        if len(q) >= GPU_MIN_QUERIES and self.ntotal and gpu_available():
            found = self._search_gpu(q, int(k))
            if found is not None:
                return found
        return self.index.search(q, int(k))

    def _search_gpu(self, q: np.ndarray, k: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """Many queries at once on the GPU (same results as the CPU's; None: the GPU is not usable)."""
        import faiss

        if self._gpu is None:
            if self.kind == "flat":  # the GPU holds the flat vectors; ids are mapped back here
                gpu = to_gpu(faiss.downcast_index(self.index.index))
                self._gpu = None if gpu is None else (gpu, faiss.vector_to_array(self.index.id_map))
            else:
                gpu = to_gpu(self.index)
                self._gpu = None if gpu is None else (gpu, None)
            if self._gpu is None:
                return None
        gpu, id_map = self._gpu
        if self.kind == "ivf":
            gpu.nprobe = self.index.nprobe
        dist, pos = gpu.search(q, k)
        if id_map is None:
            return dist, pos
        return dist, np.where(pos >= 0, id_map[np.clip(pos, 0, None)], -1)

    def describe(self) -> dict:
        d = {"file": FAISS_FILE, "type": self.kind, "dim": self.dim, "ntotal": self.ntotal}
        if self.kind == "ivf":
            d.update(nlist=self.nlist, trained_on=self.trained_on, nprobe=default_nprobe(self.nlist))
        return d

    # ------------------------------------------------------------------ updates

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.size:
            self._gpu = None
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)

    def remove(self, ids: np.ndarray) -> int:
        import faiss

        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not ids.size:
            return 0
        self._gpu = None
        return int(self.index.remove_ids(faiss.IDSelectorBatch(ids.size, faiss.swig_ptr(ids))))

    def save(self, path: Path) -> None:
        """Write atomically (:func:`pixdex.fsutil.atomic_write`): readers see the old file or the new one."""
        import faiss

        atomic_write(path, lambda tmp: faiss.write_index(self.index, str(tmp)))


def default_nprobe(nlist: Optional[int]) -> int:
    return max(1, min(int(nlist or 1), 2 * int(math.sqrt(nlist or 1)) + 1))


# ---------------------------------------------------------------------- keeping it in line with the db


def wanted_kind(n: int, current: Optional[VectorIndex], threshold: int) -> tuple[str, bool]:
    """(kind, rebuild): the index type a store of ``n`` vectors should have and whether to rebuild it."""
    if current is None:
        return ("ivf" if n >= threshold and nlist_for(n) > 1 else "flat"), True
    if current.kind == "flat":
        if n >= threshold and nlist_for(n) > 1:
            return "ivf", True
        return "flat", False
    if n < threshold // 2:  # shrank well below the threshold (hysteresis: no flip-flopping)
        return "flat", True
    if current.trained_on and n >= RETRAIN_GROWTH * current.trained_on:
        return "ivf", True
    return "ivf", False


def build(
    kind: str, dim: int, db_ids: np.ndarray, fetch: VectorsFn, seed: int = 0, use_gpu: bool = True
) -> VectorIndex:
    """A fresh index of ``kind`` holding every vector of ``db_ids``."""
    n = int(db_ids.size)
    if kind == "ivf":
        nlist = nlist_for(n)
        rng = np.random.default_rng(seed)
        m = min(n, MAX_POINTS_PER_LIST * nlist)
        sample_ids = np.sort(rng.choice(db_ids, size=m, replace=False)) if m < n else db_ids
        _, sample = fetch(sample_ids)
        vi = VectorIndex.train_ivf(sample, nlist, trained_on=n, use_gpu=use_gpu)
    else:
        vi = VectorIndex.flat(dim)
    # a large IVF build assigns its vectors to the lists on the GPU, then comes back to the CPU
    gpu = to_gpu(vi.index) if kind == "ivf" and n >= GPU_MIN_ADD and use_gpu and gpu_available() else None
    for s in range(0, n, _CHUNK):
        ids, vecs = fetch(db_ids[s : s + _CHUNK])
        if gpu is not None:
            gpu.add_with_ids(
                np.ascontiguousarray(vecs, dtype=np.float32), np.ascontiguousarray(ids, np.int64)
            )
        else:
            vi.add(ids, vecs)
    if gpu is not None:
        import faiss

        vi.index = faiss.index_gpu_to_cpu(gpu)
        log.info("added %d vectors to IVF%d on the GPU", n, vi.nlist)
    return vi


def reconcile(
    current: Optional[VectorIndex],
    dim: int,
    db_ids: np.ndarray,
    fetch: VectorsFn,
    threshold: int,
    use_gpu: bool = True,
) -> tuple[VectorIndex, dict[str, int]]:
    """Bring ``current`` in line with the database ids (rebuilding or changing type when due).

    Returns the index and counts ``{"added", "removed", "rebuilt"}``.
    """
    db_ids = np.unique(np.asarray(db_ids, dtype=np.int64))
    kind, rebuild = wanted_kind(int(db_ids.size), current, threshold)
    if current is not None and current.dim != dim:
        rebuild = True
    if not rebuild:
        have = current.ids()
        if np.unique(have).size != have.size:  # duplicated ids: never written by us, rebuild
            log.warning("the FAISS index holds duplicate ids; rebuilding it")
            rebuild = True
    if rebuild:
        if current is not None:
            log.info("building a %s FAISS index over %d vectors", kind, db_ids.size)
        return build(kind, dim, db_ids, fetch, use_gpu=use_gpu), {
            "added": int(db_ids.size),
            "removed": 0,
            "rebuilt": 1,
        }
    extra = np.setdiff1d(have, db_ids, assume_unique=True)
    missing = np.setdiff1d(db_ids, have, assume_unique=True)
    removed = current.remove(extra) if extra.size else 0
    for s in range(0, missing.size, _CHUNK):
        ids, vecs = fetch(missing[s : s + _CHUNK])
        current.add(ids, vecs)
    if extra.size or missing.size:
        log.info("FAISS index repaired: %d added, %d removed", missing.size, removed)
    return current, {"added": int(missing.size), "removed": int(removed), "rebuilt": 0}

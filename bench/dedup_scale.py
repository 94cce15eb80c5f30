"""Semantic dedup at scale: wall time, peak memory and pair recall against exact search, in one run.

    python bench/dedup_scale.py [--sizes 100000,1000000] [--threshold 0.9] [--dim 512] [--range]

Synthetic data shaped like image embeddings (not isotropic noise): every vector shares a common
direction, belongs to one of 3000 concepts (lognormal sizes) that themselves group under 32 topics;
0.5% of the vectors come in bursts of 3-8 near-identical shots (cosine ~0.94 among them), and 1% get a
planted noisy copy with a target cosine drawn uniformly in [0.90, 0.99] (the realised cosine scatters
around it, so some planted pairs fall below the threshold, as real near-duplicates do).

Figures per size: wall_s and cpu_s (user+sys of the process: on a machine shared with other work the
wall time grows with the load average, printed alongside; cpu_s / cores is what an idle machine
needs at best), peak memory, pairs, recall. Each size runs in its own child process, so peak memory is that size's alone (VmHWM after the data is
made, reset through /proc/self/clear_refs where the kernel allows it, else ru_maxrss since start).

Ground truth is exact search (pixdex.dedup.semantic, exact=True):
- up to --exact-all (default 100000): every pair, blocked exact over the whole set;
- above: the exact neighbours above the threshold of a sample of query rows against all N rows:
  --sample rows drawn uniformly plus --sample rows drawn among the rows of bursts and planted pairs
  (known by construction, not from the method under test); a true pair counts as found when the
  method reports it. The planted pairs are also checked one by one (their exact cosine is cheap).

--range also times the alternative: FAISS range search on an IVF index (same nlist and nprobe as the
clustered way), for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pixdex.dedup import semantic  # noqa: E402

CONCEPTS = 3000
TOPICS = 32
_CHUNK = 65536


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def synth(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vectors (n, dim) float32 unit, planted pairs (p, 2), burst rows (b,)) in shuffled order."""
    rng = np.random.default_rng(seed)
    common = _unit(rng.standard_normal(dim, dtype=np.float32))
    topics = _unit(_unit(rng.standard_normal((TOPICS, dim), dtype=np.float32)) + 1.2 * common)
    concepts = _unit(
        topics[rng.integers(0, TOPICS, CONCEPTS)]
        + 0.9 * _unit(rng.standard_normal((CONCEPTS, dim), dtype=np.float32))
    )
    spread = rng.uniform(0.8, 1.4, CONCEPTS).astype(np.float32)
    weights = rng.lognormal(0.0, 1.0, CONCEPTS)
    n_copies = n // 100
    n_orig = n - n_copies
    lab = rng.choice(CONCEPTS, size=n_orig, p=weights / weights.sum())
    x = np.empty((n, dim), np.float32)
    for s in range(0, n_orig, _CHUNK):
        e = min(n_orig, s + _CHUNK)
        g = rng.standard_normal((e - s, dim), dtype=np.float32)
        x[s:e] = _unit(concepts[lab[s:e]] + spread[lab[s:e], None] * _unit(g))
    # bursts: 0.5% of rows replaced by groups of 3-8 shots around a seed row
    burst_rows = []
    pos = 0
    seeds = rng.choice(n_orig, size=n_orig // 1000, replace=False)
    free = np.setdiff1d(np.arange(n_orig), seeds)
    rng.shuffle(free)
    for sd in seeds:
        k = int(rng.integers(2, 8))
        rows = free[pos : pos + k]
        pos += k
        x[rows] = _unit(x[sd] + 0.25 * _unit(rng.standard_normal((rows.size, dim), dtype=np.float32)))
        burst_rows.extend([sd, *rows])
    # planted copies: target cosine c needs noise of relative norm sqrt(1/c^2 - 1)
    src = rng.choice(n_orig, size=n_copies, replace=False)
    cos = rng.uniform(0.90, 0.99, n_copies).astype(np.float32)
    eps = np.sqrt(1.0 / cos**2 - 1.0)
    for s in range(0, n_copies, _CHUNK):
        e = min(n_copies, s + _CHUNK)
        g = _unit(rng.standard_normal((e - s, dim), dtype=np.float32))
        x[n_orig + s : n_orig + e] = _unit(x[src[s:e]] + eps[s:e, None] * g)
    planted = np.stack([src, np.arange(n_orig, n)], axis=1)
    perm = rng.permutation(n)
    inv = np.empty(n, np.int64)
    inv[perm] = np.arange(n)
    x = x[perm]
    return x, inv[planted], inv[np.asarray(burst_rows, np.int64)]


# ---------------------------------------------------------------------- memory


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kb(key: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------------- alternative: FAISS range search


def range_search_pairs(x: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Pairs via IndexIVFFlat.range_search (inner product >= t), as on a store's IVF index.

    nlist and nprobe as the clustered way; the quantizer is a spherical k-means in the full dimension
    (as the store trains it). Returns (i, j, train seconds, search seconds).
    """
    import faiss

    t0 = time.perf_counter()
    nlist = semantic.nlist_for(x.shape[0])
    sample = semantic._sample((x,), semantic.KMEANS_POINTS_PER_LIST * nlist)
    km = faiss.Kmeans(
        x.shape[1],
        nlist,
        niter=semantic.KMEANS_ITER,
        seed=semantic.SEED,
        spherical=True,
        min_points_per_centroid=1,
        max_points_per_centroid=semantic.KMEANS_POINTS_PER_LIST,
    )
    km.train(sample)
    quantizer = faiss.IndexFlatIP(x.shape[1])
    quantizer.add(km.centroids)
    index = faiss.IndexIVFFlat(quantizer, x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.add(x)
    index.nprobe = semantic.NPROBE
    t1 = time.perf_counter()
    out_i, out_j = [], []
    for s in range(0, x.shape[0], 16384):
        lims, _, ids = index.range_search(x[s : s + 16384], float(t))
        lims = lims.astype(np.int64)
        rows = np.repeat(np.arange(s, s + lims.size - 1, dtype=np.int64), np.diff(lims))
        keep = ids != rows
        out_i.append(np.minimum(rows, ids)[keep])
        out_j.append(np.maximum(rows, ids)[keep])
    key = np.unique(np.concatenate(out_i) * x.shape[0] + np.concatenate(out_j))
    return key // x.shape[0], key % x.shape[0], t1 - t0, time.perf_counter() - t1


# ---------------------------------------------------------------------- one size


def _keys(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    return np.unique(np.minimum(i, j) * np.int64(n) + np.maximum(i, j))


def run_size(n: int, dim: int, t: float, exact_all: int, sample: int, do_range: bool) -> dict:
    t0 = time.perf_counter()
    x, planted, bursts = synth(n, dim)
    res: dict = {"n": n, "dim": dim, "threshold": t, "synth_s": round(time.perf_counter() - t0, 1)}
    res["data_rss_mb"] = _status_kb("VmRSS") // 1024
    reset = _reset_peak()
    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), _cpu()
    approx = semantic.similar_pairs(x, t, exact=False)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    res["cpu_s"] = round(_cpu() - c0, 1)
    res["peak_rss_mb"] = _status_kb("VmHWM") // 1024
    res["peak_is_since_start"] = not reset
    res["loadavg_1m"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    res["nlist"] = semantic.nlist_for(n)
    res["nprobe"] = semantic.NPROBE
    res["pca_dim"] = semantic.PCA_DIM
    res["pairs"] = len(approx)
    found = _keys(approx.i, approx.j, n)

    # planted pairs, one by one
    pc = np.einsum("ij,ij->i", x[planted[:, 0]], x[planted[:, 1]])
    pk = _keys(planted[pc >= t, 0], planted[pc >= t, 1], n)
    res["planted_above_t"] = int(pk.size)
    res["planted_recall"] = round(float(np.isin(pk, found).mean()) if pk.size else 1.0, 4)

    if n <= exact_all:
        t0 = time.perf_counter()
        ex = semantic.similar_pairs(x, t, exact=True)
        res["exact_s"] = round(time.perf_counter() - t0, 1)
        truth = _keys(ex.i, ex.j, n)
        res["exact_pairs"] = int(truth.size)
        res["recall"] = round(float(np.isin(truth, found).mean()) if truth.size else 1.0, 4)
        res["precision"] = round(float(np.isin(found, truth).mean()) if found.size else 1.0, 4)
        res["ground_truth"] = "all pairs (exact)"
    else:
        rng = np.random.default_rng(1)
        special = np.unique(np.concatenate([planted.reshape(-1), bursts]))
        for name, rows in (
            ("uniform", np.sort(rng.choice(n, size=sample, replace=False))),
            ("dup_rows", np.sort(rng.choice(special, size=min(sample, special.size), replace=False))),
        ):
            t0 = time.perf_counter()
            ex = semantic.cross_pairs(x[rows], x, t, exact=True)
            qi, bj = rows[ex.i], ex.j
            keep = qi != bj
            truth = _keys(qi[keep], bj[keep], n)
            res[f"exact_{name}_s"] = round(time.perf_counter() - t0, 1)
            res[f"exact_{name}_pairs"] = int(truth.size)
            res[f"recall_{name}"] = round(float(np.isin(truth, found).mean()) if truth.size else 1.0, 4)
        res["ground_truth"] = f"exact neighbours of {sample} uniform + {sample} duplicate-side query rows"
    if do_range:
        t0 = time.perf_counter()
        c0 = _cpu()
        ri, rj, train_s, search_s = range_search_pairs(x, t)
        res["range_wall_s"] = round(time.perf_counter() - t0, 1)
        res["range_cpu_s"] = round(_cpu() - c0, 1)
        res["range_train_s"], res["range_search_s"] = round(train_s, 1), round(search_s, 1)
        rk = _keys(ri, rj, n)
        res["range_pairs"] = int(rk.size)
        res["range_overlap_with_clustered"] = round(
            float(np.isin(found, rk).mean()) if found.size else 1.0, 4
        )
        if "recall" in res:
            res["range_recall"] = round(float(np.isin(truth, rk).mean()) if truth.size else 1.0, 4)
        res["range_planted_recall"] = round(float(np.isin(pk, rk).mean()) if pk.size else 1.0, 4)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--exact-all", type=int, default=100_000)
    ap.add_argument("--sample", type=int, default=1000)
    ap.add_argument("--range", action="store_true", help="also time FAISS IVF range search")
    ap.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        out = run_size(a.worker, a.dim, a.threshold, a.exact_all, a.sample, a.range)
        print(json.dumps(out), flush=True)
        return
    import faiss

    print(f"cores={os.cpu_count()} faiss_threads={faiss.omp_get_max_threads()} loadavg={os.getloadavg()}")
    for n in (int(s) for s in a.sizes.split(",")):
        cmd = [sys.executable, __file__, "--worker", str(n), "--threshold", str(a.threshold)]
        cmd += ["--dim", str(a.dim), "--exact-all", str(a.exact_all), "--sample", str(a.sample)]
        cmd += ["--range"] if a.range else []
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            print(r.stderr, file=sys.stderr)
            raise SystemExit(r.returncode)
        print(r.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()

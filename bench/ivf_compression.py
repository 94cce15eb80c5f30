#!/usr/bin/env python3
"""Compressed IVF for the 100M-1B plan (docs/ARCHITECTURE.md, "Past one machine"): bytes per vector,
train and add time, recall with pixdex's exact re-rank, measured small and extrapolated.

    python bench/ivf_compression.py [--n 100000] [--dim 512] [--queries 200] [--rerank 100]

Synthetic unit vectors in clusters (N/50 centres, noise chosen so that neighbours are close, as
photos of one subject are). For IVF-Flat, IVF-SQ8 and IVF-PQ (dim/8 sub-quantisers of 8 bits, i.e.
dim/8 bytes a vector) with nlist = ``faiss_index.nlist_for(N)`` and nprobe = ``default_nprobe``:
train seconds (on ``max(40 * nlist, 20k)`` points), add seconds, bytes per vector of the written
index, and recall@10 of the FAISS top ``--rerank`` re-ranked exactly with the float32 vectors (what
``pixdex.search.retrieval`` does with the stored vectors) against exact search. One JSON line per
index type.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--rerank", type=int, default=100)
    args = ap.parse_args()
    import faiss

    from pixdex.storage.faiss_index import default_nprobe, nlist_for

    rng = np.random.default_rng(0)
    n, d = args.n, args.dim
    centres = unit(rng.standard_normal((max(1, n // 50), d)))
    x = unit(centres[rng.integers(0, len(centres), n)] + 0.6 / np.sqrt(d) * rng.standard_normal((n, d)))
    q = unit(x[rng.integers(0, n, args.queries)] + 0.3 / np.sqrt(d) * rng.standard_normal((args.queries, d)))
    exact = faiss.IndexFlatIP(d)
    exact.add(x)
    _, truth = exact.search(q, 10)
    nlist = nlist_for(n)
    ntrain = min(n, max(40 * nlist, 20_000))
    train = x[rng.choice(n, ntrain, replace=False)]
    for name, factory in (("ivf_flat", "Flat"), ("ivf_sq8", "SQ8"), ("ivf_pq", f"PQ{d // 8}x8")):
        index = faiss.index_factory(d, f"IVF{nlist},{factory}", faiss.METRIC_INNER_PRODUCT)
        t = time.perf_counter()
        index.train(train)
        t_train = time.perf_counter() - t
        t = time.perf_counter()
        index.add(x)
        t_add = time.perf_counter() - t
        index.nprobe = default_nprobe(nlist)
        _, cand = index.search(q, args.rerank)
        hits = 0
        for k in range(len(q)):
            c = cand[k][cand[k] >= 0]
            top = c[np.argsort(-(x[c] @ q[k]), kind="stable")[:10]]
            hits += len(set(top.tolist()) & set(truth[k].tolist()))
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "i.faiss")
            faiss.write_index(index, path)
            size = os.path.getsize(path)
        print(
            json.dumps(
                {
                    "index": name,
                    "n": n,
                    "dim": d,
                    "nlist": nlist,
                    "nprobe": index.nprobe,
                    "train_points": ntrain,
                    "train_s": round(t_train, 2),
                    "add_s": round(t_add, 2),
                    "bytes_per_vector": round(size / n, 1),
                    "recall_at_10_reranked": round(hits / (10 * len(q)), 4),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()

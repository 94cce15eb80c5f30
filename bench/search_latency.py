"""Search latency and recall, in one run.

    python bench/search_latency.py [--sizes 100000,1000000] [--dim 512] [--work /tmp/pixdex-bench]

Prints:
- cold wall time of a `pixdex search "..."` process on the smallest store (text query through the
  store's exported numpy text tower, ViT-B-32-sized; plus a `--like` query that needs no model), and
  which heavy modules that process imported (torch and SQLAlchemy must not be among them);
- the slowest imports of that process (`python -X importtime`);
- warm p50/p95 of SearchEngine.search (FAISS IVF candidates + exact re-rank from SQLite + row fetch)
  and of a whole warm text query, for each store size;
- recall@10 against exact search for a sweep of nprobe values, and for the search function at the
  nprobe it chooses (pixdex.search.retrieval.choose_nprobe).

Synthetic data shaped like CLIP embeddings: image vectors share a common direction and cluster around
hierarchical concepts (1000 of them, broad and overlapping); queries are "text" vectors across a
modality gap (cosine ~0.23 with their best image, ~0.09 with a typical one). Stores are written by the
real storage writer (Store.open_writer + apply_batch + save_faiss; the text tower through
export_text_tower) and cached under --work between runs; only the IVF training is cut short (10
k-means iterations on 64 points per list) to keep the 1M store's build time reasonable.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as `pixdex search` and `pixdex serve` do
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pixdex.encoders.config import ModelConfig, TextConfig  # noqa: E402

QUERY = "a dog on a beach"


def synth(n: int, dim: int, seed: int = 0, topics: int = 50, subs: int = 20):
    """(image vectors (n, dim), text queries (256, dim), concept of each image)."""
    rng = np.random.default_rng(seed)

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    m_img, m_txt = unit(rng.standard_normal((2, dim), dtype=np.float32))
    top = unit(rng.standard_normal((topics, dim), dtype=np.float32))
    concepts = unit(
        np.repeat(top, subs, axis=0) + 0.8 * unit(rng.standard_normal((topics * subs, dim), dtype=np.float32))
    )
    lab = rng.integers(0, len(concepts), n)
    vecs = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        noise = unit(rng.standard_normal((e - s, dim), dtype=np.float32))
        vecs[s:e] = unit(0.6 * m_img + 0.3 * concepts[lab[s:e]] + 0.85 * noise)
    ql = rng.integers(0, len(concepts), 256)
    queries = unit(
        0.8 * m_txt + 0.4 * concepts[ql] + 0.35 * unit(rng.standard_normal((256, dim), dtype=np.float32))
    )
    return vecs, queries.astype(np.float32)


def text_tower_tensors(rng, dim: int, cfg: TextConfig):
    """Random text-tower weights under the OpenAI/open_clip names a real encoder's text_state_dict has."""
    W, L, H = cfg.width, cfg.layers, int(cfg.width * cfg.mlp_ratio)

    def r(*shape, s=0.02):
        return (s * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)

    t = {
        "token_embedding.weight": r(cfg.vocab_size, W),
        "positional_embedding": r(cfg.context_length, W, s=0.01),
        "ln_final.weight": np.ones(W, np.float32),
        "ln_final.bias": np.zeros(W, np.float32),
        "text_projection": r(W, dim, s=W**-0.5),
    }
    for i in range(L):
        p = f"transformer.resblocks.{i}."
        t.update(
            {
                p + "ln_1.weight": np.ones(W, np.float32),
                p + "ln_1.bias": np.zeros(W, np.float32),
                p + "ln_2.weight": np.ones(W, np.float32),
                p + "ln_2.bias": np.zeros(W, np.float32),
                p + "attn.in_proj_weight": r(3 * W, W),
                p + "attn.in_proj_bias": np.zeros(3 * W, np.float32),
                p + "attn.out_proj.weight": r(W, W),
                p + "attn.out_proj.bias": np.zeros(W, np.float32),
                p + "mlp.c_fc.weight": r(H, W),
                p + "mlp.c_fc.bias": np.zeros(H, np.float32),
                p + "mlp.c_proj.weight": r(W, H),
                p + "mlp.c_proj.bias": np.zeros(W, np.float32),
            }
        )
    return t


class SyntheticTextEncoder:
    """What export_text_tower needs of an encoder (identity, config, text weights), without torch."""

    tokenizer = None

    def __init__(self, config: ModelConfig, identity: dict, tensors: dict):
        self.config, self._identity, self._tensors = config, identity, tensors

    def identity(self) -> dict:
        return dict(self._identity)

    def text_state_dict(self) -> dict:
        return self._tensors


def synthetic_row(i: int, vec: np.ndarray):
    from datetime import datetime

    from pixdex.storage.writes import NewRow

    year = 2000 + i % 25
    return NewRow(
        path=f"/photos/{year}/{i % 97:02d}/IMG_{i:07d}.jpg",
        root="/photos",
        size=2_000_000 + i,
        mtime_ns=i,
        content_hash=f"{i:032x}",
        width=4032,
        height=3024,
        format="JPEG",
        taken_at=datetime(year, 1 + i % 12, 1 + i % 28, 12),
        vector=vec,
    )


def build_store(path: Path, n: int, dim: int):
    """Write (or reuse) a synthetic store of n images; returns (vectors, queries)."""
    import faiss

    from pixdex.encoders.textexport import export_text_tower
    from pixdex.storage.faiss_index import VectorIndex, nlist_for
    from pixdex.storage.store import Store
    from pixdex.storage.writes import Batch, apply_batch

    vecs, queries = synth(n, dim)
    marker = path / "bench.json"
    nlist = nlist_for(n)
    want = {"n": n, "dim": dim, "nlist": nlist, "version": 4}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return vecs, queries
    path.mkdir(parents=True, exist_ok=True)
    for f in path.iterdir():
        if f.is_file():
            f.unlink()
    cfg = ModelConfig(
        name="bench-ViT-B-32",
        family="clip",
        embed_dim=dim,
        text=TextConfig(width=512, heads=8, layers=12, context_length=77),
    )
    identity = {"model": cfg.name, "checkpoint_sha256": "synthetic", "dim": dim}
    t0 = time.time()
    with Store.open_writer(path) as st:
        st.bind_model(identity)
        for s in range(0, n, 50_000):
            e = min(n, s + 50_000)
            applied = apply_batch(st, Batch(inserts=[synthetic_row(i, vecs[i]) for i in range(s, e)]), dim)
            assert applied.new_ids == list(range(s + 1, e + 1))  # ids 1..n: the ground truth below
        print(f"  wrote {n} rows in {time.time() - t0:.0f} s; training IVF{nlist} ...", flush=True)
        t0 = time.time()
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(1)
        index.cp.niter = 10
        index.train(vecs[rng.choice(n, min(n, 64 * nlist), replace=False)])
        vi = VectorIndex(index, "ivf", trained_on=n)
        vi.add(np.arange(1, n + 1, dtype=np.int64), vecs)
        st.save_faiss(vi)
        print(f"  IVF built in {time.time() - t0:.0f} s", flush=True)
    tensors = text_tower_tensors(np.random.default_rng(2), dim, cfg.text)
    export_text_tower(SyntheticTextEncoder(cfg, identity, tensors), path)
    marker.write_text(json.dumps(want))
    return vecs, queries


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def cold(store: Path, args, runs: int = 5):
    """Wall and CPU (user+sys) seconds of `pixdex search` processes; CPU time is what the process itself
    costs, wall time also counts waiting for the CPU on a busy machine."""
    import resource

    cmd = [sys.executable, "-m", "pixdex", "search", *args, "--store", str(store), "-k", "20", "--json"]
    walls, cpus = [], []
    for _ in range(runs):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        walls.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
        if r.returncode != 0:
            return (
                None,
                None,
                r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}",
            )
    return walls, cpus, None


def import_report(store: Path, args):
    probe = (
        "import sys, runpy; sys.argv = ['pixdex', 'search', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('pixdex', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'sqlalchemy', 'open_clip', 'timm', 'transformers', 'PIL', 'rich') "
        "if m in sys.modules]\nsys.stderr.write('HEAVY ' + ','.join(heavy) + '\\n')\n"
    )
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", probe, *args, "--store", str(store), "--json"],
        capture_output=True,
        text=True,
    )
    heavy = ""
    rows = []
    for line in r.stderr.splitlines():
        if line.startswith("HEAVY "):
            heavy = line[6:]
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m and len(m.group(3)) <= 3:  # top-level imports only
            rows.append((int(m.group(2)), m.group(4)))
    rows.sort(reverse=True)
    return heavy, rows[:8]


def warm(store: Path, vecs, queries, nprobe_sweep=True):
    import faiss

    from pixdex.search.engine import SearchEngine
    from pixdex.search.retrieval import choose_nprobe, ivf_of

    engine = SearchEngine(store)
    index = engine.index()
    ivf = ivf_of(index)
    nlist = ivf.nlist
    # exact ground truth for the queries
    sims = queries @ vecs.T
    top = np.argpartition(-sims, 10, axis=1)[:, :10]
    gt = top + 1
    del sims
    out = {"nlist": nlist, "nprobe": choose_nprobe(nlist)}
    if nprobe_sweep:
        sweep = {}
        for npb in sorted(
            {
                max(1, nlist // 64),
                max(1, nlist // 32),
                max(1, nlist // 16),
                max(1, nlist // 8),
                2 * int(np.sqrt(nlist)) + 1,
            }
        ):
            _, lab = index.search(queries, 10, params=faiss.SearchParametersIVF(nprobe=npb))
            sweep[npb] = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(lab, gt)]))
        out["sweep"] = sweep
    for q in queries[:10]:
        engine.search(q, 20)  # warm up (page cache, FAISS lists)
    times, rec = [], []
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        hits = engine.search(q, 20)
        times.append(time.perf_counter() - t0)
        rec.append(len({h.id for h in hits[:10]} & set(gt[i].tolist())) / 10)
    out["p50_ms"] = 1000 * statistics.median(times)
    out["p95_ms"] = 1000 * pct(times, 95)
    out["recall10"] = float(np.mean(rec))
    try:
        engine.text_encoder()
        engine.search_text(QUERY, 20)
        tt = []
        for i in range(30):
            t0 = time.perf_counter()
            engine.search_text(f"{QUERY} number {i}", 20)
            tt.append(time.perf_counter() - t0)
        out["text_p50_ms"] = 1000 * statistics.median(tt)
        out["text_p95_ms"] = 1000 * pct(tt, 95)
    except Exception as e:  # noqa: BLE001 - a bench reports what it cannot measure
        out["text_error"] = str(e).splitlines()[0]
    engine.close()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--work", default="/tmp/pixdex-bench")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import faiss

    faiss.omp_set_num_threads(a.threads)
    sizes = [int(s) for s in a.sizes.split(",")]
    work = Path(a.work)
    print(f"pixdex search benchmark: dim {a.dim}, {a.threads} threads, {os.cpu_count()} CPUs")
    results = {}
    for n in sizes:
        store = work / f"store-{n}"
        print(f"store of {n} images: {store}", flush=True)
        vecs, queries = build_store(store, n, a.dim)
        if n == min(sizes):
            for label, args in (("text query", [QUERY]), ("--like query", ["--like", "1"])):
                walls, cpus, err = cold(store, args)
                if walls is None:
                    print(f"  cold `pixdex search` ({label}): FAILED: {err}")
                else:
                    print(
                        f"  cold `pixdex search` ({label}): wall median {statistics.median(walls):.2f} s "
                        f"(min {min(walls):.2f} s), CPU median {statistics.median(cpus):.2f} s over "
                        f"{len(walls)} runs (goal <= 1.5 s; load average {os.getloadavg()[0]:.1f})"
                    )
            heavy, top = import_report(store, [QUERY])
            print(
                f"  heavy modules imported by a text query: {heavy or 'none'} (torch, sqlalchemy must be absent)"
            )
            print("  slowest top-level imports: " + ", ".join(f"{m} {us / 1000:.0f} ms" for us, m in top))
        r = warm(store, vecs, queries)
        results[n] = r
        sweep = ", ".join(f"nprobe {k}: {v:.3f}" for k, v in r["sweep"].items())
        print(f"  IVF nlist {r['nlist']}: recall@10 vs exact: {sweep}")
        print(
            f"  search function (nprobe {r['nprobe']}, exact re-rank): recall@10 {r['recall10']:.3f} "
            f"(goal >= 0.95); warm p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms"
            + (" (goal p50 <= 30 ms at 1M)" if n >= 1_000_000 else "")
        )
        if "text_p50_ms" in r:
            print(
                f"  warm text query (tokenize + numpy text tower + search): p50 {r['text_p50_ms']:.1f} ms, "
                f"p95 {r['text_p95_ms']:.1f} ms"
            )
        else:
            print(f"  warm text query: not measured ({r['text_error']})")
        del vecs, queries


if __name__ == "__main__":
    main()

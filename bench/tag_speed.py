"""Tagging speed: `pixdex tag` over N stored vectors against L labels (no image re-encoded).

    python bench/tag_speed.py [--n 100000] [--labels 1000] [--dim 512] [--work /tmp/pixdex-tag-bench]

Builds a store with the real storage writer (Store.open_writer + apply_batch; synthetic unit vectors,
made-up paths), puts the class embeddings of a synthetic label set into the store's class cache (so the
figure is the tagging itself: the label texts are embedded once per label set, by the numpy text tower,
and cached), then times:

- a full tagging run (``tag_store``: read the vectors, one matrix product + top-k + softmax per chunk,
  the tags written in one transaction per chunk), with images/s and rows written (``min_prob=0``:
  every image gets ``top`` rows, the worst case), and again with the default cut;
- a second run with nothing new (incremental: no image read);
- the classifier math alone (probs + top-k) on the same vectors.

The issue's bar: 100k images x 1,000 labels "in seconds".
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_store(path: Path, n: int, dim: int, seed: int = 0) -> None:
    from pixdex.storage.store import Store
    from pixdex.storage.writes import Batch, NewRow, apply_batch

    rng = np.random.default_rng(seed)
    with Store.open_writer(path) as st:
        if st.count():
            return
        st.bind_model({"model": "bench-model", "checkpoint_sha256": "bench", "dim": dim, "preprocess": {}})
        for s in range(0, n, 20000):
            m = min(20000, n - s)
            v = rng.normal(size=(m, dim)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            rows = [
                NewRow(f"/bench/img_{s + i:07d}.jpg", "/bench", 1000, i, f"{s + i:032x}", vector=v[i])
                for i in range(m)
            ]
            apply_batch(st, Batch(inserts=rows), dim)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--labels", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--work", type=Path, default=Path("/tmp/pixdex-tag-bench"))
    a = ap.parse_args()

    from pixdex.encoders.zeroshot import ZeroShotClassifier
    from pixdex.storage.store import Store
    from pixdex.tags.labelsets import label_set_id, load_labels, load_templates
    from pixdex.tags.tagger import DEFAULT_TOP, _save_classifier, tag_store

    store = a.work / f"store_{a.n}_{a.dim}"
    t = time.perf_counter()
    build_store(store, a.n, a.dim)
    print(f"store: {a.n} vectors x {a.dim} d ready in {time.perf_counter() - t:.1f} s ({store})")

    labels_file = a.work / f"labels_{a.labels}.txt"
    labels_file.write_text("".join(f"label {i}\n" for i in range(a.labels)))
    labels, templates = load_labels(str(labels_file)), load_templates("builtin:simple")
    with Store.open_readonly(store) as st:
        identity = st.identity
    rng = np.random.default_rng(1)
    w = rng.normal(size=(a.labels, a.dim)).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    clf = ZeroShotClassifier(list(labels.labels), w, "clip", float(np.log(100.0)))
    _save_classifier(store, label_set_id(labels, templates, identity), clf)

    t = time.perf_counter()
    s1 = tag_store(store, labels=str(labels_file), templates="builtin:simple", min_prob=0.0)
    full = time.perf_counter() - t
    t = time.perf_counter()
    s2 = tag_store(store)
    again = time.perf_counter() - t
    t = time.perf_counter()
    s3 = tag_store(store, min_prob=0.1)  # the default cut: fewer rows written
    default_cut = time.perf_counter() - t
    with Store.open_readonly(store) as st:
        ids, vecs = st.vectors(st.live_ids())
    t = time.perf_counter()
    for s in range(0, len(vecs), 8192):
        clf.top_probs(vecs[s : s + 8192], DEFAULT_TOP)
    math_s = time.perf_counter() - t
    print(
        f"tag: {s1['tagged']} images x {a.labels} labels in {full:.2f} s "
        f"({s1['tagged'] / full:,.0f} images/s; {s1['tags_written']} tag rows written; "
        f"phases {s1['timings_s']})"
    )
    print(f"tag again (nothing new): {s2['tagged']} images in {again:.2f} s")
    print(
        f"tag with the default cut (top {DEFAULT_TOP}, prob >= 0.1): {s3['tagged']} images in "
        f"{default_cut:.2f} s ({s3['tags_written']} rows)"
    )
    print(f"classifier math alone (probs + top-{DEFAULT_TOP}): {math_s:.2f} s")


if __name__ == "__main__":
    main()

"""Helpers for the search tests: a store written directly in the storage schema that search reads.

Used where a test needs exact control over rows (deleted/failed rows, dates, odd file names) without
running a model. The schema constants come from pixdex.search.store_view, the single place that names them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from pixdex.search import store_view as sv


def make_store(
    store: Path,
    vecs: np.ndarray,
    paths: Sequence[str],
    status: Optional[Sequence[str]] = None,
    taken: Optional[Sequence[Optional[str]]] = None,
    sizes: Optional[Sequence[tuple]] = None,
    faiss_kind: Optional[str] = "flat",
    identity: Optional[dict] = None,
    nlist: int = 16,
) -> Path:
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    n = len(vecs)
    status = list(status or ["ok"] * n)
    taken = list(taken or [None] * n)
    sizes = list(sizes or [(64, 64)] * n)
    con = sqlite3.connect(store / sv.DB_FILE)
    con.execute(
        f"CREATE TABLE {sv.T_IMAGES} ({sv.C_ID} INTEGER PRIMARY KEY, {sv.C_PATH} TEXT NOT NULL UNIQUE, "
        f"{sv.C_WIDTH} INTEGER, {sv.C_HEIGHT} INTEGER, {sv.C_TAKEN} TEXT, {sv.C_STATUS} TEXT NOT NULL)"
    )
    con.execute(f"CREATE TABLE {sv.T_VECTORS} ({sv.C_VEC_ID} INTEGER PRIMARY KEY, {sv.C_VEC} BLOB NOT NULL)")
    con.executemany(
        f"INSERT INTO {sv.T_IMAGES} VALUES (?, ?, ?, ?, ?, ?)",
        [(i + 1, str(paths[i]), sizes[i][0], sizes[i][1], taken[i], status[i]) for i in range(n)],
    )
    con.executemany(
        f"INSERT INTO {sv.T_VECTORS} VALUES (?, ?)",
        [(i + 1, vecs[i].tobytes()) for i in range(n) if status[i] == "ok"],
    )
    con.commit()
    con.close()
    ids = np.arange(1, n + 1, dtype=np.int64)
    if faiss_kind is not None:
        import faiss

        d = vecs.shape[1]
        if faiss_kind == "ivf":
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(vecs)
            index.add_with_ids(vecs, ids)
        else:
            index = faiss.IndexIDMap(faiss.IndexFlatIP(d))
            index.add_with_ids(vecs, ids)
        faiss.write_index(index, str(store / sv.FAISS_FILE))
    sidecar = {
        "model": identity or {"model": "test-model", "checkpoint_sha256": None, "dim": vecs.shape[1]},
        "faiss": {"file": sv.FAISS_FILE, "type": faiss_kind},
    }
    (store / sv.SIDECAR_FILE).write_text(json.dumps(sidecar))
    return store


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)

"""Helpers for the search tests: a store written by the real storage writer, without running a model.

Used where a test needs exact control over rows (failed or deleted rows, dates, odd file names) and
vectors. The store is built exactly as `pixdex index` builds one (``Store.open_writer``, ``bind_model``,
``apply_batch``, ``Store.save_faiss``), so search is tested against what storage really writes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Optional

import numpy as np

from pixdex.storage.contract import STATUS_FAILED, STATUS_OK

# Not a storage status: a row that was indexed (its vector went into the FAISS file) and then deleted
# from the database, as when a file disappears and FAISS has not been rewritten yet.
DELETED = "deleted"


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
    mtimes: Optional[Sequence[Optional[int]]] = None,
) -> Path:
    """A store whose row ``i`` has id ``i + 1``, ``paths[i]``, ``vecs[i]`` and ``status[i]``.

    Paths of existing files get their real size, mtime and content hash (as the indexer records them,
    so that `serve` serves them); other paths get made-up ones.
    ``status`` values: STATUS_OK, STATUS_FAILED (no vector) or DELETED. ``taken``: ISO-8601 text.
    ``mtimes``: the rows' ``mtime_ns`` where not None (else the file's, or made-up ones: ``i`` ns).
    ``faiss_kind``: "flat", "ivf" (``nlist`` lists) or None (no FAISS file: exact search); the FAISS
    file holds the vectors of the ok and the deleted rows.
    """
    from pixdex.storage import faiss_index
    from pixdex.storage.store import Store
    from pixdex.storage.writes import Batch, NewRow, apply_batch

    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    n, dim = vecs.shape
    status = list(status or [STATUS_OK] * n)
    taken = list(taken or [None] * n)
    sizes = list(sizes or [(64, 64)] * n)
    unknown = set(status) - {STATUS_OK, STATUS_FAILED, DELETED}
    if unknown:
        raise ValueError(f"unknown status values {sorted(unknown)}")
    stats = [_file_stats(str(p)) or (1000 + i, i, f"{i:032x}") for i, p in enumerate(paths)]
    for i, m in enumerate(mtimes or ()):
        if m is not None:
            stats[i] = (stats[i][0], int(m), stats[i][2])
    rows = [
        NewRow(
            path=str(paths[i]),
            root=str(Path(str(paths[i])).parent),
            size=stats[i][0],
            mtime_ns=stats[i][1],
            content_hash=stats[i][2],
            status=STATUS_FAILED if status[i] == STATUS_FAILED else STATUS_OK,
            error="cannot decode" if status[i] == STATUS_FAILED else None,
            width=sizes[i][0],
            height=sizes[i][1],
            format="JPEG",
            taken_at=None if taken[i] is None else datetime.fromisoformat(taken[i]),
            vector=None if status[i] == STATUS_FAILED else vecs[i],
        )
        for i in range(n)
    ]
    with Store.open_writer(store) as st:
        st.bind_model(identity or {"model": "test-model", "checkpoint_sha256": None, "dim": dim})
        applied = apply_batch(st, Batch(inserts=rows), dim)
        ids = np.arange(1, n + 1, dtype=np.int64)
        assert applied.new_ids == ids.tolist(), "a fresh store numbers its rows from 1"
        if faiss_kind is not None:
            with_vec = ids[[s != STATUS_FAILED for s in status]] if n else ids
            if faiss_kind == "ivf":
                vi = faiss_index.VectorIndex.train_ivf(
                    vecs[with_vec - 1], nlist, len(with_vec), use_gpu=False
                )
            else:
                vi = faiss_index.VectorIndex.flat(dim)
            vi.add(with_vec, vecs[with_vec - 1])
            st.save_faiss(vi)
        deleted = ids[[s == DELETED for s in status]] if n else ids
        if deleted.size:
            apply_batch(st, Batch(deletes=deleted.tolist()), dim)
    return Path(store)


def _file_stats(path: str) -> Optional[tuple[int, int, str]]:
    from pixdex.images import content_hash

    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            return st.st_size, st.st_mtime_ns, content_hash(f.read())
    except OSError:
        return None


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)

"""Helpers for the search tests: a store written by the real storage writer, without running a model.

Used where a test needs exact control over rows (failed or deleted rows, dates, odd file names) and
vectors. The store is built exactly as `pixdex index` builds one (``Store.open_writer``, ``bind_model``,
``apply_batch``, ``Store.save_faiss``), so search is tested against what storage really writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Optional

import numpy as np

from pixdex.storage.contract import STATUS_FAILED, STATUS_OK

REPO = Path(__file__).resolve().parents[1]
HEAVY_MODULES = ("torch", "torchvision", "open_clip", "timm", "sqlalchemy", "rich")

# `pixdex search ARGS` as the console script runs it, then which heavy modules it imported.
_PROBE = textwrap.dedent(
    """
    import json, sys
    from pixdex.cli import main
    sys.argv = ["pixdex", "search", *sys.argv[1:]]
    try:
        main()
    except SystemExit as e:
        assert not e.code, e.code
    heavy = sorted(m for m in MODULES if m in sys.modules)
    sys.stderr.write("HEAVY=" + json.dumps(heavy) + "\\n")
""".replace("MODULES", repr(HEAVY_MODULES))
)


def search_probe(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `pixdex search ARGS` in a fresh interpreter (stdout a pipe); return it and the heavy modules
    (of :data:`HEAVY_MODULES`) it imported, or None for them when it failed before reporting."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    heavy = r.stderr.split("HEAVY=")[1].splitlines()[0] if "HEAVY=" in r.stderr else "null"
    return r, json.loads(heavy)


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

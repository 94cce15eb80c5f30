"""Staged shards: what the embedding actors of a Ray run hand to the one writer (no Ray imported here).

A shard is one parquet file in the store's staging folder (``STORE/staging``, :data:`STAGING_DIR`),
one row per item: ``item`` (the file's path, or a dataset row's index), ``meta`` (JSON: size and mtime
of the file read, content hash, decode error, image info, copy-tier hashes; for a dataset row the
caption hash), ``vector`` (``fixed_size_list<float32>[dim]``, null when there is none: a failed file,
or content the store already had) and, for datasets, ``text_vector``. The encoder identity that made
the vectors is in the file's schema metadata (:data:`META_IDENTITY`), with the number of vectors the
actor computed (:data:`META_ENCODED`); a shard of another model is refused
(:func:`read_shard`, ``contract.same_model``).

A shard is written to a temporary name and renamed, so a file with a shard's name is complete. The
folder is the ledger: the writer deletes a shard once its rows are committed, and a run finds the
shards a killed run left and ingests them first. Ingesting is idempotent (a row is used only when the
store still lacks it, decided by the same scan diff as a plain run), so a shard ingested twice, or
written twice by a retried task, changes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import numpy as np

from pixdex.errors import PixdexError
from pixdex.storage.contract import STAGING_DIR, same_model

log = logging.getLogger(__name__)

SHARD_PREFIX = "shard-"
SHARD_SUFFIX = ".parquet"
META_IDENTITY = b"pixdex.identity"
META_ENCODED = b"pixdex.encoded"
C_ITEM, C_META, C_VECTOR, C_TEXT_VECTOR = "item", "meta", "vector", "text_vector"


def staging_dir(store_dir: Path) -> Path:
    return Path(store_dir) / STAGING_DIR


def finished_shards(folder: Path) -> list[Path]:
    """The complete shards in ``folder`` (oldest first); temporary files of a killed writer are
    removed (they are pixdex's own, never a user's)."""
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        if p.name.startswith(".") and p.name.endswith(".tmp"):
            p.unlink(missing_ok=True)
        elif p.name.startswith(SHARD_PREFIX) and p.name.endswith(SHARD_SUFFIX):
            out.append(p)
    return sorted(out, key=lambda p: (p.stat().st_mtime_ns, p.name))


def write_shard(
    folder: Path,
    items: list[str],
    metas: list[dict],
    vectors: list[Optional[np.ndarray]],
    identity: dict,
    encoded: int,
    text_vectors: Optional[list[Optional[np.ndarray]]] = None,
) -> Path:
    """Write one shard atomically; return its path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = int(identity["dim"])
    vec_type = pa.list_(pa.float32(), dim)
    cols = {
        C_ITEM: pa.array(items, pa.string()),
        C_META: pa.array([json.dumps(m, ensure_ascii=False) for m in metas], pa.string()),
        C_VECTOR: _vectors(vectors, vec_type),
    }
    if text_vectors is not None:
        cols[C_TEXT_VECTOR] = _vectors(text_vectors, vec_type)
    table = pa.table(cols).replace_schema_metadata(
        {META_IDENTITY: json.dumps(identity, sort_keys=True), META_ENCODED: str(int(encoded))}
    )
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{SHARD_PREFIX}{uuid.uuid4().hex}{SHARD_SUFFIX}"
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, folder / name)
    finally:
        tmp.unlink(missing_ok=True)
    return folder / name


def _vectors(vectors: list[Optional[np.ndarray]], vec_type):
    import pyarrow as pa

    return pa.array(
        [None if v is None else np.asarray(v, np.float32).reshape(-1).tolist() for v in vectors], vec_type
    )


class Shard:
    """A shard read back: ``items``, ``metas`` (dicts), ``vector(k)`` / ``text_vector(k)``, ``encoded``."""

    def __init__(self, table, encoded: int):
        self.items: list[str] = table.column(C_ITEM).to_pylist()
        self.metas: list[dict] = [json.loads(m) for m in table.column(C_META).to_pylist()]
        self._vec = _column(table, C_VECTOR)
        self._txt = _column(table, C_TEXT_VECTOR) if C_TEXT_VECTOR in table.column_names else None
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.items)

    def vector(self, k: int) -> Optional[np.ndarray]:
        return self._vec[k]

    def text_vector(self, k: int) -> Optional[np.ndarray]:
        return None if self._txt is None else self._txt[k]


def _column(table, name: str) -> list[Optional[np.ndarray]]:
    col = table.column(name).combine_chunks()
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    n, dim = len(col), col.type.list_size
    # .values holds dim slots for every row, null rows included (offset 0 after combine_chunks)
    vecs = col.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(n, dim)
    return [vecs[i] if valid[i] else None for i in range(n)]


def read_shard(path: Path, identity: dict) -> Shard:
    """Read a shard made by the model ``identity``; another model's is a one-line error."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    try:
        made_by = json.loads(meta.get(META_IDENTITY, b"null"))
    except ValueError:
        made_by = None
    if not same_model(made_by, identity):
        name = (made_by or {}).get("model")
        raise PixdexError(
            f"the staged shard {path} holds vectors of model {name!r}, not of the store's "
            f"{identity.get('model')!r}: remove {path.parent} (a run of another model left it) and run again"
        )
    return Shard(table, int(meta.get(META_ENCODED, b"0")))


def iter_shards(folder: Path, identity: dict) -> Iterator[tuple[Path, Shard]]:
    for p in finished_shards(folder):
        yield p, read_shard(p, identity)

"""The indexer's writes: one :class:`Batch` of changes committed in one transaction.

A batch is applied in a fixed order: deletions, moves, stat updates, then insertions (rows, their
vectors and their perceptual hashes together), so that a path freed by a deletion or a move can be
reused in the same batch. Either the whole batch is in the database after a crash or none of it is.
:func:`write_copy_hashes` commits the backfill pass's hashes of existing rows, also one transaction.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple, Optional

import numpy as np
from sqlalchemy import delete, insert, select, update

from pixdex.dedup.perceptual import COPY_NBYTES, COPY_ROWS, COPY_VERSION, CopyHash
from pixdex.storage.contract import (
    C_COPY_ID,
    C_COPY_PDQ,
    C_COPY_QUALITY,
    C_COPY_VERSION,
    C_VEC,
    C_VEC_ID,
    STATUS_OK,
)
from pixdex.storage.schema import CopyHashRow, ImageRow, VectorRow
from pixdex.storage.store import Store, _chunks, vectors_from_blobs


@dataclass
class NewRow:
    path: str
    root: str
    size: int
    mtime_ns: int
    content_hash: Optional[str]
    status: str = STATUS_OK
    error: Optional[str] = None
    width: Optional[int] = None
    height: Optional[int] = None
    format: Optional[str] = None
    taken_at: Optional[datetime] = None
    camera_make: Optional[str] = None
    camera_model: Optional[str] = None
    vector: Optional[np.ndarray] = None  # (dim,) float32 for STATUS_OK rows ...
    copy_from: Optional[int] = None  # ... or the id of a row with the same content whose vector to copy
    # perceptual.copy_hash_array's (rows (COPY_ROWS, 32) uint8, quality); None: none yet (a copy_from
    # row takes its source's; else the backfill pass computes them)
    copy_hash: Optional[CopyHash] = None


class Move(NamedTuple):
    id: int
    path: str
    root: str
    size: int
    mtime_ns: int


class Touch(NamedTuple):
    id: int
    size: int
    mtime_ns: int


@dataclass
class Batch:
    deletes: list[int] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    touches: list[Touch] = field(default_factory=list)
    inserts: list[NewRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.deletes) + len(self.moves) + len(self.touches) + len(self.inserts)


@dataclass
class Applied:
    """What a committed batch changed in the searchable set (for the FAISS index)."""

    added_ids: np.ndarray  # int64
    added_vectors: np.ndarray  # (n, dim) float32
    removed_ids: np.ndarray  # int64: deleted rows that had vectors
    new_ids: list[Optional[int]]  # id of each of batch.inserts, in order (None: left out, see below)
    copies_missing: list[int] = field(default_factory=list)  # indices of inserts whose copy source vanished


class KnownFile(NamedTuple):
    id: int
    size: int
    mtime_ns: int
    content_hash: Optional[str]
    status: str
    root: Optional[str] = None  # the root it was found under


def known_files(store: Store) -> dict[str, KnownFile]:
    """Every row's path and cheap columns (no blobs): what a run compares the scan with."""
    with store.session() as s:
        q = select(
            ImageRow.path,
            ImageRow.id,
            ImageRow.size,
            ImageRow.mtime_ns,
            ImageRow.content_hash,
            ImageRow.status,
            ImageRow.root,
        )
        return {p: KnownFile(i, sz, mt, h, st, r) for p, i, sz, mt, h, st, r in s.execute(q)}


def apply_batch(store: Store, batch: Batch, dim: int) -> Applied:
    """Commit ``batch`` in one transaction. Inserts with ``copy_from`` whose source row no longer has
    a vector are left out (their indices are returned in ``copies_missing``; encode them instead)."""
    now = time.time()
    removed: list[int] = []
    new_ids: list[Optional[int]] = [None] * len(batch.inserts)
    added_ids: list[int] = []
    added_vecs: list[bytes] = []
    missing: list[int] = []
    with store.session() as s, s.begin():
        if batch.deletes:
            for chunk in _chunks(sorted(set(batch.deletes))):
                removed.extend(
                    r[0] for r in s.execute(select(VectorRow.image_id).where(VectorRow.image_id.in_(chunk)))
                )
                s.execute(delete(VectorRow).where(VectorRow.image_id.in_(chunk)))
                s.execute(delete(CopyHashRow).where(CopyHashRow.image_id.in_(chunk)))
                s.execute(delete(ImageRow).where(ImageRow.id.in_(chunk)))
        for m in batch.moves:
            s.execute(
                update(ImageRow)
                .where(ImageRow.id == m.id)
                .values(path=m.path, root=m.root, size=m.size, mtime_ns=m.mtime_ns, indexed_at=now)
            )
        for t in batch.touches:
            s.execute(update(ImageRow).where(ImageRow.id == t.id).values(size=t.size, mtime_ns=t.mtime_ns))
        sources: dict[int, bytes] = {}
        source_hashes: dict[int, Optional[bytes]] = {}
        meta: dict[int, tuple] = {}
        copy_ids = sorted({r.copy_from for r in batch.inserts if r.copy_from is not None})
        for chunk in _chunks(copy_ids):
            q = (
                select(
                    VectorRow.image_id,
                    VectorRow.vector,
                    ImageRow.width,
                    ImageRow.height,
                    ImageRow.format,
                    ImageRow.taken_at,
                    ImageRow.camera_make,
                    ImageRow.camera_model,
                )
                .join(ImageRow, ImageRow.id == VectorRow.image_id)
                .where(VectorRow.image_id.in_(chunk))
            )
            for i, v, *m in s.execute(q):
                sources[i] = v
                meta[i] = tuple(m)
            q = select(CopyHashRow.image_id, CopyHashRow.pdq, CopyHashRow.quality).where(
                CopyHashRow.image_id.in_(chunk), CopyHashRow.version == COPY_VERSION
            )
            source_hashes.update((i, (h, qu)) for i, h, qu in s.execute(q))
        rows: list[tuple[int, dict, Optional[bytes]]] = []
        hashes: dict[int, tuple] = {}  # index in batch.inserts -> (copy_hashes blob, quality)
        for k, r in enumerate(batch.inserts):
            blob = None
            if r.status == STATUS_OK:
                if r.vector is not None:
                    v = np.asarray(r.vector, dtype="<f4").reshape(-1)
                    if v.size != dim:
                        raise ValueError(f"vector of {v.size} values for a store of dim {dim}")
                    blob = v.tobytes()
                elif r.copy_from is not None and r.copy_from in sources:
                    blob = sources[r.copy_from]  # same bytes: same pixels, same EXIF
                    (r.width, r.height, r.format, r.taken_at, r.camera_make, r.camera_model) = meta[
                        r.copy_from
                    ]
                else:
                    missing.append(k)
                    continue
                if r.copy_hash is not None:
                    hashes[k] = _copy_values(r.copy_hash)
                elif r.copy_from is not None and r.copy_from in source_hashes:
                    hashes[k] = source_hashes[r.copy_from]
            rows.append(
                (
                    k,
                    dict(
                        path=r.path,
                        root=r.root,
                        size=r.size,
                        mtime_ns=r.mtime_ns,
                        content_hash=r.content_hash,
                        width=r.width,
                        height=r.height,
                        format=r.format,
                        taken_at=r.taken_at,
                        camera_make=r.camera_make,
                        camera_model=r.camera_model,
                        status=r.status,
                        error=r.error,
                        indexed_at=now,
                    ),
                    blob,
                )
            )
        if rows:
            # One executemany per table (no RETURNING: SQLite would then insert row by row), then the
            # new ids looked up by path (UNIQUE). The ORM's unit of work would cost more than SQLite
            # itself at thousands of small rows.
            images, vectors = ImageRow.__table__, VectorRow.__table__
            s.execute(insert(images), [d for _, d, _ in rows])
            paths = [d["path"] for _, d, _ in rows]
            id_of: dict[str, int] = {}
            for chunk in _chunks(paths):
                id_of.update(
                    (p, i)
                    for i, p in s.execute(select(ImageRow.id, ImageRow.path).where(ImageRow.path.in_(chunk)))
                )
            vec_rows, hash_rows = [], []
            for k, d, blob in rows:
                image_id = id_of[d["path"]]
                new_ids[k] = image_id
                if blob is not None:
                    vec_rows.append({C_VEC_ID: image_id, C_VEC: blob})
                    added_ids.append(image_id)
                    added_vecs.append(blob)
                if k in hashes:
                    pdq, quality = hashes[k]
                    hash_rows.append(
                        {
                            C_COPY_ID: image_id,
                            C_COPY_VERSION: COPY_VERSION,
                            C_COPY_PDQ: pdq,
                            C_COPY_QUALITY: quality,
                        }
                    )
            if vec_rows:
                s.execute(insert(vectors), vec_rows)
            if hash_rows:
                s.execute(insert(CopyHashRow.__table__), hash_rows)
    return Applied(
        added_ids=np.asarray(added_ids, dtype=np.int64),
        added_vectors=vectors_from_blobs(added_vecs, dim),
        removed_ids=np.asarray(removed, dtype=np.int64),
        new_ids=new_ids,
        copies_missing=missing,
    )


def copy_hash_blob(hashes: np.ndarray) -> bytes:
    """The ``copy_hashes.pdq`` bytes of a (COPY_ROWS, 32) uint8 array; a wrong shape is a ValueError."""
    a = np.ascontiguousarray(hashes, dtype=np.uint8)
    if a.shape != (COPY_ROWS, COPY_NBYTES):
        raise ValueError(f"copy hashes must be ({COPY_ROWS}, {COPY_NBYTES}) uint8, got {a.shape}")
    return a.tobytes()


def _copy_values(h: Optional[CopyHash]) -> tuple[Optional[bytes], Optional[int]]:
    """(``pdq`` blob, ``quality``) of a :class:`CopyHash`; (None, None) for an unhashable file."""
    if h is None:
        return None, None
    rows, quality = h
    return copy_hash_blob(rows), int(quality)


def write_copy_hashes(store: Store, items: Sequence[tuple[int, Optional[CopyHash]]]) -> int:
    """Store ``(image_id, (hashes, quality) or None)`` in one transaction (None: the file could not be
    hashed, recorded so that it is not tried again); rows deleted meanwhile are skipped. Returns rows
    written."""
    if not items:
        return 0
    blobs = {int(i): _copy_values(h) for i, h in items}
    with store.session() as s, s.begin():
        live: set[int] = set()
        for chunk in _chunks(sorted(blobs)):
            live.update(r[0] for r in s.execute(select(ImageRow.id).where(ImageRow.id.in_(chunk))))
        rows = [
            {C_COPY_ID: i, C_COPY_VERSION: COPY_VERSION, C_COPY_PDQ: b, C_COPY_QUALITY: q}
            for i, (b, q) in blobs.items()
            if i in live
        ]
        if rows:
            for chunk in _chunks([r[C_COPY_ID] for r in rows]):
                s.execute(delete(CopyHashRow).where(CopyHashRow.image_id.in_(chunk)))
            s.execute(insert(CopyHashRow.__table__), rows)
    return len(rows)


def missing_copy_hashes(store: Store) -> list[tuple[int, str, Optional[str]]]:
    """``(id, path, content_hash)`` of every ``ok`` row without copy hashes of the current version,
    by id: what the indexer's backfill pass hashes."""
    with store.session() as s:
        q = (
            select(ImageRow.id, ImageRow.path, ImageRow.content_hash)
            .outerjoin(
                CopyHashRow,
                (CopyHashRow.image_id == ImageRow.id) & (CopyHashRow.version == COPY_VERSION),
            )
            .where(ImageRow.status == STATUS_OK, CopyHashRow.image_id.is_(None))
            .order_by(ImageRow.id)
        )
        return [(int(i), p, h) for i, p, h in s.execute(q)]

"""The embedding store of ``pixdex dataset dedup``: every image and caption vector computed, kept for reuse.

A folder (``OUT/store`` by default, or ``--store``) holding one SQLite database, :data:`DB_FILE` (WAL,
through the same engine as the pixdex store, :func:`pixdex.storage.store.make_engine`), with named
migrations run by :func:`pixdex.storage.migrations.apply_migrations`. Every name of its schema is here.

- ``images``: one row per image content, keyed by ``content_hash`` (blake2b-128 of the encoded bytes,
  :func:`pixdex.images.content_hash`): its vector (float32 little-endian, L2-normalised), or the reason
  the bytes cannot be decoded (``error``; the same bytes fail the same way, so this is not retried).
- ``captions``: one row per exact caption text, keyed by ``text_hash`` (blake2b-128 of its UTF-8 bytes,
  :func:`caption_hash`; not normalised: the encoder sees the text as written), with its vector.
- ``copy_hashes``: the copy tier's perceptual hashes of an image content (migration ``d002``), keyed by
  ``content_hash`` like ``images``: ``perceptual.COPY_ROWS`` x 32 bytes (8 dihedral PDQ hashes, then the
  crop windows; the layout of the pixdex store's ``copy_hashes``) of ``version``
  ``perceptual.COPY_VERSION``, or NULL when hashing that decoded image failed (a marker, not retried);
  ``quality``: PDQ's quality of the image (migration ``d003``; the copy tier leaves out images under
  ``perceptual.MIN_QUALITY``).
  Written in the same transaction as the image's vector; an image stored before this table (or of an
  older version) gets its row on the next run, decoded but not re-encoded. Model-independent.
- ``meta``: the model identity the vectors belong to (``pixdex.encoders.encoder.Encoder.identity``).
  A store holds one embedding space: opening it for another model is a one-line error.

Vectors are committed in batches as they are computed, each batch in one transaction, so a run killed at
any point keeps every committed batch and the next run computes only what is missing. Rows are never
updated; a vector of a hash never changes (a ``copy_hashes`` row is replaced only by a newer version).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from sqlalchemy import text
from sqlalchemy.engine import Connection

from pixdex.dedup.perceptual import COPY_NBYTES, COPY_ROWS, COPY_VERSION, CopyHash
from pixdex.errors import PixdexError
from pixdex.images import content_hash
from pixdex.storage import migrations
from pixdex.storage.contract import SQL_CHUNK, same_model

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------- names (the one place)

DB_FILE = "embeddings.db"
T_IMAGES = "images"
T_CAPTIONS = "captions"
C_HASH = "content_hash"  # images: blake2b-128 hex of the bytes
C_TEXT_HASH = "text_hash"  # captions: blake2b-128 hex of the UTF-8 text
C_VECTOR = "vector"  # float32 little-endian blob; NULL for an image that cannot be decoded
C_ERROR = "error"  # why the image cannot be decoded (one line), else NULL
C_ADDED_AT = "added_at"
T_META = "meta"
C_META_KEY = "key"
C_META_VALUE = "value"
META_MODEL = "model"
T_COPY = "copy_hashes"
C_COPY_VERSION = "version"  # perceptual.COPY_VERSION of the hashes
C_COPY_PDQ = "pdq"  # COPY_ROWS x 32 bytes; NULL: hashing failed (not retried)
C_COPY_QUALITY = "quality"  # PDQ's quality 0-100 of the image (NULL in rows of an older version)

MIGRATIONS: list[tuple[str, migrations.Migration]] = []


def _migration(fn):
    return migrations.migration(fn, MIGRATIONS)


@_migration
def d001_create_images_captions_meta(conn: Connection) -> None:
    conn.execute(
        text(
            f"CREATE TABLE {T_IMAGES} ({C_HASH} VARCHAR(64) NOT NULL PRIMARY KEY, {C_VECTOR} BLOB, "
            f"{C_ERROR} TEXT, {C_ADDED_AT} FLOAT NOT NULL)"
        )
    )
    conn.execute(
        text(
            f"CREATE TABLE {T_CAPTIONS} ({C_TEXT_HASH} VARCHAR(64) NOT NULL PRIMARY KEY, "
            f"{C_VECTOR} BLOB NOT NULL, {C_ADDED_AT} FLOAT NOT NULL)"
        )
    )
    conn.execute(
        text(
            f"CREATE TABLE {T_META} ({C_META_KEY} VARCHAR(64) NOT NULL PRIMARY KEY, "
            f"{C_META_VALUE} TEXT NOT NULL)"
        )
    )


@_migration
def d002_create_copy_hashes(conn: Connection) -> None:
    conn.execute(
        text(
            f"CREATE TABLE {T_COPY} ({C_HASH} VARCHAR(64) NOT NULL PRIMARY KEY, "
            f"{C_COPY_VERSION} INTEGER NOT NULL, {C_COPY_PDQ} BLOB, {C_ADDED_AT} FLOAT NOT NULL)"
        )
    )


@_migration
def d003_copy_quality(conn: Connection) -> None:
    # Old rows keep NULL and an older version: the next run recomputes them (decoded, not re-encoded).
    conn.execute(text(f"ALTER TABLE {T_COPY} ADD COLUMN {C_COPY_QUALITY} INTEGER"))


def caption_hash(caption: str) -> str:
    """The key of a caption's vector: the hash of its exact text."""
    return content_hash(caption.encode("utf-8", "surrogatepass"))


def _blob(v: np.ndarray) -> bytes:
    return np.ascontiguousarray(v, dtype="<f4").tobytes()


def _copy_blob(p: np.ndarray) -> bytes:
    p = np.ascontiguousarray(p, dtype=np.uint8)
    if p.shape != (COPY_ROWS, COPY_NBYTES):
        raise ValueError(f"copy hashes must be ({COPY_ROWS}, {COPY_NBYTES}) uint8, got {p.shape}")
    return p.tobytes()


class EmbeddingStore:
    """One embedding store folder; :meth:`open` it, :meth:`close` when done (or use ``with``)."""

    def __init__(self, folder: Path, engine):
        self.dir = folder
        self.engine = engine

    @classmethod
    def open(cls, folder) -> EmbeddingStore:
        from pixdex.storage.store import make_engine, make_store_folder

        folder = make_store_folder(folder, "embedding store")
        engine = make_engine(folder / DB_FILE, readonly=False)
        try:
            migrations.apply_migrations(engine, MIGRATIONS)
        except PixdexError:
            engine.dispose()
            raise
        except Exception as e:  # sqlalchemy wraps sqlite3's errors: a corrupt or foreign file
            engine.dispose()
            raise PixdexError(
                f"cannot open the embedding store {folder / DB_FILE}: {getattr(e, 'orig', e)}"
            ) from e
        return cls(folder, engine)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ model identity

    @property
    def identity(self) -> dict | None:
        with self.engine.connect() as c:
            row = c.execute(
                text(f"SELECT {C_META_VALUE} FROM {T_META} WHERE {C_META_KEY} = :k"), {"k": META_MODEL}
            ).first()
        return json.loads(row[0]) if row else None

    def bind(self, identity: dict) -> bool:
        """Bind a new store to ``identity``, or check it against the bound one; True when newly bound."""
        current = self.identity
        if current is not None:
            if not same_model(current, identity):
                raise PixdexError(
                    f"the embedding store {self.dir} holds vectors of model {current.get('model')!r} "
                    f"(dim {current.get('dim')}), not of {identity.get('model')!r} (dim {identity.get('dim')}): "
                    "give that --model, or another --store / --out"
                )
            return False
        with self.engine.begin() as c:
            c.execute(
                text(f"INSERT OR REPLACE INTO {T_META} ({C_META_KEY}, {C_META_VALUE}) VALUES (:k, :v)"),
                {"k": META_MODEL, "v": json.dumps(identity, sort_keys=True)},
            )
        return True

    # ------------------------------------------------------------------ reads

    def known_images(self) -> set[str]:
        """Hashes of every image with a vector or a recorded decode error."""
        with self.engine.connect() as c:
            return {r[0] for r in c.execute(text(f"SELECT {C_HASH} FROM {T_IMAGES}"))}

    def settled_images(self) -> set[str]:
        """Hashes of every image that needs no decoding: a decode error, or current copy hashes (or
        their failure marker). A stored image outside this set is decoded for its copy hashes only."""
        with self.engine.connect() as c:
            rows = c.execute(
                text(
                    f"SELECT {C_HASH} FROM {T_IMAGES} WHERE {C_VECTOR} IS NULL UNION "
                    f"SELECT {C_HASH} FROM {T_COPY} WHERE {C_COPY_VERSION} = :v"
                ),
                {"v": COPY_VERSION},
            )
            return {r[0] for r in rows}

    def copy_hashes(self, hashes: Sequence[str]) -> dict[str, CopyHash]:
        """``{hash: (rows (COPY_ROWS, 32) uint8, quality)}`` for those of ``hashes`` with current copy
        hashes."""
        got = self._fetch(T_COPY, C_HASH, f"{C_COPY_VERSION}, {C_COPY_PDQ}, {C_COPY_QUALITY}", hashes)
        return {
            h: CopyHash(np.frombuffer(blob, np.uint8).reshape(COPY_ROWS, COPY_NBYTES), int(quality or 0))
            for h, (version, blob, quality) in got.items()
            if blob is not None and version == COPY_VERSION
        }

    def known_captions(self) -> set[str]:
        with self.engine.connect() as c:
            return {r[0] for r in c.execute(text(f"SELECT {C_TEXT_HASH} FROM {T_CAPTIONS}"))}

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as c:
            return {
                "images": c.execute(text(f"SELECT count(*) FROM {T_IMAGES}")).scalar_one(),
                "captions": c.execute(text(f"SELECT count(*) FROM {T_CAPTIONS}")).scalar_one(),
                "copy_hashes": c.execute(text(f"SELECT count(*) FROM {T_COPY}")).scalar_one(),
            }

    def _fetch(self, table: str, key: str, cols: str, hashes: Sequence[str]) -> dict[str, tuple]:
        out: dict[str, tuple] = {}
        with self.engine.connect() as c:
            for s in range(0, len(hashes), SQL_CHUNK):
                part = list(hashes[s : s + SQL_CHUNK])
                names = ", ".join(f":h{k}" for k in range(len(part)))
                rows = c.execute(
                    text(f"SELECT {key}, {cols} FROM {table} WHERE {key} IN ({names})"),
                    {f"h{k}": h for k, h in enumerate(part)},
                )
                for r in rows:
                    out[r[0]] = tuple(r[1:])
        return out

    def image_vectors(self, hashes: Sequence[str], dim: int) -> tuple[np.ndarray, dict[int, str]]:
        """``(vectors, errors)`` for ``hashes`` in order: an ``(n, dim)`` array (zero rows for images that
        cannot be decoded) and ``{position: reason}`` for those. Every hash must be in the store."""
        got = self._fetch(T_IMAGES, C_HASH, f"{C_VECTOR}, {C_ERROR}", hashes)
        vecs = np.zeros((len(hashes), dim), np.float32)
        errors: dict[int, str] = {}
        for k, h in enumerate(hashes):
            blob, error = got[h]
            if blob is None:
                errors[k] = error or "cannot be decoded"
            else:
                vecs[k] = np.frombuffer(blob, "<f4")
        return vecs, errors

    def caption_vectors(self, hashes: Sequence[str], dim: int) -> np.ndarray:
        got = self._fetch(T_CAPTIONS, C_TEXT_HASH, C_VECTOR, hashes)
        vecs = np.zeros((len(hashes), dim), np.float32)
        for k, h in enumerate(hashes):
            vecs[k] = np.frombuffer(got[h][0], "<f4")
        return vecs

    # ------------------------------------------------------------------ writes

    def add(
        self,
        images: Iterable[tuple[str, np.ndarray | None, str | None]] = (),
        captions: Iterable[tuple[str, np.ndarray]] = (),
        copies: Iterable[tuple[str, CopyHash | None]] = (),
    ) -> None:
        """Add image rows ``(hash, vector or None, error or None)``, caption rows ``(hash, vector)`` and
        copy-hash rows ``(hash, (rows (COPY_ROWS, 32) uint8, quality) or None)`` in one transaction (image and caption
        rows already present are left as they are; copy rows replace an older version's)."""
        now = time.time()
        img = [{"h": h, "v": None if v is None else _blob(v), "e": e, "t": now} for h, v, e in images]
        cap = [{"h": h, "v": _blob(v), "t": now} for h, v in captions]
        cop = [
            {
                "h": h,
                "n": COPY_VERSION,
                "p": None if p is None else _copy_blob(p[0]),
                "q": None if p is None else int(p[1]),
                "t": now,
            }
            for h, p in copies
        ]
        if not img and not cap and not cop:
            return
        with self.engine.begin() as c:
            if cop:
                c.execute(
                    text(
                        f"INSERT OR REPLACE INTO {T_COPY} ({C_HASH}, {C_COPY_VERSION}, {C_COPY_PDQ}, "
                        f"{C_COPY_QUALITY}, {C_ADDED_AT}) VALUES (:h, :n, :p, :q, :t)"
                    ),
                    cop,
                )
            if img:
                c.execute(
                    text(
                        f"INSERT OR IGNORE INTO {T_IMAGES} ({C_HASH}, {C_VECTOR}, {C_ERROR}, {C_ADDED_AT}) "
                        "VALUES (:h, :v, :e, :t)"
                    ),
                    img,
                )
            if cap:
                c.execute(
                    text(
                        f"INSERT OR IGNORE INTO {T_CAPTIONS} ({C_TEXT_HASH}, {C_VECTOR}, {C_ADDED_AT}) "
                        "VALUES (:h, :v, :t)"
                    ),
                    cap,
                )

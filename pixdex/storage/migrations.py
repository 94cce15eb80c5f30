"""Named schema migrations, each applied once and recorded in the ``migrations`` table.

A migration is a function ``(connection) -> None`` registered in :data:`MIGRATIONS` with the
:func:`migration` decorator; its name is its identity, so never rename or edit an applied one: append a
new one. Each runs in its own transaction together with the row that records it (SQLite DDL is
transactional), so a crash leaves either the old schema or the new one, never half of it.

The DDL is written out here rather than derived from the ORM models, so that a later change to
``schema.py`` cannot silently change what an old migration did; the names come from
:mod:`pixdex.storage.contract` (stable: existing stores use them), and a test checks that the migrated
database matches the ORM and the contract.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from pixdex.errors import PixdexError
from pixdex.paths import real_path
from pixdex.storage import contract as c

log = logging.getLogger(__name__)

Migration = Callable[[Connection], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration, registry: list[tuple[str, Migration]] | None = None) -> Migration:
    """Register ``fn`` under its function name in ``registry`` (default :data:`MIGRATIONS`)."""
    registry = MIGRATIONS if registry is None else registry
    name = fn.__name__
    if any(n == name for n, _ in registry):
        raise ValueError(f"duplicate migration name {name}")
    registry.append((name, fn))
    return fn


@migration
def m001_create_images_vectors_meta(conn: Connection) -> None:
    conn.execute(
        text(
            f"""
        CREATE TABLE {c.T_IMAGES} (
            {c.C_ID} INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
            {c.C_PATH} TEXT NOT NULL UNIQUE,
            {c.C_ROOT} TEXT NOT NULL,
            {c.C_SIZE} INTEGER NOT NULL,
            {c.C_MTIME_NS} INTEGER NOT NULL,
            {c.C_CONTENT_HASH} VARCHAR(64),
            {c.C_WIDTH} INTEGER,
            {c.C_HEIGHT} INTEGER,
            {c.C_FORMAT} VARCHAR(16),
            {c.C_TAKEN} DATETIME,
            {c.C_CAMERA_MAKE} TEXT,
            {c.C_CAMERA_MODEL} TEXT,
            {c.C_STATUS} VARCHAR(16) NOT NULL,
            {c.C_ERROR} TEXT,
            {c.C_INDEXED_AT} FLOAT NOT NULL
        )
        """
        )
    )
    conn.execute(
        text(
            f"CREATE TABLE {c.T_VECTORS} ({c.C_VEC_ID} INTEGER NOT NULL PRIMARY KEY "
            f"REFERENCES {c.T_IMAGES} ({c.C_ID}) ON DELETE CASCADE, {c.C_VEC} BLOB NOT NULL)"
        )
    )
    conn.execute(
        text(
            f"CREATE TABLE {c.T_META} ({c.C_META_KEY} VARCHAR(64) NOT NULL PRIMARY KEY, "
            f"{c.C_META_VALUE} TEXT NOT NULL)"
        )
    )


@migration
def m002_index_hash_and_root(conn: Connection) -> None:
    # content_hash: moved/renamed/copied files find their vector; root: per-root counts and deletions.
    conn.execute(text(f"CREATE INDEX {c.IX_CONTENT_HASH} ON {c.T_IMAGES} ({c.C_CONTENT_HASH})"))
    conn.execute(text(f"CREATE INDEX {c.IX_ROOT} ON {c.T_IMAGES} ({c.C_ROOT})"))


@migration
def m003_copy_hashes(conn: Connection) -> None:
    # Perceptual hashes for dedup's copy tier; existing rows get theirs from the indexer's backfill pass.
    conn.execute(
        text(
            f"CREATE TABLE {c.T_COPY_HASHES} ({c.C_COPY_ID} INTEGER NOT NULL PRIMARY KEY "
            f"REFERENCES {c.T_IMAGES} ({c.C_ID}) ON DELETE CASCADE, "
            f"{c.C_COPY_VERSION} INTEGER NOT NULL, {c.C_COPY_PDQ} BLOB)"
        )
    )


@migration
def m004_tags(conn: Connection) -> None:
    # Zero-shot tags (pixdex tag); rows go with their image (ON DELETE CASCADE; the writer enables
    # foreign keys). WITHOUT ROWID: the (image_id, label) key is the table (written in image order);
    # the label index serves `search --tag` and `pixdex tags`.
    conn.execute(
        text(
            f"CREATE TABLE {c.T_TAGS} ({c.C_TAG_ID} INTEGER NOT NULL "
            f"REFERENCES {c.T_IMAGES} ({c.C_ID}) ON DELETE CASCADE, "
            f"{c.C_TAG_LABEL} TEXT NOT NULL COLLATE NOCASE, {c.C_TAG_PROB} FLOAT NOT NULL, "
            f"{c.C_TAG_SET} VARCHAR(32) NOT NULL, PRIMARY KEY ({c.C_TAG_ID}, {c.C_TAG_LABEL})) WITHOUT ROWID"
        )
    )
    conn.execute(text(f"CREATE INDEX {c.IX_TAGS_LABEL} ON {c.T_TAGS} ({c.C_TAG_LABEL}, {c.C_TAG_PROB})"))


@migration
def m005_copy_quality(conn: Connection) -> None:
    # PDQ's quality next to the hashes (the copy tier leaves out images under perceptual.MIN_QUALITY).
    # Old rows keep NULL and an older version: the indexer's backfill pass recomputes them.
    conn.execute(text(f"ALTER TABLE {c.T_COPY_HASHES} ADD COLUMN {c.C_COPY_QUALITY} INTEGER"))


@migration
def m006_real_paths(conn: Connection) -> None:
    # Roots and files are named by their real path (pixdex.paths.real_path) since this version. A store
    # that indexed one folder through two paths (a symbolic link, another case on a case-insensitive
    # disk) holds each photo twice: keep one row per real file (an ok row first, then the one already
    # at the real path, then the oldest), delete the others with their vectors, copy hashes and tags in
    # this migration's transaction, and rename the kept rows. Store.open_writer then brings the FAISS
    # file in line (the deleted ids leave it), as after any delete.
    rows = conn.execute(
        text(f"SELECT {c.C_ID}, {c.C_PATH}, {c.C_ROOT}, {c.C_STATUS} FROM {c.T_IMAGES}")
    ).all()
    listings: dict = {}
    real_roots: dict[str, str] = {}
    groups: dict[str, list] = {}
    for row in rows:
        groups.setdefault(real_path(row[1], follow_last=False, listings=listings), []).append(row)
    drop: list[int] = []
    renames: list[dict] = []
    for key, members in groups.items():
        members.sort(key=lambda m: (m[3] != c.STATUS_OK, m[1] != key, m[0]))
        keep_id, path, root, _ = members[0]
        drop.extend(m[0] for m in members[1:])
        if root not in real_roots:
            real_roots[root] = real_path(root, listings=listings)
        if path != key or root != real_roots[root]:
            renames.append({"i": keep_id, "p": key, "r": real_roots[root]})
    for s in range(0, len(drop), c.SQL_CHUNK):
        chunk = drop[s : s + c.SQL_CHUNK]
        marks = ", ".join(f":i{k}" for k in range(len(chunk)))
        params = {f"i{k}": v for k, v in enumerate(chunk)}
        for table, col in (
            (c.T_TAGS, c.C_TAG_ID),
            (c.T_COPY_HASHES, c.C_COPY_ID),
            (c.T_VECTORS, c.C_VEC_ID),
            (c.T_IMAGES, c.C_ID),
        ):
            conn.execute(text(f"DELETE FROM {table} WHERE {col} IN ({marks})"), params)
    if renames:
        conn.execute(
            text(f"UPDATE {c.T_IMAGES} SET {c.C_PATH} = :p, {c.C_ROOT} = :r WHERE {c.C_ID} = :i"), renames
        )
    if drop or renames:
        log.warning(
            "named the store's files by their real paths: %d duplicate rows removed, %d rows renamed",
            len(drop),
            len(renames),
        )


_M = c.T_MIGRATIONS
_M_NAME, _M_AT = c.C_MIGRATION_NAME, c.C_MIGRATION_APPLIED_AT


def _applied(conn: Connection, create: bool = True) -> list[str]:
    if create:
        conn.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {_M} ({_M_NAME} VARCHAR(128) NOT NULL PRIMARY KEY, "
                f"{_M_AT} FLOAT NOT NULL)"
            )
        )
    elif not conn.execute(
        text("SELECT 1 FROM sqlite_master WHERE type='table' AND name=:t"), {"t": _M}
    ).first():
        return []
    return [r[0] for r in conn.execute(text(f"SELECT {_M_NAME} FROM {_M} ORDER BY {_M_AT}, {_M_NAME}"))]


def pending(engine: Engine, registry: list[tuple[str, Migration]] | None = None) -> list[str]:
    registry = MIGRATIONS if registry is None else registry
    with engine.connect() as conn:
        done = set(_applied(conn, create=False))
    return [n for n, _ in registry if n not in done]


def apply_migrations(engine: Engine, registry: list[tuple[str, Migration]] | None = None) -> list[str]:
    """Apply every migration of ``registry`` (default: the store's :data:`MIGRATIONS`) not yet recorded,
    in order; return the names applied now. Other databases (the dataset embedding store) pass their
    own list and share this runner and its ``migrations`` table.

    Raises PixdexError when the database records migrations this version does not know (a store
    written by a newer pixdex), rather than guessing at its schema.
    """
    registry = MIGRATIONS if registry is None else registry
    applied_now: list[str] = []
    with engine.connect() as conn:
        with conn.begin():
            done = set(_applied(conn))
        unknown = done - {n for n, _ in registry}
        if unknown:
            raise PixdexError(
                f"this store was written by a newer pixdex (unknown schema migrations: {', '.join(sorted(unknown))})"
            )
        for name, fn in registry:
            if name in done:
                continue
            with conn.begin():
                # Re-check inside the transaction: another process may have applied it meanwhile.
                already = conn.execute(text(f"SELECT 1 FROM {_M} WHERE {_M_NAME} = :n"), {"n": name}).first()
                if already:
                    continue
                log.info("applying schema migration %s", name)
                fn(conn)
                conn.execute(
                    text(f"INSERT INTO {_M} ({_M_NAME}, {_M_AT}) VALUES (:n, :t)"),
                    {"n": name, "t": time.time()},
                )
            applied_now.append(name)
    return applied_now


def schema_version(engine: Engine) -> int:
    """Number of applied migrations (works on a read-only connection)."""
    with engine.connect() as conn:
        return len(_applied(conn, create=False))

"""Named schema migrations, each applied once and recorded in the ``migrations`` table.

A migration is a function ``(connection) -> None`` registered in :data:`MIGRATIONS` with the
:func:`migration` decorator; its name is its identity, so never rename or edit an applied one: append a
new one. Each runs in its own transaction together with the row that records it (SQLite DDL is
transactional), so a crash leaves either the old schema or the new one, never half of it.

The DDL is written out here rather than derived from the ORM models, so that a later change to
``schema.py`` cannot silently change what an old migration did; a test checks that the migrated
database matches the ORM.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from pixdex.errors import PixdexError

log = logging.getLogger(__name__)

Migration = Callable[[Connection], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    name = fn.__name__
    if any(n == name for n, _ in MIGRATIONS):
        raise ValueError(f"duplicate migration name {name}")
    MIGRATIONS.append((name, fn))
    return fn


@migration
def m001_create_images_vectors_meta(conn: Connection) -> None:
    conn.execute(
        text(
            """
        CREATE TABLE images (
            id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
            path TEXT NOT NULL UNIQUE,
            root TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            content_hash VARCHAR(64),
            width INTEGER,
            height INTEGER,
            format VARCHAR(16),
            taken_at DATETIME,
            camera_make TEXT,
            camera_model TEXT,
            status VARCHAR(16) NOT NULL,
            error TEXT,
            indexed_at FLOAT NOT NULL
        )
        """
        )
    )
    conn.execute(
        text(
            "CREATE TABLE vectors (image_id INTEGER NOT NULL PRIMARY KEY "
            "REFERENCES images (id) ON DELETE CASCADE, vector BLOB NOT NULL)"
        )
    )
    conn.execute(text("CREATE TABLE meta (key VARCHAR(64) NOT NULL PRIMARY KEY, value TEXT NOT NULL)"))


@migration
def m002_index_hash_and_root(conn: Connection) -> None:
    # content_hash: moved/renamed/copied files find their vector; root: per-root counts and deletions.
    conn.execute(text("CREATE INDEX ix_images_content_hash ON images (content_hash)"))
    conn.execute(text("CREATE INDEX ix_images_root ON images (root)"))


def _applied(conn: Connection, create: bool = True) -> list[str]:
    if create:
        conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS migrations (name VARCHAR(128) NOT NULL PRIMARY KEY, applied_at FLOAT NOT NULL)"
            )
        )
    elif not conn.execute(
        text("SELECT 1 FROM sqlite_master WHERE type='table' AND name='migrations'")
    ).first():
        return []
    return [r[0] for r in conn.execute(text("SELECT name FROM migrations ORDER BY applied_at, name"))]


def pending(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        done = set(_applied(conn, create=False))
    return [n for n, _ in MIGRATIONS if n not in done]


def apply_migrations(engine: Engine) -> list[str]:
    """Apply every migration not yet recorded, in order; return the names applied now.

    Raises PixdexError when the database records migrations this version does not know (a store
    written by a newer pixdex), rather than guessing at its schema.
    """
    applied_now: list[str] = []
    with engine.connect() as conn:
        with conn.begin():
            done = set(_applied(conn))
        unknown = done - {n for n, _ in MIGRATIONS}
        if unknown:
            raise PixdexError(
                f"this store was written by a newer pixdex (unknown schema migrations: {', '.join(sorted(unknown))})"
            )
        for name, fn in MIGRATIONS:
            if name in done:
                continue
            with conn.begin():
                # Re-check inside the transaction: another process may have applied it meanwhile.
                already = conn.execute(text("SELECT 1 FROM migrations WHERE name = :n"), {"n": name}).first()
                if already:
                    continue
                log.info("applying schema migration %s", name)
                fn(conn)
                conn.execute(
                    text("INSERT INTO migrations (name, applied_at) VALUES (:n, :t)"),
                    {"n": name, "t": time.time()},
                )
            applied_now.append(name)
    return applied_now


def schema_version(engine: Engine) -> int:
    """Number of applied migrations (works on a read-only connection)."""
    with engine.connect() as conn:
        return len(_applied(conn, create=False))

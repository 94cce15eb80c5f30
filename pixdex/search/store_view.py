"""A read-only view of a store for search, on stdlib sqlite3 (no SQLAlchemy: it costs ~0.5 s to import).

It reads the store under the names of :mod:`pixdex.storage.contract` (plain constants, no SQLAlchemy):
``pixdex.db`` (rows and float32 vector blobs), ``store.json`` (model identity) and the FAISS file. The database is opened read-only
(``mode=ro``), so searching never takes a write lock and works while `pixdex index` runs.
"""

from __future__ import annotations

import json
import logging
import shlex
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from pixdex.errors import PixdexError
from pixdex.paths import pixdex_command
from pixdex.search.dates import date_condition, date_fields, to_datetime
from pixdex.search.filters import Filters
from pixdex.storage.contract import (
    C_CONTENT_HASH,
    C_HEIGHT,
    C_ID,
    C_MTIME_NS,
    C_PATH,
    C_SIZE,
    C_STATUS,
    C_TAKEN,
    C_VEC,
    C_VEC_ID,
    C_WIDTH,
    DB_FILE,
    FAISS_FILE,
    SIDECAR_FILE,
    SQL_CHUNK,
    STATUS_OK,
    T_IMAGES,
    T_TAGS,
    T_VECTORS,
    db_problem,
    is_corrupt_db_error,
)
from pixdex.storage.contract import C_TAG_ID as _TAG_ID
from pixdex.storage.contract import C_TAG_LABEL as _TAG_LABEL
from pixdex.storage.contract import C_TAG_PROB as _TAG_PROB
from pixdex.storage.readonly import connect_readonly

log = logging.getLogger(__name__)

LIVE_SQL = f"{T_IMAGES}.{C_STATUS} = '{STATUS_OK}'"
_VEC_JOIN = f"{T_VECTORS} JOIN {T_IMAGES} ON {T_IMAGES}.{C_ID} = {T_VECTORS}.{C_VEC_ID}"


@dataclass(frozen=True)
class Row:
    id: int
    path: str
    width: Optional[int]
    height: Optional[int]
    taken_at: Optional[str]
    size: Optional[int] = None  # bytes and content hash recorded at indexing (serve re-checks them)
    content_hash: Optional[str] = None
    tags: tuple[tuple[str, float], ...] = ()  # (label, prob) from `pixdex tag`, most probable first
    mtime_ns: Optional[int] = None  # the file's modification time at indexing

    def to_dict(self) -> dict:
        """The JSON result: ``taken_at`` is the EXIF date (or null); ``date`` / ``date_source`` the date
        filters use (EXIF, else the file's mtime; :mod:`pixdex.search.dates`)."""
        return {
            "path": self.path,
            "id": self.id,
            "width": self.width,
            "height": self.height,
            "taken_at": self.taken_at,
            **date_fields(self.taken_at, self.mtime_ns),
            "tags": [{"label": label, "prob": round(p, 4)} for label, p in self.tags],
        }


def _taken_str(v) -> Optional[str]:
    d = to_datetime(v)
    return d.isoformat() if d is not None else None


def _db_error(store_dir: Path, e: sqlite3.Error) -> str:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if is_corrupt_db_error(msg) or "no such table" in msg:
        return db_problem(store_dir, msg)
    return f"cannot read the store database {store_dir / DB_FILE}: {msg}"


def _chunks(ids: np.ndarray) -> Iterable[list[int]]:
    ids = [int(i) for i in ids]
    for s in range(0, len(ids), SQL_CHUNK):
        yield ids[s : s + SQL_CHUNK]


class StoreView:
    def __init__(self, store_dir: Path):
        self.dir = Path(store_dir)
        db = self.dir / DB_FILE
        if not db.is_file():
            if not self.dir.exists():
                raise PixdexError(
                    f"no store at {self.dir} (index some photos first: "
                    f"{pixdex_command('index', 'FOLDER', store_dir=self.dir)})"
                )
            from pixdex.exchange.layout import EXPORT_META

            if (self.dir / EXPORT_META).is_file():  # `pixdex export`'s output: it is read back by import
                raise PixdexError(
                    f"{self.dir} is an export of a store, not a store; read it into one with: "
                    f"pixdex import {shlex.quote(str(self.dir))} --store NEW_STORE"
                )
            raise PixdexError(
                f"{self.dir} is not a pixdex store (no {DB_FILE}); run: "
                f"{pixdex_command('index', 'FOLDER', store_dir=self.dir)}"
            )
        try:
            self.sidecar = json.loads((self.dir / SIDECAR_FILE).read_text())
        except FileNotFoundError:
            self.sidecar = {}
        except (OSError, ValueError) as e:
            raise PixdexError(f"cannot read {self.dir / SIDECAR_FILE}: {e}") from e
        try:
            if db.stat().st_size == 0:
                raise PixdexError(db_problem(self.dir, "empty"))
            self.conn = connect_readonly(db)
            self.conn.execute("PRAGMA query_only = 1")
        except sqlite3.Error as e:
            raise PixdexError(_db_error(self.dir, e)) from e
        self._lock = threading.RLock()
        self._all: Optional[tuple[np.ndarray, np.ndarray]] = None
        self._dim: Optional[int] = None
        self._has_tags = False  # cached once true: `pixdex tag` may create the table while serving

    # ------------------------------------------------------------------ metadata

    @property
    def identity(self) -> dict:
        m = self.sidecar.get("model")
        return m if isinstance(m, dict) else {}

    def faiss_path(self) -> Path:
        f = self.sidecar.get("faiss")
        name = f.get("file") if isinstance(f, dict) else None
        return self.dir / (name or FAISS_FILE)

    def _q(self, sql: str, args=()) -> list:
        with self._lock:
            try:
                return self.conn.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise PixdexError(_db_error(self.dir, e)) from e

    def live_count(self) -> int:
        return int(self._q(f"SELECT COUNT(*) FROM {T_IMAGES} WHERE {LIVE_SQL}")[0][0])

    # ------------------------------------------------------------------ rows and vectors

    def rows(self, ids: Iterable[int]) -> dict[int, Row]:
        out: dict[int, Row] = {}
        for chunk in _chunks(np.asarray(list(ids), dtype=np.int64)):
            sql = (
                f"SELECT {C_ID}, {C_PATH}, {C_WIDTH}, {C_HEIGHT}, {C_TAKEN}, {C_SIZE}, {C_CONTENT_HASH}, "
                f"{C_MTIME_NS} FROM {T_IMAGES} WHERE {LIVE_SQL} AND {C_ID} IN ({','.join('?' * len(chunk))})"
            )
            tags = self.tags_of(chunk)
            for i, p, w, h, t, size, chash, mtime in self._q(sql, chunk):
                tagged = tuple(tags.get(int(i), ()))
                out[int(i)] = Row(int(i), p, w, h, _taken_str(t), size, chash, tagged, mtime)
        return out

    # ------------------------------------------------------------------ tags (pixdex tag)

    def has_tags(self) -> bool:
        """Whether the store has tags: a tags table (stores made before tags were added have none) with
        at least one row (`pixdex tag` has run)."""
        if not self._has_tags:
            found = self._q("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (T_TAGS,))
            self._has_tags = bool(found) and bool(self._q(f"SELECT 1 FROM {T_TAGS} LIMIT 1"))
        return self._has_tags

    def _need_tags(self) -> None:
        if not self.has_tags():
            raise PixdexError(
                f"the store at {self.dir} has no tags yet; run: {pixdex_command('tag', store_dir=self.dir)}"
            )

    def tags_of(self, ids: list[int]) -> dict[int, list[tuple[str, float]]]:
        """``{id: [(label, prob), ...]}`` most probable first, for the given ids (one chunk)."""
        if not ids or not self.has_tags():
            return {}
        out: dict[int, list[tuple[str, float]]] = {}
        sql = (
            f"SELECT {_TAG_ID}, {_TAG_LABEL}, {_TAG_PROB} FROM {T_TAGS} "
            f"WHERE {_TAG_ID} IN ({','.join('?' * len(ids))}) ORDER BY {_TAG_ID}, {_TAG_PROB} DESC, {_TAG_LABEL}"
        )
        for i, label, p in self._q(sql, [int(i) for i in ids]):
            out.setdefault(int(i), []).append((label, float(p)))
        return out

    def tag_counts(self) -> list[tuple[str, int]]:
        """``[(label, live images tagged with it)]``, most frequent first."""
        if not self.has_tags():
            return []
        sql = (
            f"SELECT {T_TAGS}.{_TAG_LABEL}, COUNT(*) AS n FROM {T_TAGS} JOIN {T_IMAGES} "
            f"ON {T_IMAGES}.{C_ID} = {T_TAGS}.{_TAG_ID} WHERE {LIVE_SQL} "
            f"GROUP BY {T_TAGS}.{_TAG_LABEL} ORDER BY n DESC, {T_TAGS}.{_TAG_LABEL}"
        )
        return [(label, int(n)) for label, n in self._q(sql)]

    def tag_scores(self, ids: np.ndarray, tags: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, score)`` for images carrying every tag in ``tags``, ``ids`` among the given ones;
        the score is the lowest probability of those tags (the image's weakest requested tag)."""
        self._need_tags()
        marks = ",".join("?" * len(tags))
        sql = (
            f"SELECT {_TAG_ID}, MIN({_TAG_PROB}), COUNT(*) FROM {T_TAGS} WHERE {_TAG_LABEL} IN ({marks}) "
            f"GROUP BY {_TAG_ID}"
        )
        rows = [(i, p) for i, p, n in self._q(sql, list(tags)) if n == len(tags)]
        got = dict(rows)
        keep = [int(i) for i in ids if int(i) in got]
        return np.asarray(keep, dtype=np.int64), np.asarray([got[i] for i in keep], dtype=np.float64)

    def row(self, image_id: int) -> Optional[Row]:
        return self.rows([image_id]).get(int(image_id))

    def _decode(self, found: list[tuple[int, bytes]]) -> tuple[np.ndarray, np.ndarray]:
        if not found:
            return np.zeros(0, np.int64), np.zeros((0, self._dim or 0), np.float32)
        ids = np.fromiter((f[0] for f in found), dtype=np.int64, count=len(found))
        vecs = np.frombuffer(b"".join(f[1] for f in found), dtype=np.float32).reshape(len(found), -1)
        self._dim = vecs.shape[1]
        return ids, vecs

    def vectors(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the live rows among ``ids``, in the order given."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        got: dict[int, bytes] = {}
        for chunk in _chunks(ids):
            sql = (
                f"SELECT {C_VEC_ID}, {C_VEC} FROM {_VEC_JOIN} WHERE {LIVE_SQL} "
                f"AND {C_VEC_ID} IN ({','.join('?' * len(chunk))})"
            )
            got.update((int(i), v) for i, v in self._q(sql, chunk))
        return self._decode([(int(i), got[int(i)]) for i in ids if int(i) in got])

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every live vector (cached: used for exact search of stores without a FAISS file)."""
        if self._all is None:
            rows = self._q(
                f"SELECT {C_VEC_ID}, {C_VEC} FROM {_VEC_JOIN} WHERE {LIVE_SQL} ORDER BY {C_VEC_ID}"
            )
            self._all = self._decode([(int(i), v) for i, v in rows])
        return self._all

    def matching_ids(self, filters: Filters) -> np.ndarray:
        """Sorted ids of live rows that pass the path, date and tag filters.

        SQLite does the work: GLOB on the ASCII-lower-cased path, date bounds as
        :func:`pixdex.search.dates.date_condition` writes them (EXIF date, else mtime). Python re-checks
        only what SQL cannot decide exactly (character classes, non-ASCII patterns, time-of-day bounds).
        """
        sql = f"SELECT {C_ID}, {C_PATH}, {C_TAKEN}, {C_MTIME_NS} FROM {T_IMAGES} WHERE {LIVE_SQL}"
        args: list = []
        recheck = False
        g = filters.path_glob
        if g is not None:
            exact = "[" not in g and g.isascii()
            recheck |= not exact
            # character classes: no narrowing in SQL; non-ASCII letters: any one character
            sql_glob = "*" if "[" in g else "".join(c if c.isascii() else "?" for c in g)
            sql += f" AND lower(replace({C_PATH}, '\\', '/')) GLOB ?"
            args.append(sql_glob)
        for bound, op in ((filters.after, ">="), (filters.before, "<")):
            if bound is None:
                continue
            cond, cond_args, exact = date_condition(op, bound)
            sql += " AND " + cond
            args += cond_args
            recheck |= not exact
        if filters.tags:
            self._need_tags()
            for tag in filters.tags:  # the label column compares case-insensitively (NOCASE)
                sql += f" AND {C_ID} IN (SELECT {_TAG_ID} FROM {T_TAGS} WHERE {_TAG_LABEL} = ?)"
                args.append(tag)
        rows = self._q(sql + f" ORDER BY {C_ID}", args)
        if recheck:
            rows = [r for r in rows if filters.path_ok(r[1]) and filters.date_ok(r[2], r[3])]
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def close(self) -> None:
        with self._lock:
            self.conn.close()

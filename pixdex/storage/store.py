"""A store directory: ``pixdex.db`` (SQLite, WAL), ``index.faiss`` (derived), ``store.json`` (sidecar).

Two ways in:

- :meth:`Store.open_readonly` for readers (search, dedup, status): never writes, never locks, works
  while ``pixdex index`` runs (WAL).
- :meth:`Store.open_writer` for the indexer: creates the directory and the schema (named migrations),
  and holds an exclusive lock file (``index.lock``, ``fcntl.flock``) for the run, so a second indexer on
  the same store gets a clear error. The OS drops the lock when the process dies, even on ``kill -9``.

The vectors in SQLite (float32 blobs written in the same transaction as their rows) are the source of
truth; the FAISS file is derived and repaired from them (:mod:`pixdex.storage.faiss_index`).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Optional

import numpy as np
from sqlalchemy import create_engine, event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from pixdex.errors import PixdexError, StoreLocked
from pixdex.fsutil import atomic_write
from pixdex.paths import pixdex_command
from pixdex.storage import migrations
from pixdex.storage.contract import (
    DB_FILE,
    FAISS_FILE,
    IDENTITY_KEYS,
    LOCK_FILE,
    META_BOUND_AT,
    META_CHECKPOINT,
    META_MODEL,
    SIDECAR_FILE,
    SIDECAR_FORMAT,
    SQL_CHUNK,
    STATUS_OK,
    db_problem,
    is_corrupt_db_error,
    same_model,
)
from pixdex.storage.faiss_index import (
    VectorIndex,
    file_checksum,
    id_checksum,
    ivf_threshold,
    reconcile,
    sample_problem,
)
from pixdex.storage.readonly import connect_readonly
from pixdex.storage.schema import CopyHashRow, ImageRow, MetaRow, VectorRow

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- engine and lock


def make_engine(db: Path, readonly: bool) -> Engine:
    """An engine on ``db`` whose transactions are real SQLite transactions (DDL included).

    The writer's transactions start with ``BEGIN IMMEDIATE`` (it is the only writer: the lock file);
    readers open the file with ``mode=ro`` and never take a write lock.
    """
    db = Path(db)

    def connect():
        if readonly:
            conn = connect_readonly(db, timeout=30, isolation_level=None)
        else:
            conn = sqlite3.connect(str(db), timeout=30, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    engine = create_engine("sqlite://", creator=connect)

    @event.listens_for(engine, "begin")
    def _begin(conn):  # pysqlite would otherwise not start a transaction before DDL
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    return engine


class DamagedStore(PixdexError):
    """The store's database file is damaged (``pixdex index`` sets it aside and rebuilds it)."""


def set_aside_damaged_db(store_dir: Path) -> Path:
    """Rename a damaged ``pixdex.db`` (and its ``-wal``/``-shm``, which must not be replayed into a new
    database) to ``pixdex.db.damaged-TIMESTAMP``; nothing is deleted. Returns the new name."""
    store_dir = Path(store_dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    target = store_dir / f"{DB_FILE}.damaged-{stamp}"
    for suffix in ("", "-wal", "-shm"):
        src = store_dir / (DB_FILE + suffix)
        if src.exists():
            os.replace(src, store_dir / f"{DB_FILE}.damaged-{stamp}{suffix}")
    return target


class StoreLock:
    """An exclusive, non-blocking lock on ``STORE/index.lock`` held for an indexing run."""

    def __init__(self, store_dir: Path):
        self.path = Path(store_dir) / LOCK_FILE
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise PixdexError(f"cannot create the lock file {self.path}: {e.strerror}") from e
        try:
            _lock_fd(fd)
        except BlockingIOError as e:
            os.close(fd)
            raise StoreLocked(
                f"another pixdex index is already running on the store {self.path.parent}"
                " (wait for it to finish)"
            ) from e
        except OSError as e:
            os.close(fd)
            raise PixdexError(f"cannot lock {self.path}: {e.strerror}") from e
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            _unlock_fd(fd)
            os.close(fd)


def _lock_fd(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as e:
            raise BlockingIOError(str(e)) from e
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _unlock_fd(fd: int) -> None:
    try:
        import fcntl
    except ImportError:
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


def _chunks(seq: Sequence, n: int = SQL_CHUNK) -> Iterator[Sequence]:
    for s in range(0, len(seq), n):
        yield seq[s : s + n]


def vectors_from_blobs(blobs: list[bytes], dim: Optional[int] = None) -> np.ndarray:
    if not blobs:
        return np.zeros((0, dim or 0), np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), -1).astype(np.float32, copy=False)


# ---------------------------------------------------------------------- the store


def make_store_folder(folder, what: str = "store") -> Path:
    """Create ``folder`` (and parents) for a store; one-line PixdexError when it is a file or cannot be made."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise PixdexError(f"the {what} path {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PixdexError(f"cannot create the {what} folder {folder}: {e.strerror}") from e
    return folder


class Store:
    """One store directory. Use :meth:`open_readonly` or :meth:`open_writer`; close when done."""

    def __init__(self, store_dir: Path, engine: Engine, readonly: bool, lock: Optional[StoreLock] = None):
        self.dir = Path(store_dir)
        self.engine = engine
        self.readonly = readonly
        self._lock = lock
        self.Session = sessionmaker(engine, expire_on_commit=False)

    # ------------------------------------------------------------------ opening

    @classmethod
    def open_readonly(cls, store_dir: Path) -> Store:
        store_dir = Path(store_dir).expanduser()
        db = store_dir / DB_FILE
        if not db.is_file():
            raise PixdexError(
                f"no pixdex store at {store_dir} "
                f"(create one with: {pixdex_command('index', 'FOLDER', store_dir=store_dir)})"
            )
        if db.stat().st_size == 0:
            raise PixdexError(db_problem(store_dir, "empty"))
        engine = make_engine(db, readonly=True)
        try:
            with engine.connect() as c:
                c.exec_driver_sql("SELECT count(*) FROM sqlite_master").fetchall()
        except Exception as e:  # sqlalchemy wraps sqlite3 errors
            engine.dispose()
            msg = str(getattr(e, "orig", e))
            if is_corrupt_db_error(msg):
                raise DamagedStore(db_problem(store_dir, msg)) from e
            raise PixdexError(f"cannot open {db}: {msg}") from e
        store = cls(store_dir, engine, readonly=True)
        if migrations.pending(engine):
            store.close()
            raise PixdexError(
                f"the store at {store_dir} has an older schema; upgrade it by indexing once: "
                f"{pixdex_command('index', 'FOLDER', store_dir=store_dir)}"
            )
        return store

    @classmethod
    def open_writer(cls, store_dir: Path) -> Store:
        """Create (if needed), lock and migrate the store. Raises PixdexError when it cannot."""
        store_dir = make_store_folder(store_dir, "store")
        if not os.access(store_dir, os.W_OK | os.X_OK):
            raise PixdexError(f"the store folder {store_dir} is not writable")
        lock = StoreLock(store_dir)
        lock.acquire()
        engine = None
        try:
            engine = make_engine(store_dir / DB_FILE, readonly=False)
            applied = migrations.apply_migrations(engine)
        except PixdexError:
            lock.release()
            if engine is not None:
                engine.dispose()
            raise
        except Exception as e:  # a corrupt or foreign database file
            lock.release()
            if engine is not None:
                engine.dispose()
            msg = str(getattr(e, "orig", e))
            if is_corrupt_db_error(msg):
                raise DamagedStore(db_problem(store_dir, msg)) from e
            raise PixdexError(f"cannot open the store database {store_dir / DB_FILE}: {msg}") from e
        store = cls(store_dir, engine, readonly=False, lock=lock)
        if applied and store.faiss_path.exists():  # a migration may have removed rows (m006)
            index, counts = store.reconcile_faiss()
            if index is not None and (counts.get("added") or counts.get("removed") or counts.get("rebuilt")):
                store.save_faiss(index)
        return store

    def close(self) -> None:
        self.engine.dispose()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def session(self) -> Session:
        return self.Session()

    # ------------------------------------------------------------------ metadata and sidecar

    def get_meta(self, key: str, default=None):
        with self.session() as s:
            row = s.get(MetaRow, key)
            return json.loads(row.value) if row is not None else default

    def set_meta(self, session: Session, key: str, value) -> None:
        session.merge(MetaRow(key=key, value=json.dumps(value, sort_keys=True)))

    def read_sidecar(self) -> dict:
        try:
            d = json.loads((self.dir / SIDECAR_FILE).read_text(encoding="utf-8"))
            return d if isinstance(d, dict) else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("cannot read %s (%s); it will be rewritten", self.dir / SIDECAR_FILE, e)
            return {}

    def write_sidecar(self, faiss_info: Optional[dict] = None) -> dict:
        """Rewrite ``store.json`` from the database (model) and ``faiss_info`` (or the previous one)."""
        old = self.read_sidecar()
        d = {
            "format": SIDECAR_FORMAT,
            "model": self.identity,
            "checkpoint": self.get_meta(META_CHECKPOINT),
            "faiss": faiss_info
            if faiss_info is not None
            else old.get("faiss", {"file": FAISS_FILE, "type": None}),
            "schema_version": migrations.schema_version(self.engine),
            "updated_at": datetime.now().isoformat(timespec="seconds"),
        }
        atomic_write(self.dir / SIDECAR_FILE, json.dumps(d, indent=1, sort_keys=True, ensure_ascii=False))
        return d

    @property
    def identity(self) -> Optional[dict]:
        """The identity of the encoder the store is bound to (None for a new store)."""
        ident = self.get_meta(META_MODEL)
        if ident is None:
            ident = self.read_sidecar().get("model")
        return ident or None

    def bind_model(self, identity: dict, checkpoint: Optional[str] = None) -> bool:
        """Bind a new store to ``identity``; check an existing one. Returns True when newly bound."""
        current = self.identity
        if current is not None:
            if not same_model(current, identity):
                raise PixdexError(
                    f"the store at {self.dir} is bound to model {current.get('model')!r} "
                    f"(dim {current.get('dim')}, checkpoint {str(current.get('checkpoint_sha256'))[:12]}); "
                    f"it cannot be indexed with {identity.get('model')!r} "
                    f"(dim {identity.get('dim')}, checkpoint {str(identity.get('checkpoint_sha256'))[:12]}). "
                    "Use another --store."
                )
            if self.get_meta(META_MODEL) is None:  # a rebuilt database: store.json remembered the model
                self._write_binding(
                    current, checkpoint if checkpoint is not None else current.get("checkpoint")
                )
            return False
        self._write_binding(identity, checkpoint)
        return True

    def _write_binding(self, identity: dict, checkpoint: Optional[str]) -> None:
        ident = {k: identity.get(k) for k in IDENTITY_KEYS if k in identity}
        for k, v in identity.items():
            ident.setdefault(k, v)
        with self.session() as s, s.begin():
            self.set_meta(s, META_MODEL, ident)
            self.set_meta(s, META_CHECKPOINT, checkpoint)
            self.set_meta(s, META_BOUND_AT, time.time())
        self.write_sidecar()

    # ------------------------------------------------------------------ reads

    def count(self, status: Optional[str] = STATUS_OK) -> int:
        with self.session() as s:
            q = select(func.count()).select_from(ImageRow)
            if status is not None:
                q = q.where(ImageRow.status == status)
            return int(s.scalar(q))

    def counts_by_root(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        with self.session() as s:
            q = select(ImageRow.root, ImageRow.status, func.count()).group_by(ImageRow.root, ImageRow.status)
            for root, status, n in s.execute(q):
                out.setdefault(root, {})[status] = int(n)
        return out

    def failure_reasons(self, limit: int = 10) -> list[tuple[str, int]]:
        with self.session() as s:
            q = (
                select(ImageRow.error, func.count().label("n"))
                .where(ImageRow.status != STATUS_OK)
                .group_by(ImageRow.error)
                .order_by(func.count().desc())
                .limit(limit)
            )
            return [(e or "unknown", int(n)) for e, n in s.execute(q)]

    def live_ids(self) -> np.ndarray:
        """Sorted ids of every searchable row (status ok, with a vector): what FAISS must hold."""
        with self.session() as s:
            q = (
                select(ImageRow.id)
                .join(VectorRow, VectorRow.image_id == ImageRow.id)
                .where(ImageRow.status == STATUS_OK)
                .order_by(ImageRow.id)
            )
            return np.fromiter((r[0] for r in s.execute(q)), dtype=np.int64)

    def rows(self, ids: Iterable[int]) -> dict[int, ImageRow]:
        """Rows by id (any status), detached from the session; missing ids are left out."""
        ids = [int(i) for i in ids]
        out: dict[int, ImageRow] = {}
        with self.session() as s:
            for chunk in _chunks(ids):
                for r in s.scalars(select(ImageRow).where(ImageRow.id.in_(chunk))):
                    out[r.id] = r
        return out

    def row_by_path(self, path: str) -> Optional[ImageRow]:
        with self.session() as s:
            return s.scalar(select(ImageRow).where(ImageRow.path == str(path)))

    def vectors(self, ids: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors (n, dim) float32) of the live rows among ``ids``, in the order given."""
        ids = [int(i) for i in np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1)]
        got: dict[int, bytes] = {}
        with self.session() as s:
            for chunk in _chunks(ids):
                q = (
                    select(VectorRow.image_id, VectorRow.vector)
                    .join(ImageRow, ImageRow.id == VectorRow.image_id)
                    .where(VectorRow.image_id.in_(chunk), ImageRow.status == STATUS_OK)
                )
                got.update((int(i), v) for i, v in s.execute(q))
        keep = [i for i in ids if i in got]
        dim = (self.identity or {}).get("dim")
        return np.asarray(keep, dtype=np.int64), vectors_from_blobs([got[i] for i in keep], dim)

    def copy_hashes(self, ids: Optional[Iterable[int]] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids int64, hashes (n, COPY_ROWS, 32) uint8, quality (n,) int16) for dedup's copy tier: the
        ``ok`` rows that have perceptual hashes of the current version (``perceptual.COPY_VERSION``;
        layout ``perceptual.COPY_ROWS``: 8 dihedral hashes, row 0 canonical, then the window hashes;
        quality: PDQ's, 0-100).
        ``ids=None``: every such row, by id; else those among ``ids``, in the order given."""
        from pixdex.dedup.perceptual import COPY_NBYTES, COPY_ROWS, COPY_VERSION

        base = (
            select(CopyHashRow.image_id, CopyHashRow.pdq, CopyHashRow.quality)
            .join(ImageRow, ImageRow.id == CopyHashRow.image_id)
            .where(
                ImageRow.status == STATUS_OK,
                CopyHashRow.version == COPY_VERSION,
                CopyHashRow.pdq.is_not(None),
            )
        )
        got: dict[int, tuple[bytes, int]] = {}
        with self.session() as s:
            if ids is None:
                got.update((int(i), (h, q)) for i, h, q in s.execute(base.order_by(CopyHashRow.image_id)))
                keep = list(got)
            else:
                want = [
                    int(i)
                    for i in np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1)
                ]
                for chunk in _chunks(want):
                    q = base.where(CopyHashRow.image_id.in_(chunk))
                    got.update((int(i), (h, qu)) for i, h, qu in s.execute(q))
                keep = [i for i in want if i in got]
        blob = b"".join(got[i][0] for i in keep)
        hashes = np.frombuffer(blob, dtype=np.uint8).reshape(len(keep), COPY_ROWS, COPY_NBYTES).copy()
        quality = np.fromiter((got[i][1] or 0 for i in keep), dtype=np.int16, count=len(keep))
        return np.asarray(keep, dtype=np.int64), hashes, quality

    def copy_hash_counts(self) -> dict[str, int]:
        """How many ``ok`` rows have copy hashes (``hashed``), could not be hashed (``unhashable``) or
        have none of the current version yet (``missing``: the next ``pixdex index`` computes them)."""
        from pixdex.dedup.perceptual import COPY_VERSION

        with self.session() as s:
            q = (
                select(CopyHashRow.pdq.is_(None), func.count())
                .join(ImageRow, ImageRow.id == CopyHashRow.image_id)
                .where(ImageRow.status == STATUS_OK, CopyHashRow.version == COPY_VERSION)
                .group_by(CopyHashRow.pdq.is_(None))
            )
            by_null = {bool(k): int(n) for k, n in s.execute(q)}
        hashed, unhashable = by_null.get(False, 0), by_null.get(True, 0)
        return {"hashed": hashed, "unhashable": unhashable, "missing": self.count() - hashed - unhashable}

    # ------------------------------------------------------------------ FAISS

    @property
    def faiss_path(self) -> Path:
        return self.dir / FAISS_FILE

    def load_faiss(self, verify: bool = False) -> Optional[VectorIndex]:
        """The FAISS index, or None when missing or unreadable; with ``verify`` also None (rebuild it)
        when :meth:`faiss_problem` finds it garbled or another store's."""
        info = self.read_sidecar().get("faiss") or {}
        index = VectorIndex.load(self.faiss_path, trained_on=int(info.get("trained_on") or 0))
        if verify and index is not None:
            problem = self.faiss_problem(index, info)
            if problem:
                log.warning("%s: %s; rebuilding it from the database", self.faiss_path, problem)
                return None
        return index

    def faiss_problem(self, index: VectorIndex, recorded: Optional[dict] = None) -> Optional[str]:
        """Why the FAISS file cannot be trusted though its ids may agree (None: no reason found).

        Cheap: the file's checksum against the one recorded when it was saved (garbled in place), and a
        sample of its vectors against the database's (another store's file, or a store rebuilt since).
        """
        recorded = self.read_sidecar().get("faiss") or {} if recorded is None else recorded
        want = recorded.get("file_checksum")
        if want and want != file_checksum(self.faiss_path):
            return "its bytes changed since it was saved (checksum mismatch)"
        return sample_problem(index, self.vectors)

    def reconcile_faiss(
        self, index: Optional[VectorIndex] = None, threshold: Optional[int] = None
    ) -> tuple[Optional[VectorIndex], dict[str, int]]:
        """Bring ``index`` (default: the FAISS file, rebuilt when :meth:`faiss_problem` finds it
        untrustworthy) in line with the database's live ids (:func:`faiss_index.reconcile`); not saved.
        A store bound to no model yet has none: ``(index, {})``."""
        ident = self.identity
        if ident is None:
            return index, {}
        if index is None:
            index = self.load_faiss(verify=True)
        return reconcile(index, int(ident["dim"]), self.live_ids(), self.vectors, ivf_threshold(threshold))

    def save_faiss(self, index: VectorIndex) -> dict:
        """Write ``index`` to the store's FAISS file and describe it in ``store.json``; returns that."""
        index.save(self.faiss_path)
        info = index.describe()
        info["id_checksum"] = id_checksum(index.ids())
        info["file_checksum"] = file_checksum(self.faiss_path)
        self.write_sidecar(info)
        return info

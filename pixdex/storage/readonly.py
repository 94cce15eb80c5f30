"""Read-only SQLite connections to a store's database that work on read-only stores too.

Standard library only: the torch- and SQLAlchemy-free search path (:mod:`pixdex.search.store_view`)
and the storage layer open the database through :func:`connect_readonly`.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from pixdex.storage.contract import is_corrupt_db_error

log = logging.getLogger(__name__)

_NO_WRITE_ACCESS = ("unable to open", "readonly", "read-only", "attempt to write")


def connect_readonly(db: Path, **kwargs) -> sqlite3.Connection:
    """A read-only connection to ``db`` that works on read-only stores too.

    ``mode=ro`` still needs the WAL's ``-shm`` file, which SQLite cannot create in a folder the user may
    not write (a copied or archived store, a read-only mount) once the ``-wal``/``-shm`` files are gone:
    then the file is opened ``immutable=1`` (no locks, no WAL; right for a store nobody writes).
    """
    uri = Path(db).resolve().as_uri()
    kwargs.setdefault("check_same_thread", False)
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, **kwargs)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
        return conn
    except sqlite3.OperationalError as e:
        conn.close()
        msg = str(e).lower()
        if is_corrupt_db_error(msg) or not any(k in msg for k in _NO_WRITE_ACCESS):
            raise  # damaged, or busy: not a matter of write access
        log.info("opening %s read-only failed (%s); opening it as immutable", db, e)
    return sqlite3.connect(f"{uri}?immutable=1", uri=True, **kwargs)

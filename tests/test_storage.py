"""Storage: named migrations, schema contract, WAL + read-only access, lock, model binding, read API."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime

import numpy as np
import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from pixdex.errors import PixdexError
from pixdex.storage import contract, migrations
from pixdex.storage.contract import DB_FILE, SIDECAR_FILE, STATUS_FAILED, same_model
from pixdex.storage.schema import Base
from pixdex.storage.store import Store
from pixdex.storage.writes import Batch, Move, NewRow, Touch, apply_batch, known_files

DIM = 8
IDENT = {"model": "m", "checkpoint_sha256": "abc", "dim": DIM, "preprocess": {"image_size": 32}}


def unit(rng, n, d=DIM):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def new_row(i, vec=None, **kw):
    return NewRow(path=f"/p/{i}.jpg", root="/p", size=i, mtime_ns=i, content_hash=f"h{i}", vector=vec, **kw)


@pytest.fixture
def store(tmp_path):
    s = Store.open_writer(tmp_path / "store")
    s.bind_model(IDENT)
    yield s
    s.close()


def test_migrations_are_named_applied_once_and_match_the_orm(tmp_path):
    s = Store.open_writer(tmp_path / "st")
    try:
        with s.engine.connect() as c:
            names = [r[0] for r in c.execute(text("SELECT name FROM migrations ORDER BY name"))]
            assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert names == sorted(n for n, _ in migrations.MIGRATIONS) and len(names) >= 2
        assert migrations.apply_migrations(s.engine) == []  # nothing applied twice
        insp = inspect(s.engine)
        for table in Base.metadata.sorted_tables:  # the hand-written DDL is what the ORM maps
            db_cols = {c["name"]: c for c in insp.get_columns(table.name)}
            assert set(db_cols) == set(table.columns.keys()), table.name
            for col in table.columns:
                assert db_cols[col.name]["nullable"] == (col.nullable and not col.primary_key), (
                    table.name,
                    col.name,
                )
        idx = {i["name"] for i in insp.get_indexes("images")}
        assert {"ix_images_content_hash", "ix_images_root"} <= idx
    finally:
        s.close()


def test_orm_and_migrated_database_use_the_contract_names(tmp_path):
    """The ORM, the DDL the migrations ran and store_view's SQL all spell the store as contract.py does."""
    Store.open_writer(tmp_path / "st").close()
    con = sqlite3.connect(tmp_path / "st" / contract.DB_FILE)
    try:
        db_tables = {
            r[0]
            for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            if not r[0].startswith("sqlite_")
        }
        db_cols = {t: tuple(r[1] for r in con.execute(f"PRAGMA table_info({t})")) for t in db_tables}
        db_index = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    finally:
        con.close()
    assert db_cols == contract.TABLES  # names and column order, as the migrations created them
    orm = {t.name: tuple(t.columns.keys()) for t in Base.metadata.sorted_tables}
    assert orm == contract.TABLES
    for mapper in Base.registry.mappers:  # attribute names are the column names (Core inserts use them)
        assert [a.key for a in mapper.column_attrs] == [col.name for col in mapper.local_table.columns]
    orm_index = {i.name for t in Base.metadata.sorted_tables for i in t.indexes}
    assert orm_index == {contract.IX_CONTENT_HASH, contract.IX_ROOT, contract.IX_TAGS_LABEL} <= db_index
    assert set(contract.STATUSES) == {contract.STATUS_OK, contract.STATUS_FAILED}


def test_a_new_migration_is_applied_and_recorded_once(tmp_path, monkeypatch):
    Store.open_writer(tmp_path / "st").close()
    calls = []

    def m999_add_note(conn):
        calls.append(1)
        conn.execute(text("CREATE TABLE note (x INTEGER)"))

    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS + [("m999_add_note", m999_add_note)])
    for _ in range(2):
        Store.open_writer(tmp_path / "st").close()
    assert calls == [1]
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:-1])
    with pytest.raises(PixdexError, match="newer pixdex"):
        Store.open_writer(tmp_path / "st")


def test_failed_migration_leaves_the_old_schema(tmp_path, monkeypatch):
    Store.open_writer(tmp_path / "st").close()

    def m998_broken(conn):
        conn.execute(text("CREATE TABLE half (x INTEGER)"))
        raise RuntimeError("boom")

    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS + [("m998_broken", m998_broken)])
    with pytest.raises(PixdexError, match="boom"):
        Store.open_writer(tmp_path / "st")
    con = sqlite3.connect(tmp_path / "st" / DB_FILE)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    applied = {r[0] for r in con.execute("SELECT name FROM migrations")}
    con.close()
    assert "half" not in tables and "m998_broken" not in applied


def test_second_writer_gets_a_lock_error_and_readers_work_meanwhile(store, tmp_path):
    with pytest.raises(PixdexError, match="already running"):
        Store.open_writer(store.dir)
    rng = np.random.default_rng(0)
    with store.session() as s, s.begin():  # a write transaction in progress ...
        s.execute(text("INSERT INTO meta (key, value) VALUES ('x', '1')"))
        r = Store.open_readonly(store.dir)  # ... does not block readers (WAL)
        assert r.count() == 0 and r.identity["model"] == "m"
        r.close()
    apply_batch(store, Batch(inserts=[new_row(1, unit(rng, 1)[0])]), DIM)
    store.close()
    s2 = Store.open_writer(store.dir)  # the lock is released on close
    assert s2.count() == 1
    s2.close()


def test_readonly_open_of_a_missing_store(tmp_path):
    with pytest.raises(PixdexError, match="no pixdex store"):
        Store.open_readonly(tmp_path / "nothing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(PixdexError, match="is a file"):
        Store.open_writer(tmp_path / "file")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / DB_FILE).write_bytes(b"not a database" * 100)
    with pytest.raises(
        PixdexError, match=r"the store database .* is damaged .*: pixdex index FOLDER --store"
    ):
        Store.open_writer(bad)


def test_model_binding(store):
    assert store.bind_model(dict(IDENT)) is False  # the same model again
    with pytest.raises(PixdexError, match="bound to model 'm'"):
        store.bind_model({**IDENT, "checkpoint_sha256": "other"})
    with pytest.raises(PixdexError, match="cannot be indexed"):
        store.bind_model({**IDENT, "dim": 16})
    side = json.loads((store.dir / SIDECAR_FILE).read_text())
    assert side["model"]["checkpoint_sha256"] == "abc"
    assert same_model({"model": "tiny", "checkpoint_sha256": None, "dim": 4}, {"model": "tiny", "dim": 4})
    assert not same_model({"model": "a", "dim": 4}, {"model": "b", "dim": 4})
    rnd = {"checkpoint_sha256": "random-init-seed0", "dim": 4}
    assert not same_model({**rnd, "model": "tiny-vit"}, {**rnd, "model": "tiny-rn"})
    assert same_model({**IDENT, "model": "a:tag"}, {**IDENT, "model": "/dir/with/same/weights"})
    assert not same_model({**IDENT, "preprocess": {"image_size": 64}}, IDENT)


def test_batches_insert_move_touch_delete_and_copy(store):
    rng = np.random.default_rng(1)
    v = unit(rng, 3)
    a = apply_batch(
        store,
        Batch(inserts=[new_row(1, v[0]), new_row(2, v[1]), new_row(3, status=STATUS_FAILED, error="bad")]),
        DIM,
    )
    i1, i2, i3 = a.new_ids
    assert a.added_ids.tolist() == [i1, i2] and np.allclose(a.added_vectors, v[:2])
    # copy: a new row reusing row 1's vector (and metadata); move row 2; touch row 3; delete row 1
    known = known_files(store)
    assert known["/p/3.jpg"].status == STATUS_FAILED and known["/p/1.jpg"].content_hash == "h1"
    b = apply_batch(
        store,
        Batch(
            inserts=[NewRow("/p/copy.jpg", "/p", 1, 1, "h1", copy_from=i1)],
            moves=[Move(i2, "/q/2.jpg", "/q", 2, 22)],
            touches=[Touch(i3, 3, 33)],
        ),
        DIM,
    )
    (icopy,) = b.new_ids
    assert np.allclose(b.added_vectors[0], v[0])
    c = apply_batch(store, Batch(deletes=[i1, i3]), DIM)
    assert sorted(c.removed_ids.tolist()) == [i1]  # only rows with vectors leave FAISS
    assert store.live_ids().tolist() == sorted([i2, icopy])
    rows = store.rows([i2, icopy, i1])
    assert i1 not in rows and rows[i2].path == "/q/2.jpg" and rows[i2].mtime_ns == 22
    ids, vecs = store.vectors([icopy, i2, 12345])
    assert ids.tolist() == [icopy, i2] and np.allclose(vecs, v[[0, 1]])
    # a copy whose source is gone is left out, not stored without a vector
    d = apply_batch(store, Batch(inserts=[NewRow("/p/c2.jpg", "/p", 1, 1, "h1", copy_from=i1)]), DIM)
    assert d.copies_missing == [0] and d.new_ids == [None]
    # ids are never reused
    e = apply_batch(store, Batch(inserts=[new_row(9, v[2])]), DIM)
    assert e.new_ids[0] > max(i1, i2, i3, icopy)


def test_a_failed_batch_changes_nothing(store):
    rng = np.random.default_rng(2)
    apply_batch(store, Batch(inserts=[new_row(1, unit(rng, 1)[0])]), DIM)
    with pytest.raises(IntegrityError):  # the path is UNIQUE: the whole batch rolls back
        apply_batch(store, Batch(inserts=[new_row(2, unit(rng, 1)[0]), new_row(1, unit(rng, 1)[0])]), DIM)
    assert sorted(known_files(store)) == ["/p/1.jpg"]
    with pytest.raises(ValueError, match="dim"):
        apply_batch(store, Batch(inserts=[new_row(3, np.ones(DIM + 1, np.float32))]), DIM)
    assert store.count() == 1


def test_read_api(store):
    rng = np.random.default_rng(3)
    v = unit(rng, 4)
    rows = [
        NewRow(
            "/photos/2020/a.jpg", "/photos", 1, 1, "a", vector=v[0], taken_at=datetime(2020, 5, 1, 10, 0, 0)
        ),
        NewRow(
            "/photos/2021/b.JPG", "/photos", 1, 1, "b", vector=v[1], taken_at=datetime(2021, 1, 2, 3, 4, 5)
        ),
        NewRow("/photos/misc/c.png", "/photos", 1, 1, "c", vector=v[2]),
        NewRow("/photos/2021/d.jpg", "/photos", 1, 1, "d", status=STATUS_FAILED, error="x"),
    ]
    ids = apply_batch(store, Batch(inserts=rows), DIM).new_ids
    store.close()
    r = Store.open_readonly(store.dir)
    try:
        assert r.count() == 3 and r.count(None) == 4
        assert r.rows([ids[1]])[ids[1]].taken_at == datetime(2021, 1, 2, 3, 4, 5)
        got, vecs = r.vectors(ids)  # failed rows have no vector and are not returned
        assert got.tolist() == ids[:3] and np.allclose(vecs, v[:3], atol=1e-6)
    finally:
        r.close()
    con = sqlite3.connect(store.dir / DB_FILE)  # taken_at is ISO text for search's SQL filters
    assert (
        con.execute("SELECT taken_at FROM images WHERE id=?", (ids[1],)).fetchone()[0]
        == "2021-01-02 03:04:05"
    )
    con.close()


def test_copy_hashes_written_with_rows_copied_with_vectors_and_backfilled(store):
    from pixdex.dedup.perceptual import COPY_NBYTES, COPY_ROWS, COPY_VERSION, CopyHash
    from pixdex.storage.writes import missing_copy_hashes, write_copy_hashes

    rng = np.random.default_rng(4)
    v = unit(rng, 3)
    h = rng.integers(0, 256, (3, COPY_ROWS, COPY_NBYTES), dtype=np.uint8)
    qual = rng.integers(0, 101, 3).tolist()
    ch = [CopyHash(h[k], qual[k]) for k in range(3)]
    a = apply_batch(
        store,
        Batch(
            inserts=[
                new_row(1, v[0], copy_hash=ch[0]),
                new_row(2, v[1]),  # made without hashes (as before the migration)
                new_row(3, status=STATUS_FAILED, error="bad"),
            ]
        ),
        DIM,
    )
    i1, i2, i3 = a.new_ids
    # a copy of row 1 takes its hashes with its vector; a copy of row 2 has none either
    b = apply_batch(
        store,
        Batch(
            inserts=[
                NewRow("/p/c1.jpg", "/p", 1, 1, "h1", copy_from=i1),
                NewRow("/p/c2.jpg", "/p", 2, 2, "h2", copy_from=i2),
            ]
        ),
        DIM,
    )
    c1, c2 = b.new_ids
    ids, hashes, quality = store.copy_hashes()
    assert ids.tolist() == [i1, c1] and hashes.shape == (2, COPY_ROWS, COPY_NBYTES)
    assert (hashes == h[0]).all() and quality.tolist() == [qual[0], qual[0]]
    assert [(i, p) for i, p, _ in missing_copy_hashes(store)] == [(i2, "/p/2.jpg"), (c2, "/p/c2.jpg")]
    assert store.copy_hash_counts() == {"hashed": 2, "unhashable": 0, "missing": 2}
    # the backfill's write: hashes, or None for a file that could not be hashed; deleted ids skipped
    assert write_copy_hashes(store, [(i2, ch[1]), (c2, None), (99999, ch[2])]) == 2
    assert missing_copy_hashes(store) == []
    assert store.copy_hash_counts() == {"hashed": 3, "unhashable": 1, "missing": 0}
    got, hs, qs = store.copy_hashes([c2, i2, i3, i1])  # in the order given; unhashable, failed left out
    assert got.tolist() == [i2, i1] and (hs[0] == h[1]).all() and (hs[1] == h[0]).all()
    assert qs.tolist() == [qual[1], qual[0]]
    with pytest.raises(ValueError, match="copy hashes"):
        write_copy_hashes(store, [(i1, CopyHash(h[0][:3], 50))])
    # rows of another version count as missing (a layout change is recomputed by the backfill)
    with store.session() as s, s.begin():
        s.execute(text(f"UPDATE copy_hashes SET version = {COPY_VERSION + 1} WHERE image_id = {i2}"))
    assert [i for i, _, _ in missing_copy_hashes(store)] == [i2]
    assert store.copy_hashes()[0].tolist() == [i1, c1]
    # deleting a row deletes its hashes
    apply_batch(store, Batch(deletes=[i1]), DIM)
    con = sqlite3.connect(store.dir / DB_FILE)
    try:
        left = {r[0] for r in con.execute("SELECT image_id FROM copy_hashes")}
    finally:
        con.close()
    assert left == {i2, c1, c2}

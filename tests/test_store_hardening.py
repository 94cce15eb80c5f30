"""Store corruption and interruption of issue 12: a garbled, empty or deleted database, a truncated text
tower, FAISS data garbled in place or copied from another store, read-only stores, and Ctrl-C.

Each damaged store gives one line with the command that fixes it (never a traceback), and that command
(`pixdex index`) repairs it; Ctrl-C exits within seconds keeping every committed batch."""

from __future__ import annotations

import gc
import http.client
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from index_support import assert_consistent, db_rows, make_images

pytest.importorskip("faiss")

from pixdex.indexer.run import index_paths  # noqa: E402
from pixdex.search.cli_search import run_search  # noqa: E402
from pixdex.storage.status import store_status  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = "tiny-vit"


def _index(folder, store, **kw):
    kw.setdefault("model", MODEL)
    return index_paths([Path(folder)], store_dir=Path(store), json_mode=True, batch_size=8, **kw)


def _cli(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pixdex", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def _one_line_error(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pixdex: error: "), p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    return lines[0]


def _faiss_matches_database(store: Path) -> bool:
    """Every vector in the FAISS file equals the database's vector of its id (the full check)."""
    from pixdex.storage.faiss_index import VectorIndex

    vi = VectorIndex.load(store / "index.faiss")
    ids, vecs = _all_faiss_vectors(vi)
    con = sqlite3.connect(f"{(store / 'pixdex.db').as_uri()}?mode=ro", uri=True)
    try:
        db = {
            i: np.frombuffer(v, dtype="<f4") for i, v in con.execute("SELECT image_id, vector FROM vectors")
        }
    finally:
        con.close()
    return sorted(db) == sorted(ids.tolist()) and all(
        np.array_equal(db[int(i)], v) for i, v in zip(ids, vecs)
    )


def _all_faiss_vectors(vi):
    import faiss

    ids = faiss.vector_to_array(vi.index.id_map).astype(np.int64)
    inner = faiss.downcast_index(vi.index.index)
    return ids, np.stack([inner.reconstruct(i) for i in range(vi.ntotal)]) if vi.ntotal else np.zeros(
        (0, vi.dim)
    )


@pytest.fixture
def fresh(tmp_path):
    """A folder of 24 photos and its store, built for each test (the tests damage it)."""
    make_images(tmp_path / "photos", 24)
    s = _index(tmp_path / "photos", tmp_path / "store")
    assert s["total"] == 24
    return tmp_path / "photos", tmp_path / "store"


# ----------------------------------------------------------------------------- the database


@pytest.mark.parametrize("how", ["header", "pages"])
def test_garbled_database_is_one_line_and_index_rebuilds_it(fresh, how):
    photos, store = fresh
    db = store / "pixdex.db"
    data = bytearray(db.read_bytes())
    rng = np.random.default_rng(0)
    if how == "header":  # "file is not a database"
        data[:100] = rng.integers(0, 256, 100, dtype=np.uint8).tobytes()
    else:  # every page after the first: "database disk image is malformed"
        page = int.from_bytes(data[16:18], "big") or 65536
        data[page:] = rng.integers(0, 256, len(data) - page, dtype=np.uint8).tobytes()
    db.write_bytes(bytes(data))
    for cmd in (("status", "--store", store), ("search", "red", "--store", store)):
        line = _one_line_error(_cli(*cmd))
        assert f"the store database {db}" in line and f"pixdex index FOLDER --store {store}" in line, line
    s = _index(photos, store, model=None)  # the command the message names: no --model needed
    assert s["total"] == 24 and s["new"] == 24
    assert_consistent(store, sorted(photos.iterdir()))
    aside = sorted(p.name for p in store.iterdir() if p.name.startswith("pixdex.db.damaged-"))
    assert aside and aside[0].endswith(tuple("0123456789")), aside  # set aside, not deleted
    assert store_status(store)["faiss"]["agrees"]


def test_zero_byte_database_says_empty_and_index_rebuilds_with_the_recorded_model(fresh):
    photos, store = fresh
    (store / "pixdex.db").write_bytes(b"")
    for cmd in (("status", "--store", store), ("search", "red", "--store", store)):
        line = _one_line_error(_cli(*cmd))
        assert "is empty (0 bytes)" in line and "older schema" not in line, line
    before = json.loads((store / "store.json").read_text())["model"]
    s = _index(photos, store, model=None)
    assert s["total"] == 24 and s["model"] == MODEL
    info = store_status(store)
    assert info["model"] == before["model"] and info["checkpoint_sha256"] == before["checkpoint_sha256"]
    assert info["faiss"]["agrees"] and _faiss_matches_database(store)


def test_deleted_database_index_without_model_uses_the_recorded_one(fresh):
    photos, store = fresh
    (store / "pixdex.db").unlink()
    # The folder changed meanwhile: the new database gives ids 1.. to other files than the old FAISS
    # file did, so keeping that file (its ids all still exist) would answer with other photos' vectors.
    for p in sorted(photos.iterdir())[::2]:
        p.unlink()
    make_images(photos, 6, seed=77, start=500)
    p = _cli("index", photos, "--store", store, "--json")  # no --model: the default is not even cached
    assert p.returncode == 0, p.stderr[-2000:]
    s = json.loads(p.stdout)
    assert s["model"] == MODEL and s["total"] == 18
    assert_consistent(store, sorted(photos.iterdir()))
    assert _faiss_matches_database(store)


# ----------------------------------------------------------------------------- the text tower


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def test_truncated_text_tower_search_reexports_and_index_repairs(fresh):
    photos, store = fresh
    want = [h["id"] for h in run_search(store, "a red square", k=10)]
    tower = store / "text_tower.safetensors"
    _truncate(tower)
    assert [h["id"] for h in run_search(store, "a red square", k=10)] == want  # re-exported from the model
    from pixdex.encoders.textexport import text_tower_problem

    assert text_tower_problem(store) is None
    _truncate(tower)
    assert "truncated" in text_tower_problem(store)
    s = _index(photos, store, model=None)  # nothing to encode, but the damaged tower is exported again
    assert s["encoded"] == 0 and text_tower_problem(store) is None
    assert [h["id"] for h in run_search(store, "a red square", k=10)] == want


def test_truncated_text_tower_serve_answers_json(fresh):
    from pixdex.search.serve import make_server, start_in_thread

    _, store = fresh
    want = [h["id"] for h in run_search(store, "a blue circle", k=5)]
    _truncate(store / "text_tower.safetensors")
    srv = make_server(store, "127.0.0.1", 0)
    start_in_thread(srv)
    try:
        conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=120)
        conn.request("GET", "/api/search?q=a+blue+circle&k=5")
        r = conn.getresponse()
        body = json.loads(r.read())
        conn.close()
    finally:
        srv.shutdown()
        srv.server_close()
        srv.engine.close()
    assert r.status == 200, body
    assert [h["id"] for h in body["results"]] == want


# ----------------------------------------------------------------------------- the FAISS file


def _garble_vectors_in_place(path: Path) -> None:
    """Overwrite the vector data of a flat FAISS file, keeping its header and id map parseable."""
    from pixdex.storage.faiss_index import VectorIndex

    vi = VectorIndex.load(path)
    n, d = vi.ntotal, vi.dim
    data = bytearray(path.read_bytes())
    _, vecs = _all_faiss_vectors(vi)
    start = bytes(data).find(vecs.astype("<f4").tobytes()[:64])
    assert start > 0
    noise = np.random.default_rng(1).standard_normal((n, d)).astype("<f4")
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    data[start : start + n * d * 4] = noise.tobytes()
    path.write_bytes(bytes(data))
    assert VectorIndex.load(path) is not None  # still parses: only the vectors are wrong


def test_faiss_garbled_in_place_is_reported_and_rebuilt(fresh):
    photos, store = fresh
    _garble_vectors_in_place(store / "index.faiss")
    f = store_status(store)["faiss"]
    assert f["missing"] == 0 and f["extra"] == 0  # the ids still agree ...
    assert not f["agrees"] and "checksum" in f["problem"]  # ... the bytes do not
    assert not _faiss_matches_database(store)
    _index(photos, store, model=None)
    assert store_status(store)["faiss"]["agrees"] and _faiss_matches_database(store)


@pytest.mark.parametrize("sidecar", ["with_checksum", "older_store_json"])
def test_faiss_file_of_another_store_is_reported_and_rebuilt(fresh, tmp_path, sidecar):
    photos, store = fresh
    other = tmp_path / "other"
    make_images(other / "photos", 24, seed=42)  # as many photos: the same ids 1..24
    _index(other / "photos", other / "store")
    if sidecar == "older_store_json":  # a store.json without the file checksum: the vector sample decides
        side = json.loads((store / "store.json").read_text())
        side["faiss"].pop("file_checksum", None)
        (store / "store.json").write_text(json.dumps(side))
    shutil.copyfile(other / "store" / "index.faiss", store / "index.faiss")
    f = store_status(store)["faiss"]
    assert f["missing"] == 0 and f["extra"] == 0 and not f["agrees"], f
    assert ("checksum" if sidecar == "with_checksum" else "sampled vectors differ") in f["problem"]
    _index(photos, store, model=None)
    assert store_status(store)["faiss"]["agrees"] and _faiss_matches_database(store)


# ----------------------------------------------------------------------------- read-only stores


def _freeze(folder: Path) -> bool:
    """Make ``folder`` unwritable even for root (chattr +i); False when that is impossible here."""
    for p in folder.iterdir():
        p.chmod(0o444)
    folder.chmod(0o555)
    if os.geteuid() != 0:
        return True
    return subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0


def _thaw(folder: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)
    for p in folder.iterdir():
        p.chmod(0o644)


def test_read_only_store_without_wal_files_is_searchable(fresh, tmp_path):
    _, store = fresh
    want = [h["id"] for h in run_search(store, "a green triangle", k=5)]
    copy = tmp_path / "archived"  # a copy of the store, as archived or on a read-only medium
    shutil.copytree(store, copy, ignore=shutil.ignore_patterns("*-wal", "*-shm", "index.lock"))
    if not _freeze(copy):
        _thaw(copy)
        pytest.skip("cannot make a folder read-only for root here (no chattr +i)")
    try:
        assert [h["id"] for h in run_search(copy, "a green triangle", k=5)] == want
        assert store_status(copy)["faiss"]["agrees"]
        p = _cli("search", "a green triangle", "-k", "5", "--store", copy, "--json")
        assert p.returncode == 0, p.stderr[-2000:]
        assert [h["id"] for h in json.loads(p.stdout)] == want
        assert sorted(p.name for p in copy.iterdir()) == sorted(
            p.name for p in store.iterdir() if not p.name.endswith(("-wal", "-shm", ".lock"))
        )  # nothing was written
    finally:
        _thaw(copy)


# ----------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_inside_a_batch_write_cleans_up_at_once(tmp_path, monkeypatch):
    """SIGINT lands while SQLite runs a batch's INSERT (Python raises KeyboardInterrupt right after the
    call): the cleanup must not wait for that batch's write lock (SQLite's 30 s busy timeout)."""
    from sqlalchemy.engine import default

    photos = tmp_path / "photos"
    make_images(photos, 16)
    store = tmp_path / "store"
    _index(photos, store)
    make_images(photos, 16, seed=5, start=100)
    real = default.DefaultDialect.do_executemany
    calls = []

    def interrupted(self, *a, **k):
        real(self, *a, **k)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(default.DefaultDialect, "do_executemany", interrupted)
    t = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        _index(photos, store, model=None)
    took = time.monotonic() - t
    monkeypatch.undo()
    gc.collect()  # the interrupted batch's connection (its transaction rolls back when it is freed)
    assert took < 5, f"cleanup after Ctrl-C took {took:.1f} s"
    rows = db_rows(store)
    assert 16 <= len(rows) < 32 and all(r["status"] == "ok" for r in rows.values())
    s = _index(photos, store, model=None)
    assert s["total"] == 32
    assert_consistent(store, sorted(photos.iterdir()))


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a subprocess")
def test_sigint_to_a_real_index_run_exits_within_seconds_keeping_what_was_committed(tmp_path):
    photos = tmp_path / "photos"
    make_images(photos, 600, size=(48, 40))
    store = tmp_path / "store"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PIXDEX_FAISS_SAVE_S": "0.3",
    }
    cmd = [sys.executable, "-m", "pixdex", "index", str(photos), "--store", str(store), "--model", MODEL]
    cmd += ["--json", "--batch-size", "2", "--workers", "2"]
    rng = random.Random(12)

    def committed() -> int:
        try:
            con = sqlite3.connect(f"{(store / 'pixdex.db').as_uri()}?mode=ro", uri=True, timeout=5)
            try:
                return con.execute("SELECT count(*) FROM images").fetchone()[0]
            finally:
                con.close()
        except sqlite3.Error:
            return 0

    interrupted, slowest = 0, 0.0
    for _ in range(6):
        before = committed()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        end = time.monotonic() + 120
        while proc.poll() is None and committed() <= before and time.monotonic() < end:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is not None:
            break  # finished: nothing left to interrupt
        t = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        took = time.monotonic() - t
        slowest = max(slowest, took)
        assert took < 10, f"exit took {took:.1f} s after SIGINT"
        assert proc.returncode in (130, -signal.SIGINT), err.decode(errors="replace")[-2000:]
        assert b"Traceback" not in err
        assert committed() >= before  # what was committed is kept
        interrupted += 1
    assert interrupted >= 3
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["total"] == 600
    assert_consistent(store, sorted(photos.iterdir()))
    assert store_status(store)["faiss"]["agrees"]

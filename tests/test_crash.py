"""kill -9 a real `python -m pixdex index` at random moments; the next run must leave every file present
exactly once, FAISS ids equal to the database ids, and vectors that belong to their files."""

from __future__ import annotations

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

import pytest
from index_support import assert_consistent, db_vector, make_images

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")

REPO = Path(__file__).resolve().parents[1]
KILLS = 10
SEED = 1234


def _cmd(folder: Path, store: Path):
    return [
        sys.executable,
        "-m",
        "pixdex",
        "index",
        str(folder),
        "--store",
        str(store),
        "--model",
        "tiny-vit",
        "--json",
        "--batch-size",
        "2",
        "--workers",
        "2",
    ]


def _env():
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PIXDEX_IVF_THRESHOLD": "150",
        "PIXDEX_FAISS_SAVE_S": "0.2",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _wait_for_lock(proc: subprocess.Popen, lock: Path, timeout: float = 60.0) -> bool:
    """Until the process holds the store lock (it writes its pid there), or has exited."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        try:
            if lock.read_text().strip() == str(proc.pid):
                return True
        except OSError:
            pass
        time.sleep(0.02)
    return False


def _db_progress(store: Path):
    """(rows, last write time) of the store, or None before it exists: changes with every commit."""
    try:
        con = sqlite3.connect(f"{(store / 'pixdex.db').resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*), coalesce(max(indexed_at), 0) FROM images").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None


def _wait_for_commit(proc: subprocess.Popen, store: Path, before, timeout: float = 60.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        now = _db_progress(store)
        if now is not None and now != before:
            return True
        time.sleep(0.01)
    return False


def _mutate(folder: Path, rng: random.Random, step: int) -> None:
    """Between runs: new files, a deletion, a rename, a move into a subfolder, a changed file."""
    make_images(folder, 12, seed=100 + step, size=(24, 24), start=1000 * (step + 1))
    files = sorted(p for p in folder.rglob("*.png") if p.stat().st_size > 0)
    a, b, c, d = rng.sample(files, 4)
    a.unlink()
    b.rename(b.with_name(f"renamed_{step}_{b.name}"))
    (folder / f"sub{step % 3}").mkdir(exist_ok=True)
    c.rename(folder / f"sub{step % 3}" / c.name)
    make_images(folder, 1, seed=500 + step, size=(24, 24), start=0)  # overwrite img_00000: new content
    d.write_bytes(b"")  # becomes an empty (failed) file


def test_kill_9_at_random_moments_then_complete(tmp_path):
    rng = random.Random(SEED)
    folder = tmp_path / "photos"
    make_images(folder, 80, size=(24, 24))
    (folder / "broken.png").write_text("not an image")
    store = tmp_path / "store"
    kills = mid_work = attempts = 0
    while kills < KILLS and attempts < 3 * KILLS:
        attempts += 1
        before = _db_progress(store)
        proc = subprocess.Popen(
            _cmd(folder, store), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        if attempts % 3 == 1:  # while starting: loading the model, binding, exporting, scanning
            started = _wait_for_lock(proc, store / "index.lock")
            time.sleep(rng.uniform(0.0, 1.5) if started else 0.0)
            working = False
        else:  # while indexing: after this run's first commit, somewhere among commits and FAISS saves
            working = _wait_for_commit(proc, store, before)
            time.sleep(rng.uniform(0.0, 0.4) if working else 0.0)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
            mid_work += working
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, -signal.SIGKILL), err.decode(errors="replace")
        _mutate(folder, rng, attempts)
    assert mid_work >= 5, f"only {mid_work} kills landed while indexing"
    assert kills >= 10
    done = subprocess.run(_cmd(folder, store), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    on_disk = sorted(p for p in folder.rglob("*") if p.is_file())
    rows = assert_consistent(store, on_disk)  # each file exactly once; FAISS == database
    assert summary["total"] == sum(r["status"] == "ok" for r in rows.values())
    assert all(rows[str(p)]["status"] == "failed" for p in on_disk if p.stat().st_size == 0)
    # vectors belong to their files: compare a sample with direct encoding
    from pixdex.encoders.encoder import load_encoder
    from pixdex.images import decode, read_file

    enc = load_encoder("tiny-vit", towers=("image",))
    ok = [p for p in on_disk if rows[str(p)]["status"] == "ok"]
    for p in random.Random(SEED).sample(ok, 12):
        img, _ = decode(read_file(str(p)), enc.preprocess.draft_size[0])
        want = enc.encode_images(enc.preprocess(img)[None])[0]
        assert float(db_vector(store, rows[str(p)]["id"]) @ want) > 0.9999, p
    status = subprocess.run(
        [sys.executable, "-m", "pixdex", "status", "--store", str(store), "--json"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    info = json.loads(status.stdout)
    assert info["faiss"]["agrees"] and info["faiss"]["checksum_matches_sidecar"]
    again = subprocess.run(_cmd(folder, store), env=_env(), capture_output=True, text=True, timeout=300)
    assert json.loads(again.stdout)["encoded"] == 0
    shutil.rmtree(tmp_path / "photos")


def _hash_rows(store: Path) -> int:
    try:
        con = sqlite3.connect(f"{(store / 'pixdex.db').resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM copy_hashes").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:  # before the migration made the table
        return -1


def test_kill_9_during_the_copy_hash_backfill_then_complete(tmp_path):
    """A store made before copy hashes (no table, no migration record) is migrated and backfilled by
    the next runs; SIGKILL during the backfill loses at most the batch in flight, never a vector."""
    from pixdex.dedup import perceptual
    from pixdex.images import decode, read_file

    rng = random.Random(SEED + 1)
    folder = tmp_path / "photos"
    files = make_images(folder, 240, size=(320, 240), ext="jpg")
    store = tmp_path / "store"
    old_env = {**_env(), "PIXDEX_COPY_HASHES": "0"}
    built = subprocess.run(_cmd(folder, store), env=old_env, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    con = sqlite3.connect(store / "pixdex.db")
    con.execute("DROP TABLE copy_hashes")
    # a store from before the table (and so before its later column)
    con.execute("DELETE FROM migrations WHERE name IN ('m003_copy_hashes', 'm005_copy_quality')")
    con.commit()
    vectors = {r[0]: r[1] for r in con.execute("SELECT image_id, vector FROM vectors")}
    con.close()
    env = {**_env(), "PIXDEX_BACKFILL_COMMIT": "8"}
    kills = mid_work = 0
    last = -1
    for _ in range(12):
        before = _hash_rows(store)
        assert before >= last  # committed hashes are never lost
        last = before
        proc = subprocess.Popen(_cmd(folder, store), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        end = time.monotonic() + 60
        while time.monotonic() < end and proc.poll() is None and _hash_rows(store) <= max(before, 0):
            time.sleep(0.01)
        working = proc.poll() is None
        time.sleep(rng.uniform(0.0, 0.08) if working else 0.0)  # short: each run commits a batch or few
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
            mid_work += working
        out, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, -signal.SIGKILL), err.decode(errors="replace")
        if proc.returncode == 0:
            break
    assert mid_work >= 3, f"only {mid_work} kills landed during the backfill"
    done = subprocess.run(_cmd(folder, store), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["encoded"] == 0 and "load_model" not in summary["timings_s"]
    rows = assert_consistent(store, files)
    con = sqlite3.connect(store / "pixdex.db")
    try:
        assert {r[0]: r[1] for r in con.execute("SELECT image_id, vector FROM vectors")} == vectors
        hashes = dict(con.execute("SELECT image_id, pdq FROM copy_hashes"))
    finally:
        con.close()
    assert sorted(hashes) == sorted(r["id"] for r in rows.values() if r["status"] == "ok")
    for p in files:
        want = perceptual.copy_hash_array(decode(read_file(str(p)), perceptual.HASH_DRAFT)[0])
        assert hashes[rows[str(p)]["id"]] == want.rows.tobytes(), p
    again = subprocess.run(_cmd(folder, store), env=env, capture_output=True, text=True, timeout=300)
    assert json.loads(again.stdout)["hashed_copy"] == 0

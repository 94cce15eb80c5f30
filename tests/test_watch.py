"""`pixdex watch`: files added, renamed, deleted and modified while it runs reach the store (rows, vectors,
FAISS, search); the model is loaded once; the store lock; a real SIGINT ends it with exit code 130."""

from __future__ import annotations

import functools
import json
import os
import queue
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from index_support import db_rows, db_vector, faiss_ids

from pixdex.errors import PixdexError
from pixdex.images import content_hash

REPO = Path(__file__).resolve().parents[1]
MODEL = "pixdex-demo"
QUIET_S = 0.3


def _demo_available() -> bool:
    from pixdex.encoders import registry

    try:
        return registry.demo_weights_path().is_file()
    except (AttributeError, OSError):
        return False


pytestmark = pytest.mark.skipif(not _demo_available(), reason="pixdex-demo weights not bundled")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    from pixdex.training.demo_data import generate

    out = tmp_path_factory.mktemp("watch") / "demo"
    generate(out, n=12, seed=5, image_size=64)
    return out


def _wait(cond, what: str, timeout: float = 60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _store_state(store: Path, root: Path):
    """path -> row of the files under ``root`` once the database and the FAISS file agree, else None."""
    try:
        rows = db_rows(store)
        ids = faiss_ids(store)
    except (AssertionError, OSError, sqlite3.Error):  # not written yet
        return None
    live = sorted(r["id"] for r in rows.values() if r["status"] == "ok")
    if ids.tolist() != live:
        return None
    return {Path(p).name: r for p, r in rows.items() if Path(p).parent == root}


@functools.cache
def _reference_encoder():
    from pixdex.encoders.encoder import load_encoder

    return load_encoder(MODEL, towers=("image",))


def _reference_vector(path: Path) -> np.ndarray:
    """The image's vector computed here, independently of the watch (float32 model, no int8)."""
    from pixdex.images import load_for_model

    enc = _reference_encoder()
    return enc.encode_images(enc.preprocess(load_for_model(str(path), enc.preprocess))[None])[0]


def test_watch_follows_adds_renames_deletes_and_edits_loading_the_model_once(demo, tmp_path):
    from pixdex.encoders.encoder import load_encoder
    from pixdex.indexer.watch import watch_paths
    from pixdex.search.engine import SearchEngine

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):
        shutil.copy(demo / f"img_{i:05d}.png", photos)
    store = photos / "store"  # inside the watched root: its own writes must not wake the watch
    loads = []

    def loader(spec, checkpoint, device, towers):
        loads.append(towers)
        return load_encoder(spec, checkpoint=checkpoint, device=device, towers=towers)

    runs: list[dict] = []
    stop = threading.Event()
    result = {}

    def target():
        result["totals"] = watch_paths(
            [photos],
            store,
            model=MODEL,
            quiet_s=QUIET_S,
            stop_event=stop,
            encoder_loader=loader,
            on_run=lambda b, s, e: runs.append(s if s is not None else {"error": e}),
        )

    th = threading.Thread(target=target, daemon=True)
    th.start()
    try:
        state = _wait(lambda: runs and _store_state(store, photos), "the catch-up run")
        assert sorted(state) == [f"img_{i:05d}.png" for i in range(5)]

        # added
        for i in (5, 6, 7):
            shutil.copy(demo / f"img_{i:05d}.png", photos)
        state = _wait(lambda: (s := _store_state(store, photos)) and len(s) == 8 and s, "3 added files")
        new = photos / "img_00006.png"
        assert state[new.name]["content_hash"] == content_hash(new.read_bytes())
        v = db_vector(store, state[new.name]["id"])
        assert float(v @ _reference_vector(new)) > 0.99
        engine = SearchEngine(store)
        try:
            hits = engine.search(engine.encode_image_files([str(new)])[0], k=3)
        finally:
            engine.close()
        assert hits[0].path == str(new) and hits[0].score > 0.99

        # renamed: same row, id and vector, nothing encoded
        old, moved = photos / "img_00001.png", photos / "renamed.png"
        before = state[old.name]
        v_before = db_vector(store, before["id"])
        encoded_before = sum(r.get("encoded", 0) for r in runs)
        os.rename(old, moved)
        state = _wait(
            lambda: (s := _store_state(store, photos)) and moved.name in s and old.name not in s and s,
            "the rename",
        )
        assert state[moved.name]["id"] == before["id"]
        assert np.array_equal(db_vector(store, before["id"]), v_before)
        assert sum(r.get("encoded", 0) for r in runs) == encoded_before

        # deleted
        gone = photos / "img_00002.png"
        gone_id = state[gone.name]["id"]
        gone.unlink()
        state = _wait(lambda: (s := _store_state(store, photos)) and gone.name not in s and s, "the delete")
        assert len(state) == 7 and gone_id not in faiss_ids(store).tolist()

        # modified: new bytes at the same path are encoded again
        edited = photos / "img_00003.png"
        edited.write_bytes((demo / "img_00009.png").read_bytes())
        want = content_hash(edited.read_bytes())
        state = _wait(
            lambda: (s := _store_state(store, photos)) and s[edited.name]["content_hash"] == want and s,
            "the edit",
        )
        v = db_vector(store, state[edited.name]["id"])
        assert float(v @ _reference_vector(edited)) > 0.99
        assert sorted(state) == sorted(p.name for p in photos.iterdir() if p.is_file())
    finally:
        stop.set()
        th.join(timeout=30)
    assert not th.is_alive()
    totals = result["totals"].as_dict()
    assert totals["interrupted"] is False and totals["errors"] == 0
    assert totals["new"] >= 3 and totals["moved"] == 1 and totals["deleted"] == 1 and totals["total"] == 7
    assert len(loads) == 1, loads  # one model load for the catch-up and every batch that encoded


def test_watch_respects_the_store_lock(demo, tmp_path):
    from pixdex.indexer.watch import watch_paths
    from pixdex.storage.store import StoreLock

    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(demo / "img_00000.png", photos)
    store = tmp_path / "store"
    store.mkdir()
    lock = StoreLock(store)
    lock.acquire()  # another indexer is running: the watch does not start
    try:
        with pytest.raises(PixdexError) as e:
            watch_paths([photos], store, model=MODEL, quiet_s=QUIET_S, max_batches=1)
        assert e.value.exit_code == 3 and "already running" in str(e.value)
    finally:
        lock.release()

    # locked while a batch is due: the batch waits for the lock, the watch goes on
    runs: list = []
    stop = threading.Event()
    result = {}
    th = threading.Thread(
        target=lambda **kw: result.setdefault("totals", watch_paths([photos], store, **kw)),
        kwargs=dict(
            model=MODEL,
            quiet_s=QUIET_S,
            retry_s=0.3,
            stop_event=stop,
            max_batches=5,
            on_run=lambda b, s, e: runs.append((b, s, e)),
        ),
        daemon=True,
    )
    th.start()
    try:
        _wait(lambda: runs, "the catch-up run")
        lock.acquire()
        try:
            shutil.copy(demo / "img_00001.png", photos)
            _wait(lambda: any(e is not None for _, _, e in runs), "a batch refused by the lock")
            assert _store_state(store, photos).keys() == {"img_00000.png"}
        finally:
            lock.release()
        _wait(lambda: any(b and s and s["new"] for b, s, _ in runs), "the batch after the lock is released")
        assert _store_state(store, photos).keys() == {"img_00000.png", "img_00001.png"}
        errors = [e for _, _, e in runs if e is not None]
        assert all(e.exit_code == 3 for e in errors)
    finally:
        stop.set()
        th.join(timeout=30)
    totals = result["totals"]
    assert totals.batches == 1 and totals.errors == len(errors) >= 1 and totals.counts["new"] == 1


def test_bad_arguments_fail_before_anything_is_created(tmp_path):
    from pixdex.indexer.watch import watch_paths

    store = tmp_path / "store"
    with pytest.raises(PixdexError, match="no such file or folder"):
        watch_paths([tmp_path / "missing"], store, model=MODEL)
    (tmp_path / "photos").mkdir()
    with pytest.raises(PixdexError, match="--debounce"):
        watch_paths([tmp_path / "photos"], store, model=MODEL, quiet_s=0)
    assert not store.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a subprocess")
def test_sigint_ends_a_real_watch_with_130_and_a_summary(demo, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(demo / "img_00000.png", photos)
    store = photos / "store"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "pixdex", "watch", str(photos), "--store", str(store), "--model", MODEL]
    cmd += ["--json", "--debounce", str(QUIET_S)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    errs: list[str] = []
    threading.Thread(target=lambda: errs.extend(proc.stderr), daemon=True).start()

    def next_line(timeout=60.0) -> dict:
        return json.loads(lines.get(timeout=timeout))

    try:
        first = next_line()
        assert first["batch"] == 0 and first["new"] == 1 and first["total"] == 1
        shutil.copy(demo / "img_00001.png", photos / "added.png")
        second = next_line()
        assert second["batch"] == 1 and second["new"] == 1 and second["total"] == 2 and second["events"] >= 1
        with pytest.raises(queue.Empty):  # the store's own writes start no batch
            lines.get(timeout=4 * QUIET_S + 1.5)
        t = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        assert time.monotonic() - t < 10
    finally:
        if proc.poll() is None:
            proc.kill()
    last = next_line(5)["watch"]
    err = "".join(errs)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert last["interrupted"] and last["batches"] == 1 and last["new"] == 1 and last["total"] == 2
    assert sorted(Path(p).name for p in db_rows(store)) == ["added.png", "img_00000.png"]


def test_the_cli_names_a_batchs_failed_files_and_sizes_batches_as_index_does(monkeypatch, tmp_path):
    """`pixdex watch` prints the failed files of a batch as `pixdex index` does, and its --batch-size and
    --workers defaults are index's (0: automatic), passed through to the watch."""
    import typer.main
    from typer.testing import CliRunner

    import pixdex.indexer.watch as watch_mod
    from pixdex.cli import app
    from pixdex.errors import ExitCode

    store = tmp_path / "store"
    bad = str(tmp_path / "broken.jpg")
    got: dict = {}

    def fake_watch_paths(paths, store_dir, on_run, **kw):
        got.update(kw)
        totals = watch_mod.WatchTotals()
        base = {k: 0 for k in watch_mod.COUNTED} | {"store": str(store_dir), "total": 1, "elapsed_s": 0.1}
        on_run(0, {**base, "new": 1}, None)
        summary = {**base, "new": 1, "failed": 1, "failed_paths": [{"path": bad, "reason": "truncated"}]}
        on_run(1, summary, None)
        totals.add(summary)
        totals.batches, totals.interrupted = 1, True
        return totals

    monkeypatch.setattr(watch_mod, "watch_paths", fake_watch_paths)
    r = CliRunner().invoke(app, ["watch", str(tmp_path), "--store", str(store)])
    assert r.exit_code == ExitCode.INTERRUPTED, r.output
    assert f"failed: {bad}: truncated" in r.output
    assert f"pixdex status --failed --store {store}" in r.output

    def defaults(name: str) -> dict:
        cmd = typer.main.get_command(app).commands[name]
        return {p.name: p.default for p in cmd.params}

    index_defaults, watch_defaults = defaults("index"), defaults("watch")
    for option in ("batch_size", "workers"):
        assert watch_defaults[option] == index_defaults[option] == got[option]

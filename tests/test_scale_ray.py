"""``pixdex index --ray`` / ``pixdex dataset dedup --ray`` on a local Ray (``ray.init(num_cpus=2)``).

The reference is the plain path on the same folder: the same rows (status, error, hash, size, EXIF
metadata, copy hashes) and the same vectors (cosine >= 0.9999); a driver killed mid-run leaves a
store that a rerun completes, encoding only what was neither committed nor staged. One Ray session for
the module (starting Ray costs seconds); the folders are small. Skipped without Ray.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from index_support import SHARED_DATA, assert_consistent, db_rows, make_images  # noqa: E402

from pixdex.errors import PixdexError  # noqa: E402
from pixdex.indexer.run import index_paths  # noqa: E402

MODEL = "pixdex-demo"
COLS = ("status", "error", "content_hash", "size", "width", "height", "format", "taken_at", "camera_model")


@pytest.fixture(scope="module")
def ray_address():
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=200 * 1024 * 1024,
            log_to_driver=False,
        )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setenv("PIXDEX_RAY_SHARD_ROWS", "4")
    monkeypatch.setenv("PIXDEX_RAY_DECODE_ROWS", "4")


def vectors_by_path(store: Path) -> dict[str, np.ndarray]:
    con = sqlite3.connect(f"{(store / 'pixdex.db').resolve().as_uri()}?mode=ro", uri=True)
    try:
        q = "SELECT images.path, vectors.vector FROM images JOIN vectors ON vectors.image_id = images.id"
        return {p: np.frombuffer(v, "<f4") for p, v in con.execute(q)}
    finally:
        con.close()


def copy_hashes_by_path(store: Path) -> dict[str, tuple]:
    con = sqlite3.connect(f"{(store / 'pixdex.db').resolve().as_uri()}?mode=ro", uri=True)
    try:
        q = "SELECT images.path, pdq, quality FROM images JOIN copy_hashes ON copy_hashes.image_id = images.id"
        return {p: (h, qu) for p, h, qu in con.execute(q)}
    finally:
        con.close()


def assert_same_stores(plain: Path, scaled: Path) -> None:
    a, b = db_rows(plain), db_rows(scaled)
    assert sorted(a) == sorted(b)
    for p in a:
        assert tuple(a[p][c] for c in COLS) == tuple(b[p][c] for c in COLS), p
    va, vb = vectors_by_path(plain), vectors_by_path(scaled)
    assert sorted(va) == sorted(vb)
    cos = np.array([float(va[p] @ vb[p]) for p in va])
    assert cos.min() >= 0.9999, (cos.min(), [p for p, c in zip(va, cos) if c < 0.9999][:3])
    assert copy_hashes_by_path(plain) == copy_hashes_by_path(scaled)
    assert_consistent(scaled, list(b))


def index(folder: Path, store: Path, ray_address=None) -> dict:
    return index_paths([folder], store, model=MODEL, device="cpu", json_mode=True, ray=ray_address)


def test_ray_path_equals_plain_path_on_demo_data(ray_address, small_shards, tmp_path):
    from pixdex.training.demo_data import generate

    generate(tmp_path / "photos", n=20, seed=21, image_size=64)
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (tmp_path / "photos" / "empty.png").write_bytes(b"")
    plain = index(tmp_path / "photos", tmp_path / "plain")
    scaled = index(tmp_path / "photos", tmp_path / "ray", ray_address)
    assert scaled["failed"] == plain["failed"] == 2  # failed files are failed rows, as in a plain run
    assert scaled["failures"] == plain["failures"]
    assert scaled["ray"]["encoded"] == scaled["encoded"] == 20 and scaled["ray"]["shards"] >= 5
    assert not list((tmp_path / "ray" / "staging").iterdir())  # every shard ingested and removed
    assert_same_stores(tmp_path / "plain", tmp_path / "ray")
    # unchanged folder: nothing for Ray to do; a new file and a copy of an old one: one encode
    (tmp_path / "photos" / "copy.png").write_bytes(next((tmp_path / "photos").glob("*.png")).read_bytes())
    make_images(tmp_path / "photos", 1, seed=5, start=900)
    again = index(tmp_path / "photos", tmp_path / "ray", ray_address)
    assert again["new"] == 2 and again["encoded"] == 1 and again["reused_vectors"] == 1
    index(tmp_path / "photos", tmp_path / "plain")
    assert_same_stores(tmp_path / "plain", tmp_path / "ray")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent")
def test_ray_path_equals_plain_path_on_shared_data(ray_address, small_shards, tmp_path):
    plain = index(SHARED_DATA, tmp_path / "plain")
    scaled = index(SHARED_DATA, tmp_path / "ray", ray_address)
    assert (scaled["found"], scaled["failed"]) == (plain["found"], plain["failed"])
    assert scaled["failed"] > 0  # ../shared/data/corrupt
    assert_same_stores(tmp_path / "plain", tmp_path / "ray")


DRIVER = """
import sys, time
import pixdex.scale.index as si
read = si.read_shard
def slow(*a, **k):  # a slow writer, so that the test can kill it mid-run
    time.sleep(0.5)
    return read(*a, **k)
si.read_shard = slow
from pixdex.indexer.run import index_paths
index_paths([sys.argv[1]], sys.argv[2], model="pixdex-demo", device="cpu", json_mode=True, ray=sys.argv[3])
"""


def ok_paths(store: Path) -> set[str]:
    if not (store / "pixdex.db").exists():
        return set()
    try:
        return {p for p, r in db_rows(store).items() if r["status"] == "ok"}
    except sqlite3.OperationalError:  # not created yet
        return set()


def test_resume_after_killing_the_driver(ray_address, tmp_path):
    n = 40
    make_images(tmp_path / "photos", n, seed=8)
    store = tmp_path / "store"
    env = dict(os.environ, PIXDEX_RAY_SHARD_ROWS="3", PIXDEX_RAY_DECODE_ROWS="3")
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path / "photos"), str(store), ray_address],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300
        while len(ok_paths(store)) < 6:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the driver committed nothing in 300 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(60)
        proc.stderr.close()
    committed = ok_paths(store)
    assert 6 <= len(committed) < n, "killed too late to test a resume"
    summary = index(tmp_path / "photos", store, ray_address)
    r = summary["ray"]
    # nothing lost, nothing encoded twice: committed + staged by the killed run + encoded now = all
    assert len(committed) + r["resumed_vectors"] + r["encoded"] == n, (len(committed), r)
    assert r["encoded"] <= n - len(committed) and r["local"] == 0
    index(tmp_path / "photos", tmp_path / "plain")
    assert_same_stores(tmp_path / "plain", store)


def test_a_shard_of_another_model_is_refused(ray_address, tmp_path):
    from pixdex.scale.shards import staging_dir, write_shard
    from pixdex.storage.store import Store

    make_images(tmp_path / "photos", 2, seed=9)
    index(tmp_path / "photos", tmp_path / "store")
    with Store.open_readonly(tmp_path / "store") as s:
        ident = dict(s.identity)
    other = dict(ident, model="other", checkpoint_sha256="f" * 64)
    write_shard(staging_dir(tmp_path / "store"), ["x"], [{}], [np.ones(ident["dim"], np.float32)], other, 1)
    make_images(tmp_path / "photos", 1, seed=10, start=50)
    with pytest.raises(PixdexError, match="holds vectors of model 'other'") as e:
        index(tmp_path / "photos", tmp_path / "store", ray_address)
    assert "\n" not in str(e.value)


def test_cli_index_ray_json(ray_address, tmp_path):
    from dedup_support import run_cli

    make_images(tmp_path / "photos", 3, seed=12)
    rc, out, err = run_cli(
        "index", str(tmp_path / "photos"), "--store", str(tmp_path / "s"), "--model", MODEL,
        "--device", "cpu", "--ray", ray_address, "--json",
    )  # fmt: skip
    assert rc == 0, err[-2000:]
    assert json.loads(out)["ray"]["encoded"] == 3


def test_dataset_dedup_ray_equals_plain(ray_address, small_shards, tmp_path):
    import csv

    from pixdex.dataset.api import dedup, summary_of
    from pixdex.dataset.store import EmbeddingStore
    from pixdex.training.demo_data import generate

    manifest = generate(tmp_path / "demo", n=10, seed=31, image_size=64)
    (tmp_path / "demo" / "broken.png").write_bytes(b"\x89PNG broken")
    with open(manifest, "a", newline="") as f:
        csv.writer(f).writerow(["broken.png", "a red circle", "", ""])
    kw = dict(model=MODEL, device="cpu", progress=False)
    plain = dedup(manifest, out=tmp_path / "plain", **kw)
    scaled = dedup(manifest, out=tmp_path / "ray", ray=ray_address, **kw)
    for col in ("key", "labels", "duplicate_of", "error", "kept"):
        assert scaled.column(col).to_pylist() == plain.column(col).to_pylist(), col
    assert summary_of(scaled)["embeddings"]["unreadable"] == 1
    with (
        EmbeddingStore.open(tmp_path / "plain" / "store") as a,
        EmbeddingStore.open(tmp_path / "ray" / "store") as b,
    ):
        assert a.known_images() == b.known_images() and a.known_captions() == b.known_captions()
        hashes, texts = sorted(a.known_images()), sorted(a.known_captions())
        dim = a.identity["dim"]
        va, ea = a.image_vectors(hashes, dim)
        vb, eb = b.image_vectors(hashes, dim)
        assert ea == eb and len(ea) == 1
        ok = [k for k in range(len(hashes)) if k not in ea]
        assert np.einsum("ij,ij->i", va[ok], vb[ok]).min() >= 0.9999
        ca, cb = a.caption_vectors(texts, dim), b.caption_vectors(texts, dim)
        assert np.einsum("ij,ij->i", ca, cb).min() >= 0.9999
        assert a.copy_hashes(hashes).keys() == b.copy_hashes(hashes).keys()
    # a second run encodes nothing
    again = dedup(manifest, out=tmp_path / "ray2", store=tmp_path / "ray" / "store", ray=ray_address, **kw)
    e = summary_of(again)["embeddings"]
    assert (e["images_encoded"], e["captions_encoded"]) == (0, 0)

"""`pixdex index`: incremental updates (new, changed, touched, moved, copied, deleted), model binding,
vectors equal to direct encoding, IVF, bad input never fatal, status."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from index_support import (
    SHARED_DATA,
    assert_consistent,
    db_rows,
    db_vector,
    faiss_ids,
    make_images,
    png_header,
)
from PIL import Image

from pixdex.errors import PixdexError
from pixdex.indexer.run import index_paths
from pixdex.storage.status import store_status

MODEL = "tiny-vit"


class Loader:
    """Wraps load_encoder: counts model loads and encoded images."""

    def __init__(self):
        self.loads = 0
        self.encoded = 0

    def __call__(self, spec, checkpoint, device, towers):
        from pixdex.encoders.encoder import load_encoder

        self.loads += 1
        enc = load_encoder(spec, checkpoint=checkpoint, device=device, towers=towers)
        inner = enc.encode_images

        def counted(batch):
            self.encoded += len(batch)
            return inner(batch)

        enc.encode_images = counted
        return enc


def run(paths, store, loader=None, **kw):
    kw.setdefault("model", MODEL)
    kw.setdefault("json_mode", True)
    kw.setdefault("batch_size", 8)
    return index_paths([Path(p) for p in paths], store_dir=store, encoder_loader=loader, **kw)


def bump_mtime(p: Path, seconds: int = 10) -> None:
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def test_first_index_stores_every_file_with_its_direct_embedding(tmp_path):
    from pixdex.encoders.encoder import load_encoder
    from pixdex.images import decode, read_file

    photos = make_images(tmp_path / "photos", 20)
    store = tmp_path / "store"
    s = run([tmp_path / "photos"], store)
    assert (s["new"], s["encoded"], s["failed"], s["total"]) == (20, 20, 0, 20)
    rows = assert_consistent(store, photos)
    enc = load_encoder(MODEL, towers=("image",))
    for p in photos[:5]:
        img, _ = decode(read_file(str(p)), enc.preprocess.draft_size[0])
        want = enc.encode_images(enc.preprocess(img)[None])[0]
        got = db_vector(store, rows[str(p)]["id"])
        assert abs(float(got @ want) - 1.0) < 1e-4
        assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-4
    r = rows[str(photos[0])]
    assert (r["width"], r["height"], r["format"], r["root"]) == (40, 32, "PNG", str(tmp_path / "photos"))
    info = store_status(store)
    assert info["indexed"] == 20 and info["faiss"]["agrees"] and info["faiss"]["type"] == "flat"
    assert info["model"] == MODEL and info["roots"] == {
        str(tmp_path / "photos"): {"indexed": 20, "failed": 0}
    }
    assert (store / "text_tower.safetensors").is_file()  # exported when the store was bound


def test_files_are_draft_decoded_to_the_model_size(tmp_path, monkeypatch):
    import pixdex.indexer.pipeline as pipeline
    from pixdex.dedup.perceptual import HASH_DRAFT

    seen = []
    real = pipeline.decode_many

    def spy(data, draft_sizes, name=""):
        images, info = real(data, draft_sizes, name)
        seen.append((tuple(draft_sizes), tuple(min(im.size) for im in images)))
        return images, info

    monkeypatch.setattr(pipeline, "decode_many", spy)
    Image.new("RGB", (2000, 1500), (90, 120, 150)).save(tmp_path / "big.jpg", quality=90)
    run([tmp_path / "big.jpg"], tmp_path / "store")  # a new store: the encoder's preprocessing
    Image.new("RGB", (1600, 1200), (10, 20, 30)).save(tmp_path / "big2.jpg", quality=90)
    run([tmp_path / "big2.jpg"], tmp_path / "store", model=None)  # bound: from the store's identity
    # tiny-vit's input size for the model; the perceptual hash's own size, whatever the model
    assert [d for d, _ in seen] == [(32, HASH_DRAFT), (32, HASH_DRAFT)]
    assert all(s[0] < 4 * 32 for _, s in seen)  # 1/8 DCT scale, not 1500 px
    assert all(HASH_DRAFT <= s[1] < 4 * HASH_DRAFT for _, s in seen)


def test_unchanged_folder_reads_nothing_and_loads_no_model(tmp_path):
    photos = make_images(tmp_path / "p", 2500, size=(8, 8))
    store = tmp_path / "store"
    run([tmp_path / "p"], store, batch_size=256)
    loader = Loader()
    s = run([tmp_path / "p"], store, loader, model=None)
    assert (s["unchanged"], s["encoded"], s["hashed"], s["new"], s["deleted"]) == (2500, 0, 0, 0, 0)
    assert loader.loads == 0 and loader.encoded == 0
    assert_consistent(store, photos)


def test_incremental_changes(tmp_path):
    folder = tmp_path / "p"
    photos = make_images(folder, 12)
    store = tmp_path / "store"
    run([folder], store)
    before = db_rows(store)
    # new files, a changed file, a touched file, a rename, a move to a subfolder, a copy, a deletion
    added = make_images(folder, 3, seed=7, start=100)
    changed = photos[0]
    Image.new("RGB", (40, 32), (250, 10, 10)).save(changed)
    bump_mtime(changed)
    touched = photos[1]
    bump_mtime(touched)
    renamed = folder / "renamed.png"
    photos[2].rename(renamed)
    (folder / "sub").mkdir()
    moved = folder / "sub" / photos[3].name
    photos[3].rename(moved)
    copied = folder / "copy.png"
    shutil.copy2(photos[4], copied)
    photos[5].unlink()
    loader = Loader()
    s = run([folder], store, loader, model=None)
    assert (s["new"], s["updated"], s["moved"], s["deleted"], s["reused_vectors"]) == (4, 1, 2, 1, 1)
    assert s["encoded"] == loader.encoded == 4  # 3 new + 1 changed; no move, touch or copy is encoded
    assert s["hashed"] == 3 + 1 + 1 + 2 + 1
    expected = [*added, changed, touched, renamed, moved, copied, *photos[4:5], *photos[6:]]
    rows = assert_consistent(store, expected)
    assert rows[str(renamed)]["id"] == before[str(photos[2])]["id"]  # a move keeps its id and vector
    assert rows[str(moved)]["id"] == before[str(photos[3])]["id"]
    assert rows[str(touched)]["id"] == before[str(touched)]["id"]
    assert rows[str(touched)]["mtime_ns"] == touched.stat().st_mtime_ns
    assert rows[str(changed)]["id"] > max(r["id"] for r in before.values())  # new content: new id
    assert before[str(changed)]["id"] not in faiss_ids(store)
    old_vec = db_vector(store, before[str(photos[4])]["id"])
    assert np.array_equal(db_vector(store, rows[str(copied)]["id"]), old_vec)
    assert rows[str(copied)]["width"] == 40  # metadata copied with the vector
    again = run([folder], store, Loader(), model=None)
    assert (again["encoded"], again["hashed"], again["unchanged"]) == (0, 0, len(expected))


def test_roots_are_independent_and_missing_roots_fail(tmp_path):
    a = make_images(tmp_path / "a", 3)
    b = make_images(tmp_path / "b", 2, seed=1)
    store = tmp_path / "store"
    run([tmp_path / "a"], store)
    run([tmp_path / "b"], store)
    assert_consistent(store, a + b)  # indexing b did not delete a
    assert set(store_status(store)["roots"]) == {str(tmp_path / "a"), str(tmp_path / "b")}
    with pytest.raises(PixdexError, match="no such file or folder"):
        run([tmp_path / "a", tmp_path / "gone"], store)
    assert_consistent(store, a + b)


def test_an_emptied_root_keeps_its_rows(tmp_path):
    """An unmounted drive leaves an empty mount point: that must not wipe its images from the store."""
    a = make_images(tmp_path / "mnt" / "drive", 3)
    store = tmp_path / "store"
    run([tmp_path / "mnt" / "drive"], store)
    for p in a:
        p.unlink()
    s = run([tmp_path / "mnt" / "drive"], store, model=None)
    assert s["deleted"] == 0 and s["kept_from_empty_roots"] == {str(tmp_path / "mnt" / "drive"): 3}
    assert_consistent(store, a)
    make_images(tmp_path / "mnt" / "drive", 1, seed=9, start=50)  # back to normal: deletions happen
    s = run([tmp_path / "mnt" / "drive"], store, model=None)
    assert (s["deleted"], s["new"]) == (3, 1)


def test_model_binding_and_default_model(tmp_path):
    make_images(tmp_path / "p", 2)
    store = tmp_path / "store"
    run([tmp_path / "p"], store)
    with pytest.raises(PixdexError, match="bound to model 'tiny-vit'"):
        run([tmp_path / "p"], store, model="tiny-rn")
    make_images(tmp_path / "p", 1, seed=3, start=50)
    s = run([tmp_path / "p"], store, model=None)  # the store's model
    assert s["model"] == MODEL and s["new"] == 1


def test_unknown_model_or_missing_weights_create_no_store(tmp_path):
    make_images(tmp_path / "p", 1)
    with pytest.raises(PixdexError, match="unknown model"):
        run([tmp_path / "p"], tmp_path / "store", model="no-such-model")
    with pytest.raises(PixdexError, match="checkpoint not found"):
        run([tmp_path / "p"], tmp_path / "store", checkpoint=tmp_path / "missing.safetensors")

    def broken_loader(*a):
        raise PixdexError("weights are corrupt")

    with pytest.raises(PixdexError, match="corrupt"):
        run([tmp_path / "p"], tmp_path / "store", broken_loader)
    with pytest.raises(PixdexError, match="no such file or folder"):
        run([tmp_path / "typo"], tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_a_write_error_is_one_clear_error_and_keeps_committed_batches(tmp_path, monkeypatch):
    import sqlite3 as sq

    from sqlalchemy.exc import OperationalError

    import pixdex.indexer.run as run_mod

    photos = make_images(tmp_path / "p", 20)
    real, calls = run_mod.apply_batch, []

    def flaky(store, batch, dim):
        calls.append(1)
        if len(calls) == 3:
            raise OperationalError("INSERT", {}, sq.OperationalError("database or disk is full"))
        return real(store, batch, dim)

    monkeypatch.setattr(run_mod, "apply_batch", flaky)
    with pytest.raises(PixdexError, match="cannot write the store database .*disk is full"):
        run([tmp_path / "p"], tmp_path / "store", batch_size=4)
    assert len(db_rows(tmp_path / "store")) == 8  # two batches committed before the failure
    monkeypatch.setattr(run_mod, "apply_batch", real)
    s = run([tmp_path / "p"], tmp_path / "store", model=None, batch_size=4)
    assert (s["new"], s["unchanged"]) == (12, 8)
    assert_consistent(tmp_path / "store", photos)


def test_lock_held_by_another_indexer(tmp_path):
    from pixdex.storage.store import Store

    make_images(tmp_path / "p", 1)
    holder = Store.open_writer(tmp_path / "store")
    try:
        with pytest.raises(PixdexError, match="already running"):
            run([tmp_path / "p"], tmp_path / "store")
    finally:
        holder.close()


def test_ivf_index_with_a_small_threshold(tmp_path):
    photos = make_images(tmp_path / "p", 160, size=(16, 16))
    store = tmp_path / "store"
    s = run([tmp_path / "p"], store, ivf_threshold=100, batch_size=64)
    assert s["faiss"]["type"] == "ivf" and s["faiss"]["nlist"] >= 2 and s["faiss"]["ntotal"] == 160
    rows = assert_consistent(store, photos)
    from pixdex.storage.store import Store

    r = Store.open_readonly(store)
    try:
        vi = r.load_faiss()
        some = [rows[str(p)]["id"] for p in photos[:10]]
        _, vecs = r.vectors(some)
        _, labels = vi.search(vecs, 1, nprobe=vi.nlist)
        assert labels[:, 0].tolist() == some
    finally:
        r.close()
    assert store_status(store)["faiss"]["agrees"]


def _bad_folder(root: Path) -> dict:
    """A folder of hostile files; returns {name: expected reason fragment} for the stored failures."""
    root.mkdir()
    good = make_images(root, 2)
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.png").write_text("not an image at all\n")
    data = good[0].read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (300, 200), (10, 20, 30)).save(root / "big.jpg", quality=95)
    big = (root / "big.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(big[: len(big) // 3])
    (root / "bomb.png").write_bytes(png_header(30000, 30000))
    (root / "café ☕ 日本.png").write_bytes(good[1].read_bytes()[:-1] + b"\x00")  # unicode name, odd bytes
    (root / "new\nline.png").write_bytes(data)  # a newline in the name (a copy of a good file)
    expect = {
        "zero.jpg": "empty",
        "text.png": "identify",
        "truncated.png": "truncated",
        "cut.jpg": "truncated",
        "bomb.png": "bomb",
    }
    if sys.platform != "win32":
        os.symlink(root, root / "loop")
        os.symlink(root / "nowhere.jpg", root / "broken.jpg")
        with open(os.path.join(os.fsencode(root), b"bad\xff.jpg"), "wb") as f:
            f.write(data)
        if os.geteuid() != 0:  # root reads anything: chmod 000 blocks nobody
            (root / "locked.png").write_bytes(data + b"x")
            os.chmod(root / "locked.png", 0)
            expect["locked.png"] = "permission denied"
    return expect


def test_bad_input_is_recorded_and_never_fatal(tmp_path):
    expect = _bad_folder(tmp_path / "bad")
    store = tmp_path / "store"
    s = run([tmp_path / "bad"], store)
    rows = {Path(p).name: r for p, r in db_rows(store).items()}
    for name, frag in expect.items():
        assert rows[name]["status"] == "failed", name
        assert frag in rows[name]["error"], (name, rows[name]["error"])
    assert rows["new\nline.png"]["status"] == "ok"
    assert "café ☕ 日本.png" in rows
    scan_problems = 2 if sys.platform != "win32" else 0  # broken link, undecodable name
    if sys.platform != "win32":  # the link to the root itself is a note, not a failure
        assert [Path(n["path"]).name for n in s["notes"]] == ["loop"]
    assert s["failed"] == len(expect) + scan_problems + (rows["café ☕ 日本.png"]["status"] == "failed")
    counts = [r["count"] for r in s["failures"]]
    assert counts == sorted(counts, reverse=True) and sum(counts) <= s["failed"]
    stored = {r["reason"] for r in store_status(store)["failures"]}
    assert any("empty file" in r for r in stored)
    assert_consistent(store, [p for p in db_rows(store)])
    again = run([tmp_path / "bad"], store, Loader(), model=None)  # failures are not retried unchanged
    assert again["encoded"] == 0 and again["hashed"] == 0


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared test data not present")
def test_shared_data_via_cli_exit_0_and_exif_photos_agree(tmp_path):
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    model = "pixdex-demo" if _demo_available() else MODEL
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pixdex",
            "index",
            str(SHARED_DATA),
            "--store",
            str(store),
            "--model",
            model,
            "--json",
            "--batch-size",
            "16",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    import json

    s = json.loads(p.stdout)
    assert s["failed"] == 1 and "cannot identify" in s["failures"][0]["reason"]  # the truncated JPEG
    rows = db_rows(store)
    exif = sorted(str(SHARED_DATA / "exif" / f"exif-rotn-{k}.jpg") for k in (1, 3, 6, 8))
    vecs = np.stack([db_vector(store, rows[p]["id"]) for p in exif])
    # The four files are different shots (two landscape, two portrait once upright), so no small model
    # puts them within 0.99 of each other; what orientation must give is checked per file instead:
    # stored (draft-decoded, oriented) == the upright full-size photo; the unrotated pixels are not.
    from PIL import ImageOps

    from pixdex.encoders.encoder import load_encoder

    enc = load_encoder(model, towers=("image",))
    for path, v in zip(exif, vecs):
        with Image.open(path) as im:
            upright = enc.encode_images(enc.preprocess(ImageOps.exif_transpose(im).convert("RGB"))[None])[0]
            raw = enc.encode_images(enc.preprocess(im.convert("RGB"))[None])[0]
        assert float(v @ upright) >= 0.99
        if not path.endswith("-1.jpg"):
            assert float(v @ raw) < min(0.99, float(v @ upright))
    assert rows[exif[0]]["taken_at"] == "2017-11-07 22:14:15" and rows[exif[0]]["camera_make"] == "samsung"
    st = subprocess.run(
        [sys.executable, "-m", "pixdex", "status", "--store", str(store), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    info = json.loads(st.stdout)
    assert info["faiss"]["agrees"] and info["failed"] == 1 and info["indexed"] == s["total"]
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "pixdex",
            "index",
            str(SHARED_DATA),
            "--store",
            str(store),
            "--model",
            "no-such-model",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def _demo_available() -> bool:
    from pixdex.encoders import registry

    try:
        return registry.demo_weights_path().is_file()
    except (AttributeError, OSError):
        return False


def test_search_reads_while_indexing_commits(tmp_path):
    """A reader sees committed batches (WAL) while the writer holds the store."""
    photos = make_images(tmp_path / "p", 30)
    store = tmp_path / "store"
    run([tmp_path / "p"], store, batch_size=8)
    make_images(tmp_path / "p", 10, seed=5, start=200)
    from pixdex.storage.store import Store

    w = Store.open_writer(store)
    try:
        con = sqlite3.connect(f"{(store / 'pixdex.db').resolve().as_uri()}?mode=ro", uri=True)
        with w.session() as s, s.begin():
            s.execute(__import__("sqlalchemy").text("DELETE FROM vectors WHERE image_id = 1"))
            assert con.execute("SELECT count(*) FROM vectors").fetchone()[0] == 30  # uncommitted: unseen
            s.rollback()
        con.close()
    finally:
        w.close()
    assert_consistent(store, photos)

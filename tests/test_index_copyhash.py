"""`pixdex index` and dedup's copy hashes: stored with each row, independent of the model, backfilled for
stores made without them (no model load, no re-encoding, crash-safe batches, unhashable files marked)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from index_support import assert_consistent, db_rows, make_images
from test_index import run

from pixdex.dedup import perceptual
from pixdex.images import DecodeError, decode, decode_many, read_file
from pixdex.storage.store import Store


def fresh(path) -> np.ndarray:
    """The reference: the file decoded at the hash's own draft size, hashed directly."""
    return perceptual.copy_hash_array(decode(read_file(str(path)), perceptual.HASH_DRAFT)[0]).rows


def stored(store) -> dict[str, np.ndarray]:
    """path -> stored copy hashes, through the read API."""
    s = Store.open_readonly(store)
    try:
        ids, hashes, _ = s.copy_hashes()
        paths = {i: r.path for i, r in s.rows(ids).items()}
    finally:
        s.close()
    return {paths[int(i)]: h for i, h in zip(ids, hashes)}


def no_model(*a, **k):
    raise AssertionError("the backfill pass must not load the model")


@pytest.fixture
def photos(tmp_path):
    """JPEGs large enough that the model's draft and the hash's draft decode at different scales."""
    return make_images(tmp_path / "p", 6, size=(700, 500), ext="jpg")


def test_every_ok_row_has_hashes_of_its_file_whatever_the_model(tmp_path, photos):
    (tmp_path / "p" / "broken.jpg").write_bytes(b"not an image")
    by_model = {}
    for model in ("tiny-vit", "tiny-rn"):  # inputs of 32 and 64 px: different JPEG drafts for the model
        store = tmp_path / f"store-{model}"
        copy = tmp_path / "p" / "same_bytes.jpg"
        copy.unlink(missing_ok=True)
        s = run([tmp_path / "p"], store, model=model, workers=2)
        assert (s["encoded"], s["hashed_copy"], s["failed"]) == (len(photos), 0, 1)
        shutil.copy(photos[0], copy)  # a copy of a known file takes its hashes with its vector
        s = run([tmp_path / "p"], store, model=None, loader=no_model)
        assert (s["reused_vectors"], s["encoded"], s["hashed_copy"]) == (1, 0, 0)
        files = sorted((tmp_path / "p").iterdir())
        rows = assert_consistent(store, files)
        got = stored(store)
        ok = [str(p) for p in files if rows[str(p)]["status"] == "ok"]
        assert sorted(got) == sorted(ok)
        for p in ok:
            assert (got[p] == fresh(p)).all(), p
        by_model[model] = got
    a, b = by_model.values()
    assert all((a[p] == b[p]).all() for p in a)  # the same bytes in both stores
    assert perceptual.COPY_ROWS >= 8 and a[ok[0]].shape == (perceptual.COPY_ROWS, perceptual.COPY_NBYTES)


def test_decode_many_gives_the_pixels_of_each_draft(tmp_path, photos):
    drafts = (32, 64, perceptual.HASH_DRAFT, None)
    for p in photos[:2] + make_images(tmp_path / "png", 1, size=(1200, 900)):
        data = read_file(str(p))
        images, info = decode_many(data, drafts)
        for d, img in zip(drafts, images):
            ref, ref_info = decode(data, d)
            assert img.size == ref.size and img.tobytes() == ref.tobytes() and info == ref_info
    with pytest.raises(DecodeError):
        decode_many(b"garbage", drafts)


def test_store_without_hashes_is_backfilled_without_the_model(tmp_path, photos, monkeypatch):
    import pixdex.indexer.backfill as backfill

    other = make_images(tmp_path / "q", 3, seed=7, size=(300, 200), ext="jpg")
    store = tmp_path / "store"
    monkeypatch.setenv("PIXDEX_COPY_HASHES", "0")  # as a pixdex without copy hashes made the store
    run([tmp_path / "p", tmp_path / "q"], store)
    assert stored(store) == {}
    vectors_before = {p: (r["id"], r["indexed_at"]) for p, r in db_rows(store).items()}
    monkeypatch.delenv("PIXDEX_COPY_HASHES")
    reads = []
    real_read, real_decode = backfill.read_file, backfill.decode_many

    def counting_read(path):
        reads.append(path)
        return real_read(path)

    def failing_decode(data, drafts, name=""):
        if name == str(photos[1]):
            raise DecodeError("pretend this decoder cannot read it any more")
        return real_decode(data, drafts, name)

    monkeypatch.setattr(backfill, "read_file", counting_read)
    monkeypatch.setattr(backfill, "decode_many", failing_decode)
    monkeypatch.setattr(backfill, "BACKFILL_COMMIT", 2)
    # only root p is indexed now; q's rows lack hashes too and are backfilled (their files are unchanged)
    s = run([tmp_path / "p"], store, loader=no_model, model=None)
    assert (s["encoded"], s["hashed_copy"], s["copy_unhashable"]) == (0, len(photos) - 1 + 3, 1)
    assert sorted(reads) == sorted(str(p) for p in photos + other)
    assert {p: (r["id"], r["indexed_at"]) for p, r in db_rows(store).items()} == vectors_before
    got = stored(store)
    assert sorted(got) == sorted(str(p) for p in photos + other if p != photos[1])
    assert all((got[p] == fresh(p)).all() for p in got)
    with Store.open_readonly(store) as st:
        assert st.copy_hash_counts() == {"hashed": 8, "unhashable": 1, "missing": 0}
    reads.clear()
    again = run([tmp_path / "p", tmp_path / "q"], store, loader=no_model, model=None)
    assert (again["hashed_copy"], again["copy_unhashable"], reads) == (0, 0, [])  # the marker holds


def test_backfill_skips_files_changed_since_they_were_indexed(tmp_path, photos, monkeypatch):
    store = tmp_path / "store"
    monkeypatch.setenv("PIXDEX_COPY_HASHES", "0")
    run([tmp_path / "p"], store)
    monkeypatch.delenv("PIXDEX_COPY_HASHES")
    # photos[0] changes behind the store's back (same size and mtime: the scan cannot see it)
    st = photos[0].stat()
    data = bytearray(photos[0].read_bytes())
    data[-3] ^= 0xFF
    photos[0].write_bytes(bytes(data))
    import os

    os.utime(photos[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    s = run([tmp_path / "p"], store, loader=no_model, model=None)
    assert s["hashed_copy"] == len(photos) - 1
    assert str(photos[0]) not in stored(store)
    with Store.open_readonly(store) as st:
        assert st.copy_hash_counts()["missing"] == 1  # not marked: a later run may still hash it

"""`pixdex index` + `pixdex search` with a real (tiny, random-init) model: the torch-free text path gives
the torch ranking, combined queries follow the documented formula, image queries match stored vectors."""

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("faiss")
from PIL import Image
from search_support import search_probe

from pixdex.search.cli_search import run_search
from pixdex.search.store_view import StoreView

MODEL = "tiny-vit"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    from pixdex.encoders.encoder import load_encoder
    from pixdex.indexer.run import index_paths

    root = tmp_path_factory.mktemp("cli")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        arr = rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)
        arr[: 10 + i] = (40 * (i % 6), 255 - 12 * i, 17 * i % 255)
        Image.fromarray(arr).save(photos / f"img_{i:02d}.png")
    store = root / "store"
    index_paths(
        [photos],
        store_dir=store,
        model=MODEL,
        checkpoint=None,
        device="cpu",
        batch_size=8,
        workers=1,
        json_mode=True,
    )
    enc = load_encoder(MODEL, device="cpu")
    view = StoreView(store)
    ids, vecs = view.all_vectors()
    rows = view.rows(ids)
    view.close()
    return store, enc, ids, vecs, {i: rows[i].path for i in ids.tolist()}


def _expected(q, ids, vecs, k):
    s = vecs @ q
    o = np.lexsort((ids, -s))[:k]
    return ids[o].tolist(), s[o]


def test_text_query_without_torch_equals_torch_ranking(indexed):
    store, enc, ids, vecs, paths = indexed
    query = "a green square on a white table"
    r, heavy = search_probe(query, "--store", str(store), "-k", "10", "--json")
    assert r.returncode == 0, r.stderr
    assert heavy == []  # no torch, no SQLAlchemy on the text-query path
    hits = json.loads(r.stdout)
    want_ids, want_scores = _expected(enc.encode_texts([query])[0], ids, vecs, 10)
    assert [h["id"] for h in hits] == want_ids
    np.testing.assert_allclose([h["score"] for h in hits], want_scores, atol=1e-5)
    assert [h["path"] for h in hits] == [paths[i] for i in want_ids]


def test_combined_weighted_query_follows_the_formula(indexed):
    store, enc, ids, vecs, _ = indexed
    hits = run_search(store, "red", k=16, texts=["2:a photo"], minus=["0.5:blue"], like=[int(ids[3])])
    t = enc.encode_texts(["red", "a photo", "blue"])
    q = t[0] + 2 * t[1] - 0.5 * t[2] + vecs[3]
    q /= np.linalg.norm(q)
    want_ids, want_scores = _expected(q.astype(np.float32), ids, vecs, 16)
    assert [h["id"] for h in hits] == want_ids
    np.testing.assert_allclose([h["score"] for h in hits], want_scores, atol=1e-5)


def test_image_query_matches_its_stored_vector(indexed):
    store, enc, ids, vecs, paths = indexed
    target = int(ids[5])
    by_image = run_search(store, images=[paths[target]], k=5)
    by_like = run_search(store, like=[target], k=5)
    assert by_image[0]["id"] == target and by_image[0]["score"] > 0.999
    assert [h["id"] for h in by_image] == [h["id"] for h in by_like]


def test_missing_text_tower_is_exported_once_through_torch(indexed, tmp_path):
    import shutil

    from pixdex.storage.contract import TEXT_TOWER_FILE, TEXT_TOWER_META

    store, enc, ids, vecs, _ = indexed
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    (copy / TEXT_TOWER_FILE).unlink()
    (copy / TEXT_TOWER_META).unlink()
    hits = run_search(copy, "a red circle", k=4)
    assert [h["id"] for h in hits] == _expected(enc.encode_texts(["a red circle"])[0], ids, vecs, 4)[0]
    assert (copy / TEXT_TOWER_FILE).is_file() and (copy / TEXT_TOWER_META).is_file()


def test_two_searches_exporting_the_missing_text_tower_at_once(indexed, tmp_path):
    """Both processes find no text tower and export it through torch at the same time: both answer, and
    the tower left in the store is whole (it loads and equals a fresh export, byte for byte)."""
    import os
    import shutil

    from pixdex.encoders.textexport import export_text_tower, load_text_encoder
    from pixdex.storage.contract import TEXT_TOWER_FILE, TEXT_TOWER_META

    store, enc, ids, vecs, _ = indexed
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    (copy / TEXT_TOWER_FILE).unlink()
    (copy / TEXT_TOWER_META).unlink()
    query = "a blue square"
    cmd = [sys.executable, "-m", "pixdex", "search", query, "--store", str(copy), "-k", "5", "--json"]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    want = _expected(enc.encode_texts([query])[0], ids, vecs, 5)[0]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert [h["id"] for h in json.loads(out)] == want
    fresh = tmp_path / "fresh"
    export_text_tower(enc, fresh)
    for name in (TEXT_TOWER_FILE, TEXT_TOWER_META):
        assert (copy / name).read_bytes() == (fresh / name).read_bytes(), name
    te = load_text_encoder(copy, enc.identity())
    np.testing.assert_allclose(te.encode_texts([query]), enc.encode_texts([query]), atol=1e-5)
    leftovers = [n for n in os.listdir(copy) if n.endswith(".tmp")]
    assert leftovers == []

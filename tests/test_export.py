"""``pixdex export`` / ``pixdex import``: clip-retrieval's layout and one parquet file, both ways.

The reference is the store itself, read with stdlib sqlite3 (tests/index_support.py): an export holds
its ``ok`` rows in id order with their vectors, read back with numpy and pyarrow alone; an import of it
gives the same rows and vectors; another model's vectors are refused.
"""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from index_support import db_rows

from pixdex.errors import PixdexError
from pixdex.exchange.export import export_dataset, export_store
from pixdex.exchange.load import import_export

SEED = 11


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """A demo set indexed with pixdex-demo, with one broken file (a failed row)."""
    from pixdex.indexer.run import index_paths
    from pixdex.training.demo_data import generate

    root = tmp_path_factory.mktemp("export")
    generate(root / "photos", n=23, seed=SEED, image_size=64)
    (root / "photos" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    index_paths([root / "photos"], root / "store", model="pixdex-demo", device="cpu", json_mode=True)
    return root, root / "store"


def store_table(store) -> tuple[list[dict], np.ndarray]:
    """The ok rows by id and their vectors, straight from the database."""
    rows = sorted((r for r in db_rows(store).values() if r["status"] == "ok"), key=lambda r: r["id"])
    con = sqlite3.connect(f"{(store / 'pixdex.db').resolve().as_uri()}?mode=ro", uri=True)
    try:
        got = dict(con.execute("SELECT image_id, vector FROM vectors").fetchall())
    finally:
        con.close()
    return rows, np.stack([np.frombuffer(got[r["id"]], "<f4") for r in rows])


def test_npy_export_is_clip_retrieval_layout_in_small_shards(indexed, tmp_path):
    import pyarrow.parquet as pq

    _, store = indexed
    rows, vecs = store_table(store)
    assert len(rows) == 23  # the broken file is a failed row, left out
    info = export_store(store, tmp_path / "out", "npy", shard_rows=5, chunk_rows=3)
    assert info["count"] == 23 and [s["rows"] for s in info["shards"]] == [5, 5, 5, 5, 3]
    assert info["failed_rows_left_out"] == 1
    meta = json.loads((tmp_path / "out" / "pixdex_export.json").read_text())
    assert meta["model"]["model"] == "pixdex-demo" and meta["dim"] == vecs.shape[1] and meta["normalised"]
    img = np.concatenate([np.load(tmp_path / "out" / "img_emb" / f"img_emb_{k}.npy") for k in range(5)])
    md = [
        pq.read_table(tmp_path / "out" / "metadata" / f"metadata_{k}.parquet").to_pylist() for k in range(5)
    ]
    md = [r for part in md for r in part]
    assert img.dtype == np.float32 and np.array_equal(img, vecs)
    assert [r["image_path"] for r in md] == [r["path"] for r in rows]
    assert [r["content_hash"] for r in md] == [r["content_hash"] for r in rows]
    assert [(r["width"], r["height"], r["size"]) for r in md] == [
        (r["width"], r["height"], r["size"]) for r in rows
    ]


def test_parquet_export_has_a_fixed_size_vector_column(indexed, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, store = indexed
    rows, vecs = store_table(store)
    export_store(store, tmp_path / "out", "parquet", chunk_rows=4)
    t = pq.read_table(tmp_path / "out" / "embeddings.parquet")
    assert t.schema.field("vector").type == pa.list_(pa.float32(), vecs.shape[1])
    assert np.array_equal(np.stack(t.column("vector").to_numpy(zero_copy_only=False)), vecs)
    assert t.column("image_path").to_pylist() == [r["path"] for r in rows]


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_round_trip_equals_the_store(indexed, tmp_path, fmt):
    _, store = indexed
    export_store(store, tmp_path / "out", fmt, shard_rows=7, chunk_rows=4)
    summary = import_export(tmp_path / "out", tmp_path / "copy", chunk_rows=6)
    assert summary["added"] == 23 and summary["skipped_existing"] == 0
    rows, vecs = store_table(store)
    rows2, vecs2 = store_table(tmp_path / "copy")
    cols = ("path", "root", "size", "mtime_ns", "content_hash", "width", "height", "format", "taken_at")
    assert [tuple(r[c] for c in cols) for r in rows2] == [tuple(r[c] for c in cols) for r in rows]
    assert np.array_equal(vecs2, vecs)
    from index_support import assert_consistent

    assert_consistent(tmp_path / "copy", [r["path"] for r in rows])
    # a second import (or one resumed after a kill) adds nothing
    again = import_export(tmp_path / "out", tmp_path / "copy")
    assert again["added"] == 0 and again["skipped_existing"] == 23


def test_import_refuses_another_model(indexed, tmp_path):
    _, store = indexed
    export_store(store, tmp_path / "out", "npy")
    meta_path = tmp_path / "out" / "pixdex_export.json"
    meta = json.loads(meta_path.read_text())
    meta["model"] = dict(meta["model"], checkpoint_sha256="0" * 64, model="other")
    other = tmp_path / "other"
    other.mkdir()
    for name in ("img_emb", "metadata"):
        (other / name).symlink_to(tmp_path / "out" / name)
    (other / "pixdex_export.json").write_text(json.dumps(meta))
    import shutil

    shutil.copytree(store, tmp_path / "target")
    with pytest.raises(PixdexError, match="holds vectors of model 'other'") as e:
        import_export(other, tmp_path / "target")
    assert "\n" not in str(e.value)


def test_export_refuses_an_existing_export_and_an_empty_store(indexed, tmp_path):
    _, store = indexed
    export_store(store, tmp_path / "out", "npy")
    with pytest.raises(PixdexError, match="already holds an export"):
        export_store(store, tmp_path / "out", "npy")
    with pytest.raises(PixdexError, match="not a pixdex export"):
        import_export(tmp_path, tmp_path / "s")


def test_dataset_export_round_trip(tmp_path):
    """A dataset embedded by pixdex dataset dedup: image and caption vectors per row, back in a new
    embedding store equal to the first."""
    from pixdex.dataset.api import dedup
    from pixdex.dataset.store import EmbeddingStore
    from pixdex.training.demo_data import generate

    manifest = generate(tmp_path / "demo", n=12, seed=SEED, image_size=64)
    dedup(manifest, out=tmp_path / "dd", model="pixdex-demo", device="cpu", progress=False)
    info = export_dataset(manifest, tmp_path / "dd" / "store", tmp_path / "out", "npy", shard_rows=10)
    with EmbeddingStore.open(tmp_path / "dd" / "store") as s:
        counts = s.counts()
        dim = s.identity["dim"]
        md = []
        for k in range(len(info["shards"])):
            import pyarrow.parquet as pq

            md += pq.read_table(tmp_path / "out" / "metadata" / f"metadata_{k}.parquet").to_pylist()
        img = np.concatenate(
            [np.load(tmp_path / "out" / "img_emb" / f"img_emb_{k}.npy") for k in range(len(info["shards"]))]
        )
        txt = np.concatenate(
            [np.load(tmp_path / "out" / "text_emb" / f"text_emb_{k}.npy") for k in range(len(info["shards"]))]
        )
        ref_img, _ = s.image_vectors([r["content_hash"] for r in md], dim)
        ref_txt = s.caption_vectors([r["text_hash"] for r in md], dim)
    n_rows = sum(1 for _ in open(manifest)) - 1
    assert info["count"] == len(md) == n_rows and len(info["shards"]) == -(-n_rows // 10)
    assert np.array_equal(img, ref_img) and np.array_equal(txt, ref_txt)
    assert md[0]["caption"] and md[0]["image_path"]
    summary = import_export(tmp_path / "out", tmp_path / "emb2")
    assert summary["images_added"] == counts["images"] and summary["captions_added"] == counts["captions"]
    with EmbeddingStore.open(tmp_path / "emb2") as s2:
        assert np.array_equal(s2.image_vectors([r["content_hash"] for r in md], dim)[0], ref_img)
        assert np.array_equal(s2.caption_vectors([r["text_hash"] for r in md], dim), ref_txt)


def test_cli_export_and_import(indexed, tmp_path):
    from dedup_support import run_cli

    _, store = indexed
    rc, out, err = run_cli("export", "--store", str(store), "--out", str(tmp_path / "out"), "--json")
    assert rc == 0, err
    assert json.loads(out)["count"] == 23
    rc, out, err = run_cli("import", str(tmp_path / "out"), "--store", str(tmp_path / "copy"), "--json")
    assert rc == 0, err
    assert json.loads(out)["added"] == 23
    rc, out, err = run_cli("export", "--store", str(store), "--out", str(tmp_path / "o2"), "--format", "csv")
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o2").exists()


def test_an_export_folder_given_as_a_store_says_to_import_it(tmp_path):
    import shlex

    from pixdex.exchange.layout import EXPORT_META
    from pixdex.search.cli_search import run_search

    folder = tmp_path / "my export"
    folder.mkdir()
    (folder / EXPORT_META).write_text("{}")
    with pytest.raises(PixdexError, match="an export of a store") as e:
        run_search(folder, "a red circle")
    assert f"pixdex import {shlex.quote(str(folder))} --store NEW_STORE" in str(e.value)

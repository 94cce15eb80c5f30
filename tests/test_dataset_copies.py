"""The copy tier of ``pixdex dataset dedup`` (PDQ hashes in the embedding store, ``pixdex.dataset.copies``):
mirrored and slightly cropped copies of real photos (../shared/data/photos, all distinct; those under
``perceptual.MIN_QUALITY``, featureless sky, left out: the copy tier does not trust them) are labelled
``duplicate_pair`` / ``duplicate_image`` / ``contaminated`` with copy-tier evidence, with the semantic
tier held off (image and caption thresholds 0.9999) so that only the copy tier can link them; hashes are stored once
(a second run decodes and encodes nothing) and a store made without them is backfilled without
re-encoding.

Ground truth is how the rows were made (which photo each planted row copies), not the tier's output.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from dataset_support import labels_by_key

pa = pytest.importorskip("pyarrow")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MODEL = "pixdex-demo"
STRICT = 0.9999  # cosines: the semantic tiers link nothing in this test


def no_loader(*_a, **_k):
    raise AssertionError("the model must not be loaded: everything is in the store")


def dedup(*args, **kw):
    from pixdex.dataset import dedup as run

    kw.setdefault("model", MODEL)
    kw.setdefault("progress", False)
    kw.setdefault("image_threshold", STRICT)
    kw.setdefault("caption_threshold", STRICT)
    return run(*args, **kw)


def _save(im, path: Path, quality: int = 85) -> str:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality)
    path.write_bytes(buf.getvalue())
    return str(path)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from PIL import Image, ImageOps

    from pixdex.dedup import perceptual
    from pixdex.images import decode, read_file

    def trusted(p: Path) -> bool:  # near-flat photos (sky) take no part in the copy tier
        img = decode(read_file(str(p)), perceptual.HASH_DRAFT)[0]
        return perceptual.copy_hash_array(img).quality >= perceptual.MIN_QUALITY

    photos = sorted(p for p in (SHARED / "photos").glob("*.jpg")) if (SHARED / "photos").is_dir() else []
    photos = [p for p in photos if trusted(p)]
    if len(photos) < 16:
        pytest.skip("../shared/data is absent")
    root = tmp_path_factory.mktemp("copies")
    base, evals = photos[:10], photos[10:14]

    def crop(im, f=0.95):  # centred crop keeping a fraction f of each side
        w, h = im.size
        dx, dy = int(w * (1 - f) / 2), int(h * (1 - f) / 2)
        return im.crop((dx, dy, w - dx, h - dy))

    rows = [(f"b{k}", str(p), f"base photo number {k}") for k, p in enumerate(base)]
    truth = {"duplicate_pair": {}, "duplicate_image": {}, "contaminated": {}}
    plants = [  # (key, source, transform, same caption?)
        ("mirror_pair", 0, ImageOps.mirror, True),
        ("mirror_image", 1, ImageOps.mirror, False),
        ("crop_image", 2, crop, False),
        ("crop_pair", 3, lambda im: crop(im, 0.97), True),
        ("flip_image", 4, ImageOps.flip, False),
    ]
    for key, src, fn, same in plants:
        path = _save(fn(Image.open(base[src])), root / f"{key}.jpg")
        rows.append((key, path, rows[src][2] if same else f"another caption for {key}"))
        truth["duplicate_pair" if same else "duplicate_image"][key] = f"b{src}"
    leaks = [("leak_mirror", 0, ImageOps.mirror), ("leak_crop", 1, crop)]
    for key, src, fn in leaks:
        rows.append((key, _save(fn(Image.open(evals[src])), root / f"{key}.jpg"), f"caption of {key}"))
        truth["contaminated"][key] = f"e{src}"
    data = pa.table({k: [r[n] for r in rows] for n, k in enumerate(("key", "image", "caption"))})
    against = pa.table(
        {
            "key": [f"e{k}" for k in range(len(evals))],
            "image": [str(p) for p in evals],
            "caption": [f"evaluation item {k}" for k in range(len(evals))],
        }
    )
    return {"root": root, "data": data, "against": against, "truth": truth}


def _by_key(result) -> dict[str, dict]:
    return {r["key"]: r for r in result.to_pylist()}


def test_copies_are_labelled_through_the_copy_tier(planted):
    from pixdex.dataset.copies import copy_score

    res = dedup(planted["data"], key_col="key", against=planted["against"], store=planted["root"] / "s")
    rows, labels = _by_key(res), labels_by_key(res)
    floor = float(copy_score(31))
    for label in ("duplicate_pair", "duplicate_image"):
        for key, src in planted["truth"][label].items():
            r = rows[key]
            assert labels[key] == {label}, (key, labels[key])
            assert r["duplicate_of"] == src and r["image_tier"] == "copy", r
            assert floor <= r["image_score"] <= 1.0
    for key, src in planted["truth"]["contaminated"].items():
        r = rows[key]
        assert "contaminated" in labels[key] and not r["kept"], r
        assert r["contaminated_by"] == src and r["contaminated_tier"] == "image:copy", r
    planted_keys = set().union(*planted["truth"].values())
    assert not any(labels[k] for k in rows if k not in planted_keys), "a distinct photo got a label"
    s = __import__("pixdex.dataset", fromlist=["summary_of"]).summary_of(res)
    assert s["embeddings"]["images_with_copy_hashes"] == len(rows)

    # without the copy tier (and the semantic tier held off) none of the copies is found
    off = labels_by_key(
        dedup(
            planted["data"],
            key_col="key",
            against=planted["against"],
            store=planted["root"] / "s",
            copy_distance=None,
            encoder_loader=no_loader,
        )
    )
    image_labels = {"duplicate_pair", "duplicate_image", "contaminated"}
    assert not any(off[k] & image_labels for k in planted_keys)  # (same-caption rows: duplicate_caption)

    # a second run decodes and encodes nothing, and labels the same
    again = dedup(
        planted["data"],
        key_col="key",
        against=planted["against"],
        store=planted["root"] / "s",
        encoder_loader=no_loader,
    )
    e = __import__("pixdex.dataset", fromlist=["summary_of"]).summary_of(again)["embeddings"]
    assert e["images_encoded"] == e["copy_hashed"] == e["against_images_encoded"] == 0
    assert again.column("labels").to_pylist() == res.column("labels").to_pylist()


def test_store_without_copy_hashes_is_backfilled_without_encoding(planted, tmp_path, monkeypatch):
    from pixdex.dataset import summary_of
    from pixdex.dataset.store import EmbeddingStore

    monkeypatch.setenv("PIXDEX_COPY_HASHES", "0")  # a store as made before the copy tier
    first = dedup(planted["data"], key_col="key", store=tmp_path / "s")
    assert summary_of(first)["embeddings"]["images_with_copy_hashes"] == 0
    assert not any(labels_by_key(first)[k] for k in planted["truth"]["duplicate_image"])
    monkeypatch.delenv("PIXDEX_COPY_HASHES")
    second = dedup(planted["data"], key_col="key", store=tmp_path / "s", encoder_loader=no_loader)
    e = summary_of(second)["embeddings"]
    n = len(planted["data"])
    assert e["images_encoded"] == 0 and e["copy_hashed"] == n == e["images_with_copy_hashes"]
    labels = labels_by_key(second)
    for label in ("duplicate_pair", "duplicate_image"):
        assert all(labels[k] == {label} for k in planted["truth"][label])
    with EmbeddingStore.open(tmp_path / "s") as st:
        assert st.counts()["copy_hashes"] == n
        assert st.settled_images() == st.known_images()


def test_copy_distance_is_checked_and_shown():
    from pixdex.dataset.copies import DEFAULT_DISTANCE, copy_score
    from pixdex.dedup import perceptual
    from pixdex.errors import PixdexError

    assert DEFAULT_DISTANCE == perceptual.DEFAULT_DISTANCE["pdq"]
    assert np.allclose(copy_score([0, 31, 256]), [1.0, 1 - 31 / 256, 0.0])
    with pytest.raises(PixdexError, match="copy-distance"):
        dedup(pa.table({"image": ["x.jpg"], "caption": ["c"]}), copy_distance=300)

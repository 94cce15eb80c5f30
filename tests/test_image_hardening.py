"""Hostile images of issue 12: extreme aspect ratios, JPEGs whose header claims far more pixels than their
data holds, and exceptions of any type inside one file's processing; each fails that file, never the run."""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from index_support import assert_consistent, db_rows, make_images
from PIL import Image

from pixdex.encoders.config import PreprocessConfig
from pixdex.encoders.preprocess import Preprocessor
from pixdex.images import MAX_ASPECT_RATIO, DecodeError, decode
from pixdex.indexer.run import index_paths

MODEL = "tiny-vit"


def _png(w: int, h: int) -> bytes:
    """A complete, valid PNG of ``w`` x ``h`` grey pixels (every row present, so it decodes in full)."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = (b"\x00" + b"\x80" * 3 * w) * h
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def _jpeg_claiming(w: int, h: int) -> bytes:
    """A 64x64 JPEG (complete, with its EOI marker) whose frame header says ``w`` x ``h``."""
    a = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    b = io.BytesIO()
    Image.fromarray(a).save(b, "JPEG", quality=90)
    data = bytearray(b.getvalue())
    sof = data.find(b"\xff\xc0")
    assert struct.unpack(">HH", data[sof + 5 : sof + 9]) == (64, 64)
    data[sof + 5 : sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def _index(folder: Path, store: Path, loader=None):
    return index_paths(
        [folder], store_dir=store, model=MODEL, json_mode=True, batch_size=4, encoder_loader=loader
    )


@pytest.fixture(scope="module")
def strip_png() -> bytes:
    return _png(1, 40_000_000)  # the probe's file: 1 x 40,000,000, every row present (~150 KB)


def test_extreme_aspect_ratio_fails_that_file_and_the_photo_beside_it_is_indexed(tmp_path, strip_png):
    folder = tmp_path / "photos"
    good = make_images(folder, 2)
    (folder / "strip.png").write_bytes(strip_png)
    (folder / "wide.png").write_bytes(_png(30_000, 2))
    s = _index(folder, tmp_path / "store")
    rows = {Path(p).name: r for p, r in db_rows(tmp_path / "store").items()}
    assert [rows[p.name]["status"] for p in good] == ["ok", "ok"]
    assert rows["strip.png"]["status"] == "failed"
    assert rows["strip.png"]["error"] == f"extreme aspect ratio 1x40000000 (over 1:{MAX_ASPECT_RATIO})"
    assert rows["wide.png"]["error"] == f"extreme aspect ratio 30000x2 (over 1:{MAX_ASPECT_RATIO})"
    assert s["failed"] == 2 and s["total"] == 2
    assert_consistent(tmp_path / "store", [*good, folder / "strip.png", folder / "wide.png"])


def test_aspect_ratio_budget_bounds_decoding_and_preprocessing():
    # the limit itself: at the ratio is fine, just over it fails (decoding and preprocessing alike)
    limit = MAX_ASPECT_RATIO
    img, info = decode(_png(2, 2 * limit), 32)
    assert (info.width, info.height) == (2, 2 * limit)
    with pytest.raises(DecodeError, match=f"extreme aspect ratio 2x{2 * limit + 1} "):
        decode(_png(2, 2 * limit + 1), 32)
    pre = Preprocessor(PreprocessConfig(image_size=224))
    assert pre(Image.new("RGB", (3, 3 * limit))).shape == (3, 224, 224)
    # an image made in memory (training, dataset tools) gets the same budget before any resize
    with pytest.raises(DecodeError, match="extreme aspect ratio 1x100000 "):
        pre(Image.new("RGB", (1, 100_000)))


def test_jpeg_claiming_9000x9000_with_almost_no_data_is_truncated(tmp_path):
    data = _jpeg_claiming(9000, 9000)
    assert len(data) < 10_000
    with pytest.raises(DecodeError, match=r"truncated image data: a 9000x9000 JPEG needs at least \d+ bytes"):
        decode(data, 224)
    folder = tmp_path / "photos"
    good = make_images(folder, 1)
    (folder / "claims_9000.jpg").write_bytes(data)
    _index(folder, tmp_path / "store")
    rows = {Path(p).name: r for p, r in db_rows(tmp_path / "store").items()}
    assert rows[good[0].name]["status"] == "ok"
    assert rows["claims_9000.jpg"]["status"] == "failed"
    assert "truncated" in rows["claims_9000.jpg"]["error"]


@pytest.mark.parametrize(
    "mode, options",
    [
        ("RGB", {"optimize": True}),
        ("RGB", {"optimize": True, "progressive": True}),
        ("L", {"optimize": True, "progressive": True}),
        ("RGB", {"subsampling": 0}),
        ("CMYK", {}),
    ],
)
def test_the_smallest_real_jpegs_of_a_size_still_decode(mode, options):
    # A uniform image at the lowest quality with optimised Huffman tables is the smallest a real encoder
    # makes for its size: the "truncated" bound must stay below it (the encoder is the reference).
    colour = (0, 0, 0, 0) if mode == "CMYK" else "white"
    b = io.BytesIO()
    Image.new(mode, (3000, 2000), colour).save(b, "JPEG", quality=1, **options)
    img, info = decode(b.getvalue(), 224)
    assert (info.width, info.height) == (3000, 2000)


class _Exploding:
    """A preprocessing that raises ``exc`` for images of one size and otherwise delegates."""

    def __init__(self, inner, size, exc):
        self.inner, self.size, self.exc = inner, size, exc
        self.draft_size = inner.draft_size
        self.image_size = inner.image_size
        self.to_dict = inner.to_dict

    def __call__(self, img):
        if img.size == self.size:
            raise self.exc
        return self.inner(img)


@pytest.mark.parametrize(
    "exc, reason",
    [
        (MemoryError(), "preprocessing failed: MemoryError"),  # empty message: the type is the reason
        (OverflowError("Python int too large to convert to C long"), "preprocessing failed: Python int"),
        (KeyError("x"), "preprocessing failed: 'x'"),
    ],
)
def test_any_exception_in_a_file_is_that_files_failure_never_the_runs(tmp_path, exc, reason):
    from pixdex.encoders.encoder import load_encoder

    def loader(spec, checkpoint, device, towers):
        enc = load_encoder(spec, checkpoint=checkpoint, device=device, towers=towers)
        enc.preprocess = _Exploding(enc.preprocess, (77, 51), exc)
        return enc

    folder = tmp_path / "photos"
    good = make_images(folder, 3)
    bad = make_images(folder, 1, seed=9, size=(77, 51), start=100)
    s = _index(folder, tmp_path / "store", loader)
    rows = db_rows(tmp_path / "store")
    assert [rows[str(p)]["status"] for p in good] == ["ok"] * 3
    assert rows[str(bad[0])]["status"] == "failed"
    assert rows[str(bad[0])]["error"].startswith(reason)
    assert s["failed"] == 1 and s["failures"] == [{"reason": "preprocessing failed", "count": 1}]


def test_an_unexpected_decoder_exception_fails_that_file(tmp_path, monkeypatch):
    import pixdex.indexer.pipeline as pipeline

    real = pipeline.decode_many

    def decode_or_explode(data, drafts, name=""):
        if name.endswith("img_00001.png"):
            raise RuntimeError()  # a decoder bug on a hostile file, with no message
        return real(data, drafts, name=name)

    monkeypatch.setattr(pipeline, "decode_many", decode_or_explode)
    folder = tmp_path / "photos"
    photos = make_images(folder, 3)
    s = _index(folder, tmp_path / "store")
    rows = db_rows(tmp_path / "store")
    assert rows[str(photos[1])]["error"] == "cannot decode: RuntimeError"
    assert [rows[str(p)]["status"] for p in (photos[0], photos[2])] == ["ok", "ok"]
    assert s["failed"] == 1


@pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32", reason="symbolic links")
def test_symlinked_folder_outside_the_root_is_followed_and_named_in_the_summary(tmp_path):
    from pixdex.indexer.report import print_summary

    folder = tmp_path / "photos"
    own = make_images(folder, 2)
    outside = make_images(tmp_path / "nas" / "2019", 2, seed=3)
    make_images(folder / "albums" / "best", 1, seed=4, start=50)
    os.symlink(tmp_path / "nas", folder / "nas")  # a drive linked into the library: followed
    os.symlink(folder / "albums", folder / "also_albums")  # inside the root: nothing to say
    s = _index(folder, tmp_path / "store")
    rows = db_rows(tmp_path / "store")
    # files are named by their real path (#13: a folder reached through a link is stored once, as itself)
    linked = [str((tmp_path / "nas" / "2019").resolve() / p.name) for p in outside]
    assert all(rows[p]["status"] == "ok" for p in linked) and all(rows[str(p)]["status"] == "ok" for p in own)
    assert s["links_outside_roots"] == [
        {"link": str(folder / "nas"), "target": str((tmp_path / "nas").resolve())}
    ]
    out = io.StringIO()
    print_summary({**s, "json_mode": False}, stream=out)
    assert f"followed the link {folder / 'nas'} to {(tmp_path / 'nas').resolve()}" in out.getvalue()

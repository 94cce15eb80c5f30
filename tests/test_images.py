"""pixdex.images: every Pillow mode to RGB, transparency on white, EXIF, JPEG draft, bad files, HEIC/AVIF
(also without pillow-heif), and `pixdex embed --image F` equal to the vector `pixdex index` stored for F."""

from __future__ import annotations

import io
import json
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from index_support import SHARED_DATA, png_header
from PIL import Image

from pixdex import images
from pixdex.images import DecodeError, content_hash, decode, parse_exif_datetime, read_file, to_rgb

FORMATS = SHARED_DATA / "formats"
EXIF = SHARED_DATA / "exif"
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared test data not present")


def saved(im: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, format=fmt, **kw)
    return b.getvalue()


def pixels(data: bytes, draft=None) -> np.ndarray:
    img, _ = decode(data, draft)
    assert img.mode == "RGB"
    return np.asarray(img).astype(np.int16)


# ---------------------------------------------------------------------- every mode, exact values


def test_grey_and_bilevel_modes():
    assert (pixels(saved(Image.new("L", (5, 4), 100), "PNG")) == 100).all()
    one = Image.new("1", (6, 2), 0)
    one.putpixel((0, 0), 1)
    p = pixels(saved(one, "PNG"))
    assert p[0, 0].tolist() == [255, 255, 255] and p[1, 1].tolist() == [0, 0, 0]


def test_high_bit_depth_greys_are_scaled_not_clipped():
    a16 = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    im16 = Image.fromarray(a16)  # I;16
    assert im16.mode.startswith("I;16")
    p = pixels(saved(im16, "PNG"))
    assert p[0, :, 0].tolist() == [0, 100, 255]
    i32 = Image.fromarray(np.array([[0, 257 * 50, 65535]], dtype=np.int32))  # mode I, 16-bit range
    assert i32.mode == "I"
    assert pixels(saved(i32, "TIFF"))[0, :, 0].tolist() == [0, 50, 255]
    small = Image.fromarray(np.array([[0, 7, 200]], dtype=np.int32))  # mode I, 8-bit range: unchanged
    assert to_rgb(small).getpixel((1, 0)) == (7, 7, 7)
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))  # mode F in [0, 1]
    assert f.mode == "F"
    assert pixels(saved(f, "TIFF"))[0, :, 1].tolist() == [0, 128, 255]
    fnan = Image.fromarray(np.array([[np.nan, 2.0, 1000.0]], dtype=np.float32))  # out of range: stretched
    assert np.asarray(to_rgb(fnan))[0, :, 2].tolist() == [0, 1, 255]


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((1, 1), (255, 0, 0, 255))
    rgba.putpixel((2, 2), (0, 0, 0, 128))
    p = pixels(saved(rgba, "PNG"))
    assert p[0, 0].tolist() == [255, 255, 255]
    assert p[1, 1].tolist() == [255, 0, 0]
    assert all(abs(v - 127) <= 1 for v in p[2, 2].tolist())
    la = Image.new("LA", (3, 3), (0, 0))
    la.putpixel((0, 0), (30, 255))
    p = pixels(saved(la, "PNG"))
    assert p[1, 1].tolist() == [255, 255, 255] and p[0, 0].tolist() == [30, 30, 30]
    pal = Image.new("P", (3, 3), 0)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((2, 2), 1)
    p = pixels(saved(pal, "PNG", transparency=0))  # palette index 0 transparent
    assert p[0, 0].tolist() == [255, 255, 255] and p[2, 2].tolist() == [0, 255, 0]
    gif = pixels(saved(pal, "GIF", transparency=0))
    assert gif[0, 0].tolist() == [255, 255, 255] and gif[2, 2].tolist() == [0, 255, 0]
    pa = pal.convert("PA")
    pa.putalpha(Image.new("L", (3, 3), 0))
    assert np.asarray(to_rgb(pa)).min() == 255  # PA fully transparent → white


def test_colour_spaces():
    assert (
        pixels(saved(Image.new("CMYK", (4, 4), (0, 0, 0, 0)), "JPEG", quality=100))[0, 0].tolist()
        == [255] * 3
    )
    cyan = pixels(saved(Image.new("CMYK", (8, 8), (255, 0, 0, 0)), "TIFF"))[0, 0]
    assert cyan.tolist() == [0, 255, 255]
    ycc = Image.new("RGB", (8, 8), (10, 200, 30)).convert("YCbCr")
    assert np.abs(np.asarray(to_rgb(ycc)).astype(int) - [10, 200, 30]).max() <= 3
    lab = Image.new("RGB", (4, 4), (10, 200, 30)).convert("LAB")
    assert np.abs(np.asarray(to_rgb(lab)).astype(int) - [10, 200, 30]).max() <= 12  # 8-bit Lab is lossy


@needs_data
def test_shared_formats_decode_to_the_same_photo():
    ref = pixels(read_file(str(FORMATS / "mode-RGB.jpg")))
    grey_ref = np.asarray(Image.fromarray(ref.astype(np.uint8)).convert("L")).astype(np.int16)
    for name in ("mode-CMYK.jpg", "mode-YCbCr.jpg", "mode-RGBA.png", "mode-HSV.webp", "mode-LAB.webp"):
        p = pixels(read_file(str(FORMATS / name)))
        assert p.shape == ref.shape, name
        assert np.abs(p - ref).mean() < 6, name
    for name in ("mode-L.png", "mode-LA.png", "mode-I.webp", "mode-F.webp"):
        p = pixels(read_file(str(FORMATS / name)))
        assert np.abs(p[..., 0] - grey_ref).mean() < 6, name
    assert np.abs(pixels(read_file(str(FORMATS / "mode-P.png"))) - ref).mean() < 20
    bw = pixels(read_file(str(FORMATS / "mode-1.png")))
    assert set(np.unique(bw).tolist()) == {0, 255}
    for f in sorted(FORMATS.iterdir()):
        img, info = decode(read_file(str(f)), 224, f.name)
        assert img.mode == "RGB" and min(img.size) >= min(224, info.width, info.height), f.name


@needs_data
def test_animated_gif_uses_the_first_frame():
    data = read_file(str(FORMATS / "animated.gif"))
    with Image.open(io.BytesIO(data)) as im:
        assert im.n_frames > 1
        first = np.asarray(im.convert("RGBA"))
        im.seek(1)
        second = np.asarray(im.convert("RGBA"))
    assert not np.array_equal(first, second)
    got = pixels(data)
    opaque = first[..., 3] == 255
    assert np.array_equal(got[opaque], first[..., :3][opaque].astype(np.int16))


# ---------------------------------------------------------------------- EXIF, draft


_INVERSE = {  # stored = inverse(upright) for each EXIF orientation
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_upright_image(orientation):
    from PIL import ImageOps

    upright = Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    stored = upright.transpose(_INVERSE[orientation]) if orientation != 1 else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = saved(stored, "PNG", exif=exif.tobytes())
    img, info = decode(data, None)
    assert (info.width, info.height) == (40, 30)
    assert np.array_equal(np.asarray(img), np.asarray(upright))
    with Image.open(io.BytesIO(data)) as im:  # Pillow's own reading agrees
        assert np.array_equal(np.asarray(ImageOps.exif_transpose(im).convert("RGB")), np.asarray(upright))


@needs_data
def test_exif_photos_metadata():
    infos = [decode(read_file(str(EXIF / f"exif-rotn-{k}.jpg")), 256)[1] for k in (1, 3, 6, 8)]
    # stored 4032x3024 each; orientations 6 and 8 are portrait photos once upright
    assert [(i.width, i.height) for i in infos] == [(4032, 3024)] * 2 + [(3024, 4032)] * 2
    assert infos[0].taken_at == datetime(2017, 11, 7, 22, 14, 15)
    assert (infos[0].camera_make, infos[0].camera_model) == ("samsung", "SM-G930V")
    img, _ = decode(read_file(str(EXIF / "exif-rotn-6.jpg")), 256)
    assert img.size[0] < img.size[1]


def test_exif_datetime_parsing():
    assert parse_exif_datetime("2021:07:14 18:03:55") == datetime(2021, 7, 14, 18, 3, 55)
    assert parse_exif_datetime(b"2021:07:14 18:03:55\x00") == datetime(2021, 7, 14, 18, 3, 55)
    assert parse_exif_datetime("0000:00:00 00:00:00") is None
    assert parse_exif_datetime("    ") is None
    assert parse_exif_datetime("garbage") is None


def test_jpeg_draft_decodes_small_and_close_to_full(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    big = Image.fromarray(base).resize((4000, 3000), Image.Resampling.BICUBIC)
    data = saved(big, "JPEG", quality=90)
    small, info = decode(data, 256)
    assert (info.width, info.height) == (4000, 3000)
    assert 256 <= min(small.size) < 512  # 1/8 scale: 500x375
    full, _ = decode(data, None)
    assert full.size == (4000, 3000)
    a = np.asarray(small.resize((320, 240), Image.Resampling.BICUBIC)).astype(np.int16)
    b = np.asarray(full.resize((320, 240), Image.Resampling.BICUBIC)).astype(np.int16)
    assert np.abs(a - b).mean() < 4
    png, _ = decode(saved(big.resize((2400, 1800)), "PNG", compress_level=1), 256)
    assert 512 <= min(png.size) < 1024  # non-JPEG: reduced by an integer factor, short side >= 2x


# ---------------------------------------------------------------------- bad input


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(
    "data,reason",
    [
        (b"this is a text file, not an image\n", "cannot identify"),
        (png_header(30000, 30000), "decompression bomb"),  # over 2x the limit: Pillow's error
        (png_header(10000, 10000), "decompression bomb"),  # over the limit: Pillow only warns
    ],
)
def test_bad_data_raises_decode_error(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode(data, 224)


def test_truncated_and_empty_files(tmp_path):
    good = saved(
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)), "JPEG"
    )
    with pytest.raises(DecodeError, match="truncated|corrupt"):
        decode(good[: len(good) // 2], 224)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(DecodeError, match="empty file"):
        read_file(str(empty))
    with pytest.raises(DecodeError, match="not found"):
        read_file(str(tmp_path / "missing.jpg"))


@needs_data
def test_real_corrupt_jpeg():
    f = SHARED_DATA / "corrupt" / "ukbench09268_corrupt.jpg"
    with pytest.raises(DecodeError):
        decode(read_file(str(f)), 224)


def test_heic_and_avif(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    im = Image.new("RGB", (64, 48), (200, 30, 40))
    heic = tmp_path / "x.heic"
    pillow_heif.from_pillow(im).save(str(heic), quality=95)
    img, info = decode(read_file(str(heic)), 32, str(heic))
    assert (info.format, img.size) == ("HEIF", (64, 48))
    assert np.abs(np.asarray(img).astype(int) - [200, 30, 40]).mean() < 8
    from PIL import features

    if features.check("avif"):
        img, info = decode(saved(im, "AVIF", quality=95), 32, "y.avif")
        assert info.format == "AVIF" and np.abs(np.asarray(img).astype(int) - [200, 30, 40]).mean() < 8


def test_content_hash_is_of_the_bytes():
    assert content_hash(b"abc") == content_hash(b"abc") != content_hash(b"abd")
    assert len(content_hash(b"")) == 32


# ---------------------------------------------------------------------- HEIC without pillow-heif

# a HEIC file's first box as pillow-heif writes it; the rest is what an unreadable HEIC looks like to Pillow
HEIC_HEADER = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"


@pytest.fixture
def no_pillow_heif(monkeypatch):
    """pillow-heif unimportable, and its opener (if an earlier test registered it) gone from Pillow."""
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # `import pillow_heif` raises ImportError
    monkeypatch.setattr(Image, "ID", [f for f in Image.ID if f not in ("HEIF", "HEIC")])
    monkeypatch.setattr(images, "_heif_state", None)


def _heic_bytes() -> bytes:
    try:
        import pillow_heif
    except ImportError:
        return HEIC_HEADER + bytes(200)
    b = io.BytesIO()
    pillow_heif.from_pillow(Image.new("RGB", (64, 48), (200, 30, 40))).save(b, format="HEIF", quality=90)
    assert b.getvalue()[4:12] == b"ftypheic"
    return b.getvalue()


def test_heic_without_pillow_heif_is_one_clean_failure(tmp_path, no_pillow_heif):
    data = _heic_bytes()
    for name in ("x.heic", "x.HEIF", "no-extension", ""):  # by extension, and by content sniffing
        with pytest.raises(DecodeError) as e:
            decode(data, 64, name)
        assert str(e.value) == images.HEIF_UNAVAILABLE
    assert images._heif_state is False  # import tried once, not per file
    with pytest.raises(DecodeError, match="not an image"):  # other unidentifiable bytes keep their reason
        decode(b"\x00\x00\x00\x18ftypjunk" + bytes(100), 64, "y.heic")

    # the indexer records it as a failed file and carries on
    from index_support import db_rows, make_images

    from pixdex.indexer.run import index_paths

    folder = tmp_path / "photos"
    good = make_images(folder, 2)
    (folder / "phone.heic").write_bytes(data)
    s = index_paths([folder], store_dir=tmp_path / "store", model="tiny-vit", json_mode=True)
    assert (s["encoded"], s["failed"]) == (2, 1)
    rows = db_rows(tmp_path / "store")
    heic = rows[str(folder / "phone.heic")]
    assert (heic["status"], heic["error"], heic["has_vector"]) == ("failed", images.HEIF_UNAVAILABLE, 0)
    assert all(rows[str(p)]["has_vector"] for p in good)


# ---------------------------------------------------------------------- embed == index


def _extra_files(folder: Path) -> list[Path]:
    """Files where decoders tend to disagree: 16-bit grey (clipped by a plain convert("RGB")), a large
    JPEG (decoded at a draft scale), EXIF rotation, a HEIC, and a corrupt file (must fail in both)."""
    folder.mkdir()
    ramp = (np.arange(90 * 120, dtype=np.uint32).reshape(90, 120) * 6).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "grey16.png")  # I;16
    rng = np.random.default_rng(3)
    big = Image.fromarray(rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)).resize((1600, 1200))
    exif = Image.Exif()
    exif[0x0112] = 6
    big.save(folder / "big-rot6.jpg", quality=90, exif=exif)
    (folder / "truncated.jpg").write_bytes(saved(big, "JPEG")[:3000])
    try:
        import pillow_heif
    except ImportError:
        pass
    else:
        pillow_heif.from_pillow(big.resize((400, 300))).save(str(folder / "phone.heic"), quality=90)
    return sorted(folder.iterdir())


def test_embed_image_is_the_stored_vector(tmp_path):
    """`pixdex embed --image F` (the real CLI) gives the vector `pixdex index` stored for F, for every
    file in the shared formats and EXIF sets (and a few made here); files that fail, fail in both with
    the same reason."""
    from index_support import db_rows, db_vector
    from typer.testing import CliRunner

    from pixdex.cli import app
    from pixdex.errors import PixdexError

    folders = [d for d in (FORMATS, EXIF) if d.is_dir()]
    files = [f for d in folders for f in sorted(d.iterdir()) if f.is_file()]
    files += _extra_files(tmp_path / "made")
    store = tmp_path / "store"
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "index",
            *map(str, folders),
            str(tmp_path / "made"),
            "--store",
            str(store),
            "--model",
            "pixdex-demo",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    rows = db_rows(store)
    failed = 0
    for f in files:
        row = rows[str(f)]
        res = runner.invoke(app, ["embed", "--image", str(f), "--model", "pixdex-demo"])
        if row["status"] == "failed":
            failed += 1
            assert isinstance(res.exception, PixdexError), (f, res.output)
            assert str(res.exception) == f"cannot decode image {f}: {row['error']}"
            continue
        assert res.exit_code == 0, (f, res.output, row["error"])
        got = np.asarray(json.loads(res.stdout)["embedding"], dtype=np.float64)
        stored = db_vector(store, row["id"]).astype(np.float64)
        cos = float(got @ stored / (np.linalg.norm(got) * np.linalg.norm(stored)))
        assert cos >= 0.9999, (f.name, cos)
    assert failed >= 1  # the truncated JPEG: the failure path was exercised
    assert len(files) - failed >= 3

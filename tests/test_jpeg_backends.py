"""The two JPEG decoders behind pixdex.images.decode (simplejpeg's scaled decoding and Pillow's draft())
give the same pixels on real photos, EXIF-rotated ones included, and the same failures."""

from __future__ import annotations

import io

import numpy as np
import pytest
from index_support import SHARED_DATA
from PIL import Image

from pixdex import images
from pixdex.images import DecodeError, decode

pytest.importorskip("simplejpeg")

# libjpeg-turbo versions may round an IDCT or upsampling step differently: at most this much per channel
MAX_DIFF = 2
MEAN_DIFF = 0.05


def jpegs() -> list:
    if not SHARED_DATA.is_dir():
        return []
    out = []
    for p in sorted(SHARED_DATA.rglob("*")):
        if p.suffix.lower() in (".jpg", ".jpeg") and p.is_file() and p.read_bytes()[:2] == b"\xff\xd8":
            out.append(p)
    return out


@pytest.fixture
def simplejpeg_calls(monkeypatch):
    """Counts the images simplejpeg decoded (so a test cannot pass by never using it)."""
    import simplejpeg

    calls = []
    real = simplejpeg.decode_jpeg

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(images, "_simplejpeg", None)
    monkeypatch.setattr(simplejpeg, "decode_jpeg", counting)
    return calls


def both(data: bytes, draft, monkeypatch):
    monkeypatch.setenv("PIXDEX_JPEG", "pillow")
    ref = decode(data, draft)
    monkeypatch.setenv("PIXDEX_JPEG", "auto")
    return ref, decode(data, draft)


def assert_same(a: Image.Image, b: Image.Image) -> None:
    assert a.size == b.size and a.mode == b.mode == "RGB"
    d = np.abs(np.asarray(a).astype(np.int16) - np.asarray(b).astype(np.int16))
    assert d.max() <= MAX_DIFF and d.mean() <= MEAN_DIFF, (d.max(), d.mean())


@pytest.mark.skipif(not jpegs(), reason="shared test data not present")
@pytest.mark.parametrize("draft", [256, 224, 64])
def test_shared_jpegs_decode_the_same_with_both_backends(draft, monkeypatch, simplejpeg_calls):
    used = 0
    for p in jpegs():
        data = p.read_bytes()
        try:
            (ref, ref_info), (got, info) = both(data, draft, monkeypatch)
        except DecodeError:  # a corrupt sample: both must refuse it with the same reason
            monkeypatch.setenv("PIXDEX_JPEG", "pillow")
            with pytest.raises(DecodeError) as e1:
                decode(data, draft)
            monkeypatch.setenv("PIXDEX_JPEG", "auto")
            with pytest.raises(DecodeError) as e2:
                decode(data, draft)
            assert str(e1.value) == str(e2.value)
            continue
        assert info == ref_info  # size after EXIF orientation, date, camera
        assert_same(ref, got)
        with Image.open(p) as im:
            used += im.mode in ("RGB", "L")  # others (CMYK) are left to Pillow
    assert used >= 4 and len(simplejpeg_calls) == used  # the EXIF-rotated photos among them


def test_orientation_grey_and_cmyk(monkeypatch, simplejpeg_calls):
    rng = np.random.default_rng(3)
    upright = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).resize((1600, 1200))
    for orientation in (1, 3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        b = io.BytesIO()
        upright.save(b, "JPEG", quality=92, exif=exif.tobytes())
        (ref, _), (got, info) = both(b.getvalue(), 256, monkeypatch)
        assert (info.width, info.height) == ((1600, 1200) if orientation in (1, 3) else (1200, 1600))
        assert_same(ref, got)
    n = len(simplejpeg_calls)
    assert n == 4
    for mode in ("L", "CMYK"):
        b = io.BytesIO()
        upright.convert(mode).save(b, "JPEG", quality=90)
        (ref, _), (got, _) = both(b.getvalue(), 256, monkeypatch)
        assert_same(ref, got)
    assert len(simplejpeg_calls) == n + 1  # grey through simplejpeg, CMYK left to Pillow


def test_truncated_jpeg_fails_the_same(monkeypatch):
    b = io.BytesIO()
    Image.new("RGB", (2000, 1500), (200, 10, 10)).save(b, "JPEG", quality=95)
    data = b.getvalue()[: len(b.getvalue()) * 2 // 3]
    reasons = []
    for backend in ("pillow", "auto"):
        monkeypatch.setenv("PIXDEX_JPEG", backend)
        try:
            decode(data, 256)
            reasons.append(None)
        except DecodeError as e:
            reasons.append(str(e))
    assert reasons[0] == reasons[1]

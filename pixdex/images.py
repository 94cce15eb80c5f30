"""The one image decoder: a file to the RGB Pillow image pixdex sees, plus its metadata, or why not.

The indexer, search (``--image`` queries, thumbnails), ``pixdex embed --image``, training and evaluation
all decode through this module, so a file gives the same pixels everywhere. :func:`load_image` is the
entry point for a path; :func:`draft_side` is the decode size a model's preprocessing asks for, and
:func:`load_for_model` combines both (the pixels the indexer feeds to the model). No torch here: the
search path imports this module.

- every Pillow mode becomes RGB correctly: 1, L, P, RGB, CMYK, YCbCr, LAB, HSV, 16-bit and 32-bit
  integer (I, I;16*) and float (F) greys scaled to 0..255, transparency (LA, PA, RGBA, P/L/RGB with a
  transparent colour) composited on white;
- EXIF orientation applied; width/height reported after it;
- JPEGs decoded with ``draft()`` at the smallest DCT scale that still covers ``draft_size`` (a 12 MP
  photo decodes at 1/8 scale for a 224-256 px model), other large images reduced by an integer
  factor to at least twice ``draft_size``;
- Pillow's decompression-bomb guard kept (over ``Image.MAX_IMAGE_PIXELS`` is a failure), and images
  more than :data:`MAX_ASPECT_RATIO` times longer than wide (or the reverse) fail before any pixel is
  decoded (:func:`check_shape`): resizing a 1 x 40,000,000 strip's short side to a model's 224 pixels
  would need billions of pixels;
- JPEGs whose data is far too short for the size their header claims fail as truncated (libjpeg would
  fill the missing blocks with grey and report nothing);
- animated images: the first frame;
- HEIC/HEIF through pillow-heif, registered lazily on the first such file (without pillow-heif: a
  :class:`DecodeError`); AVIF through Pillow.

Everything that can go wrong with a file becomes a :class:`DecodeError` with a one-line reason.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Optional, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 1 << 30  # a 1 GiB "photo" is not a photo
# Long side / short side. Stitched panoramas reach about 1:20; a strip beyond 1:100 is no photo, and
# preprocessing that resizes its short side to the model's size would need short * 100 * size pixels.
MAX_ASPECT_RATIO = 100
HASH_DIGEST = 16  # blake2b-128

_TAG_ORIENTATION = 0x0112
_TAG_MAKE = 0x010F
_TAG_MODEL = 0x0110
_TAG_DATETIME = 0x0132
_IFD_EXIF = 0x8769
_TAG_DATETIME_ORIGINAL = 0x9003
_TAG_DATETIME_DIGITIZED = 0x9004

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_HEIF_BRANDS = (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypmsf1", b"ftyphevc")
HEIF_UNAVAILABLE = "HEIC support unavailable: pillow-heif not installed"
_UNIDENTIFIED = "not an image, or a truncated or corrupt one (cannot identify it)"

_heif_lock = threading.Lock()
_heif_state: Optional[bool] = None  # None: not tried yet; False: pillow-heif unavailable
_simplejpeg = None  # the simplejpeg module once imported; False: not installed


class DecodeError(Exception):
    """A file that cannot be decoded; ``str(e)`` is the one-line reason (the indexer records it in the store)."""


@dataclass(frozen=True)
class ImageInfo:
    width: int  # original size, after EXIF orientation
    height: int
    format: Optional[str]
    taken_at: Optional[datetime] = None
    camera_make: Optional[str] = None
    camera_model: Optional[str] = None


def register_heif() -> bool:
    """Register pillow-heif's HEIC/HEIF opener once (thread-safe). False when pillow-heif cannot be
    imported (tried once per process; the warning is logged once)."""
    global _heif_state
    with _heif_lock:
        if _heif_state is None:
            try:
                from pillow_heif import register_heif_opener

                register_heif_opener()
                _heif_state = True
            except (ImportError, OSError) as e:  # not installed, or its libheif fails to load
                log.warning("pillow-heif cannot be imported (%s): HEIC/HEIF files cannot be decoded", e)
                _heif_state = False
        return _heif_state


class NotRegularFile(OSError):
    """The path names a FIFO, device, socket or folder, not a regular file."""


# O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer (and some devices do not
# wait for a medium); it changes nothing for regular files. O_NOCTTY: a terminal never becomes ours.
_OPEN_FLAGS = (
    os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
)


def open_regular(path: Union[str, os.PathLike]) -> tuple[BinaryIO, os.stat_result]:
    """Open ``path`` for reading without ever blocking on what it turns out to be → (file, its stat).

    The type is checked on the opened descriptor (``fstat``), so a FIFO or a symlink to a device swapped
    in after a ``stat`` cannot slip through: anything but a regular file raises :class:`NotRegularFile`.
    Other failures are the usual ``OSError`` subclasses (``FileNotFoundError``, ``PermissionError``...).
    """
    fd = os.open(path, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"not a regular file: {os.fspath(path)}")
        return os.fdopen(fd, "rb"), st
    except BaseException:
        os.close(fd)
        raise


def read_file(path: str) -> bytes:
    """The bytes of the regular file at ``path`` (never blocks on a FIFO or device); :class:`DecodeError`
    with a one-line reason if it cannot be read."""
    try:
        f, st = open_regular(path)
        with f:
            if st.st_size > MAX_FILE_BYTES:
                raise DecodeError(f"file too large ({st.st_size} bytes)")
            data = f.read(MAX_FILE_BYTES + 1)
    except DecodeError:
        raise
    except (NotRegularFile, IsADirectoryError) as e:
        raise DecodeError("not a regular file (a FIFO, device, socket or folder)") from e
    except PermissionError as e:
        raise DecodeError("permission denied") from e
    except FileNotFoundError as e:
        raise DecodeError("file not found (deleted or moved)") from e
    except OSError as e:
        raise DecodeError(f"cannot read the file: {e.strerror or e}") from e
    if len(data) > MAX_FILE_BYTES:
        raise DecodeError(f"file too large (over {MAX_FILE_BYTES} bytes)")
    if not data:
        raise DecodeError("empty file (0 bytes)")
    return data


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=HASH_DIGEST).hexdigest()


# ---------------------------------------------------------------------- metadata


def _exif_text(v) -> Optional[str]:
    if v is None:
        return None
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    s = str(v).replace("\x00", "").strip()
    return s[:200] or None


def parse_exif_datetime(v) -> Optional[datetime]:
    """``"YYYY:MM:DD HH:MM:SS"`` (EXIF) → datetime; placeholders and garbage → None."""
    s = _exif_text(v)
    if not s:
        return None
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y:%m:%d %H:%M", "%Y:%m:%d"):
        try:
            d = datetime.strptime(s[:19] if "%S" in fmt else s[: len(fmt) + 2], fmt)
        except ValueError:
            continue
        return d if d.year >= 1800 else None
    return None


def read_exif(im: Image.Image) -> tuple[int, Optional[datetime], Optional[str], Optional[str]]:
    """(orientation, taken_at, make, model) from the image's EXIF; defaults when absent or broken."""
    try:
        exif = im.getexif()
    except Exception as e:  # noqa: BLE001 - Pillow raises many types on malformed EXIF; metadata is optional
        log.debug("unreadable EXIF: %s", e)
        return 1, None, None, None
    try:
        orientation = int(exif.get(_TAG_ORIENTATION, 1) or 1)
    except (TypeError, ValueError):
        orientation = 1
    taken = None
    try:
        sub = exif.get_ifd(_IFD_EXIF)
        taken = parse_exif_datetime(sub.get(_TAG_DATETIME_ORIGINAL)) or parse_exif_datetime(
            sub.get(_TAG_DATETIME_DIGITIZED)
        )
    except Exception as e:  # noqa: BLE001 - a broken sub-IFD must not fail the image
        log.debug("unreadable EXIF sub-IFD: %s", e)
    if taken is None:
        taken = parse_exif_datetime(exif.get(_TAG_DATETIME))
    return (
        orientation if orientation in range(1, 9) else 1,
        taken,
        _exif_text(exif.get(_TAG_MAKE)),
        _exif_text(exif.get(_TAG_MODEL)),
    )


# ---------------------------------------------------------------------- pixels


def _grey_to_rgb(im: Image.Image) -> Image.Image:
    """High-bit-depth or float greys (I, I;16*, F) scaled to 8 bits, then RGB."""
    a = np.asarray(im).astype(np.float64)
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, 0.0)
    if im.mode.startswith("I;16"):
        a = a / 257.0
    else:
        lo, hi = float(a.min()), float(a.max())
        if im.mode == "F" and lo >= 0.0 and hi <= 1.0:
            a = a * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            pass
        elif im.mode == "I" and lo >= 0.0 and hi <= 65535.0:  # 16-bit data in a 32-bit container
            a = a / 257.0
        else:
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    g = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    return g.convert("RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode → RGB (transparency on white)."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _grey_to_rgb(im)
    if has_alpha:
        try:
            rgba = im.convert("RGBA")
        except ValueError:
            rgba = im.convert("RGB").convert("RGBA")
        out = Image.new("RGB", im.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise DecodeError(f"unsupported image mode {mode}") from e


def check_shape(w: int, h: int) -> None:
    """The pixel budget of every image pixdex decodes or preprocesses: at most Pillow's
    ``Image.MAX_IMAGE_PIXELS`` pixels and an aspect ratio of at most :data:`MAX_ASPECT_RATIO`;
    :class:`DecodeError` naming the size otherwise."""
    if w <= 0 or h <= 0:
        raise DecodeError("image has no pixels")
    limit = Image.MAX_IMAGE_PIXELS
    if limit and w * h > limit:
        raise DecodeError(f"decompression bomb guard: {w}x{h} pixels is over Pillow's limit of {limit}")
    if max(w, h) > MAX_ASPECT_RATIO * min(w, h):
        raise DecodeError(f"extreme aspect ratio {w}x{h} (over 1:{MAX_ASPECT_RATIO})")


# SOF9-SOF15 and DAC: arithmetic coding, whose blocks can take less than one bit each
_ARITHMETIC_MARKERS = tuple(bytes((0xFF, m)) for m in range(0xC9, 0xD0))


def _jpeg_data_check(im: Image.Image, data: bytes) -> None:
    """A Huffman-coded JPEG spends at least one bit per 8x8 block of each component (its DC code), so a
    file shorter than that for the size its header claims is truncated, even if it ends with an EOI
    marker: libjpeg would fill the missing blocks with grey and report nothing."""
    layers = getattr(im, "layer", None) or []
    if not layers or any(m in data for m in _ARITHMETIC_MARKERS):
        return
    w, h = im.size
    hmax = max(int(c[1]) for c in layers) or 1
    vmax = max(int(c[2]) for c in layers) or 1

    def ceil(a: int, b: int) -> int:
        return -(-a // b)

    blocks = max(ceil(ceil(w * int(c[1]), hmax), 8) * ceil(ceil(h * int(c[2]), vmax), 8) for c in layers)
    need = blocks // 8
    if len(data) < need:
        raise DecodeError(
            f"truncated image data: a {w}x{h} JPEG needs at least {need} bytes, the file has {len(data)}"
        )


def _open(data: bytes, name: str) -> Image.Image:
    if name.lower().endswith((".heic", ".heif")):
        register_heif()
    heif_ready = _heif_state is True  # pillow-heif was registered before this attempt
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        if data[4:12] not in _HEIF_BRANDS or heif_ready:
            raise DecodeError(_UNIDENTIFIED) from e
        if not register_heif():  # a HEIC file (with or without the extension) and no pillow-heif
            raise DecodeError(HEIF_UNAVAILABLE) from e
    try:
        return Image.open(io.BytesIO(data))  # once more, now that pillow-heif is registered
    except UnidentifiedImageError as e:
        raise DecodeError(_UNIDENTIFIED) from e


def decode(data: bytes, draft_size: Optional[int] = None, name: str = "") -> tuple[Image.Image, ImageInfo]:
    """Decode ``data`` → (RGB image, info). ``draft_size``: the smallest short side needed (None: full size)."""
    images, info = decode_many(data, (draft_size,), name)
    return images[0], info


def decode_many(
    data: bytes, draft_sizes: Sequence[Optional[int]], name: str = ""
) -> tuple[list[Image.Image], ImageInfo]:
    """Decode ``data`` at several draft sizes at once: ``images[k]`` has exactly the pixels of
    ``decode(data, draft_sizes[k])[0]``, but the file is decoded once per distinct JPEG draft scale
    only (the indexer needs the model's size and the perceptual hash's, usually the same scale)."""
    try:
        im = _open(data, name)
    except Image.DecompressionBombError as e:
        raise DecodeError(f"decompression bomb guard: {e}") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise DecodeError(f"truncated or corrupt image header: {reason_of(e)}") from e
    try:
        with im:
            if im.format == "JPEG":
                check_shape(*im.size)  # first: the block count below assumes a sane size
                _jpeg_data_check(im, data)
            return _decode_open(im, data, name, list(draft_sizes))
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise DecodeError(f"decompression bomb guard: {e}") from e
    except MemoryError as e:
        raise DecodeError("image too large to decode (out of memory)") from e
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError) as e:
        # Pillow reports truncated and corrupt data through all of these
        raise DecodeError(f"truncated or corrupt image data: {reason_of(e)}") from e


def reason_of(e: BaseException) -> str:
    """One line saying why: the exception's first line, or its type when the message is empty
    (``MemoryError()``)."""
    s = str(e).strip()
    return s.splitlines()[0][:160] if s else type(e).__name__


def jpeg_backend() -> str:
    """Which library decodes JPEGs at a draft scale: ``simplejpeg`` when it is installed (libjpeg-turbo's
    scaled decoding without Pillow's per-image overhead: the same pixels, measured 5-10% faster on
    12 MP photos and ~25% on 256 px ones, ``bench/decode_scaling.py``) unless ``PIXDEX_JPEG=pillow``;
    else ``pillow`` (``draft()``)."""
    if os.environ.get("PIXDEX_JPEG", "auto").lower() == "pillow":
        return "pillow"
    global _simplejpeg
    if _simplejpeg is None:
        try:
            import simplejpeg

            _simplejpeg = simplejpeg
        except ImportError:
            _simplejpeg = False
    return "simplejpeg" if _simplejpeg else "pillow"


def _scaled_jpeg(data: bytes, im: Image.Image, size: tuple[int, int]) -> Optional[Image.Image]:
    """The pixels Pillow's ``draft()`` + ``load()`` + :func:`to_rgb` give for a JPEG decoded at ``size``
    (one of libjpeg's 1/1, 1/2, 1/4, 1/8 scales), decoded by simplejpeg; None when simplejpeg is not
    used or not sure to give the same thing (CMYK and other colour spaces, an unusual size, any warning
    from libjpeg: ``strict``), and then Pillow decodes it, with its own errors."""
    if im.mode not in ("RGB", "L") or jpeg_backend() != "simplejpeg":
        return None
    w, h = im.size
    scale = next((s for s in (8, 4, 2, 1) if (-(-w // s), -(-h // s)) == tuple(size)), None)
    if scale is None:
        return None
    try:
        a = _simplejpeg.decode_jpeg(
            data,
            "RGB" if im.mode == "RGB" else "GRAY",
            min_factor=scale,
            min_width=size[0],
            min_height=size[1],
            strict=True,
        )
    except (ValueError, RuntimeError, MemoryError) as e:  # Pillow decides what this file is
        log.debug("simplejpeg declined (%s): decoding with Pillow", e)
        return None
    if a.shape[:2] != (size[1], size[0]):
        return None
    return Image.fromarray(a[..., 0] if a.ndim == 3 and im.mode == "L" else a).convert("RGB")


def _draft(im: Image.Image, draft_size: int) -> None:
    im.draft(im.mode if im.mode in ("RGB", "L") else None, (int(draft_size), int(draft_size)))


def _decode_open(
    im: Image.Image, data: bytes, name: str, draft_sizes: list[Optional[int]]
) -> tuple[list[Image.Image], ImageInfo]:
    fmt = im.format
    w, h = im.size
    check_shape(w, h)
    orientation, taken, make, model = read_exif(im)
    # JPEG drafts that end at the same size decode the same pixels: one decode per distinct size
    scale_of: dict[Optional[int], tuple[int, int]] = {}
    for d in draft_sizes:
        if d and fmt == "JPEG" and d not in scale_of:
            with Image.open(io.BytesIO(data)) as probe:  # headers only: draft() just picks the scale
                _draft(probe, d)
                scale_of[d] = probe.size
    groups: dict[tuple[int, int], list[int]] = {}
    for k, d in enumerate(draft_sizes):
        groups.setdefault(scale_of.get(d, (w, h)), []).append(k)
    out: list[Optional[Image.Image]] = [None] * len(draft_sizes)
    for n, (size, members) in enumerate(groups.items()):
        src = im if n == 0 else _open(data, name)
        try:
            d0 = draft_sizes[members[0]]
            if getattr(src, "n_frames", 1) > 1:
                src.seek(0)
            base = _scaled_jpeg(data, src, size) if d0 and fmt == "JPEG" else None
            if base is None:
                if d0 and fmt == "JPEG":
                    _draft(src, d0)
                src.load()
                base = to_rgb(src)
            for k in members:
                img, d = base, draft_sizes[k]
                if d:
                    factor = min(img.size) // (2 * int(d))
                    if factor >= 2:
                        img = img.reduce(factor)
                if orientation != 1:
                    img = img.transpose(_TRANSPOSE[orientation])
                if img is src:
                    img = src.copy()  # detach from the file object closed by the caller
                out[k] = img
        finally:
            if src is not im:
                src.close()
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    info = ImageInfo(width=w, height=h, format=fmt, taken_at=taken, camera_make=make, camera_model=model)
    return out, info


# ---------------------------------------------------------------------- entry points


def draft_side(preprocess) -> Optional[int]:
    """The short side a model's preprocessing needs decoded (its ``draft_size``, else ``image_size``);
    None: full size. The indexer and every other caller decode at this size, so they see the same pixels."""
    d = getattr(preprocess, "draft_size", None)
    if d is None:
        d = getattr(preprocess, "image_size", None)
    if d is None:
        return None
    return int(max(d)) if isinstance(d, (tuple, list)) else int(d)


def load_image(
    path: Union[str, os.PathLike], draft_size: Optional[int] = None
) -> tuple[Image.Image, ImageInfo]:
    """Read and decode the file at ``path`` (``~`` expanded) → (RGB image, info); :class:`DecodeError` if not."""
    p = os.path.expanduser(os.fspath(path))
    return decode(read_file(p), draft_size, name=p)


def load_for_model(path: Union[str, os.PathLike], preprocess) -> Image.Image:
    """The RGB image of ``path`` that the indexer feeds to ``preprocess`` (decoded at its :func:`draft_side`)."""
    return load_image(path, draft_side(preprocess))[0]

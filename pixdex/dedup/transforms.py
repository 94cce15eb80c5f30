"""Deterministic image edits that make "copies" of a photo, for measuring the copy tier.

Used by ``bench/dedup_quality.py``, the copy-tier tests and ``pixdex dedup --calibrate``: each
transform takes a decoded RGB Pillow image and returns a new RGB image; the same input gives the same
output (no randomness, no clock). ``TRANSFORMS`` maps a name to a :class:`Transform`; ``kind`` groups
names into the classes the quality goals are stated for (``jpeg``, ``downscale``, ``small_crop``,
``mirror``, ...), and ``expected`` says whether the copy tier (perceptual hash, dihedral search) is
meant to catch it. Crops are stated in area removed, aspect ratio kept: ``crop_center_10`` keeps the
middle 90% of the area (sqrt(0.9) = 94.9% of each side, the margin split between both ends);
``crop_corner_10`` removes the same from the right and bottom only (an off-centre crop).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageEnhance, ImageFont

TransformFn = Callable[[Image.Image], Image.Image]


@dataclass(frozen=True)
class Transform:
    name: str
    kind: str  # the class the quality goals are stated for
    expected: bool  # meant to be caught by the copy tier
    fn: TransformFn

    def __call__(self, im: Image.Image) -> Image.Image:
        out = self.fn(im.convert("RGB") if im.mode != "RGB" else im)
        return out if out.mode == "RGB" else out.convert("RGB")


def jpeg(quality: int) -> TransformFn:
    def f(im: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as out:
            return out.convert("RGB")

    return f


def downscale(factor: float) -> TransformFn:
    def f(im: Image.Image) -> Image.Image:
        w, h = im.size
        return im.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.LANCZOS)

    return f


def crop(removed: float, centred: bool) -> TransformFn:
    """Remove ``removed`` of the area (same aspect ratio): centred, or anchored at the top-left corner."""

    def f(im: Image.Image) -> Image.Image:
        w, h = im.size
        keep = math.sqrt(1.0 - removed)
        kw, kh = max(1, round(w * keep)), max(1, round(h * keep))
        x0, y0 = ((w - kw) // 2, (h - kh) // 2) if centred else (0, 0)
        return im.crop((x0, y0, x0 + kw, y0 + kh))

    return f


def transpose(op: Image.Transpose) -> TransformFn:
    return lambda im: im.transpose(op)


def rotate_small(degrees: float) -> TransformFn:
    """Rotate by a small angle about the centre, same canvas, black corners (a tilted scan)."""
    return lambda im: im.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=(0, 0, 0))


def enhance(kind: str, factor: float) -> TransformFn:
    cls = {"brightness": ImageEnhance.Brightness, "contrast": ImageEnhance.Contrast}[kind]
    return lambda im: cls(im).enhance(factor)


def grayscale(im: Image.Image) -> Image.Image:
    return im.convert("L").convert("RGB")


def text_overlay(im: Image.Image) -> Image.Image:
    """A caption in PIL's default font across the lower part of the image, white with a black outline."""
    out = im.copy()
    w, h = out.size
    size = max(10, h // 10)
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(out)
    draw.text(
        (w // 20, h - h // 20 - size),
        "pixdex copy 2024",
        font=font,
        fill=(255, 255, 255),
        stroke_width=max(1, size // 12),
        stroke_fill=(0, 0, 0),
    )
    return out


def pad(fraction: float, colour=(255, 255, 255)) -> TransformFn:
    """A border of ``fraction`` of the short side on every edge."""

    def f(im: Image.Image) -> Image.Image:
        w, h = im.size
        b = max(1, round(min(w, h) * fraction))
        out = Image.new("RGB", (w + 2 * b, h + 2 * b), colour)
        out.paste(im, (b, b))
        return out

    return f


def letterbox(im: Image.Image) -> Image.Image:
    """Black bars that make the image square (as a video frame or a social-media post would)."""
    w, h = im.size
    s = max(w, h)
    out = Image.new("RGB", (s, s), (0, 0, 0))
    out.paste(im, ((s - w) // 2, (s - h) // 2))
    return out


def _registry() -> dict[str, Transform]:
    T = Image.Transpose
    items = [
        Transform("jpeg_q30", "jpeg", True, jpeg(30)),
        Transform("jpeg_q10", "jpeg_heavy", False, jpeg(10)),
        Transform("downscale_50", "downscale", True, downscale(0.5)),
        Transform("downscale_25", "downscale", True, downscale(0.25)),
        Transform("crop_center_05", "small_crop", True, crop(0.05, True)),
        Transform("crop_center_10", "small_crop", True, crop(0.10, True)),
        Transform("crop_corner_05", "small_crop", True, crop(0.05, False)),
        Transform("crop_corner_10", "small_crop", True, crop(0.10, False)),
        Transform("crop_center_20", "large_crop", False, crop(0.20, True)),
        Transform("crop_center_30", "large_crop", False, crop(0.30, True)),
        Transform("crop_corner_20", "large_crop", False, crop(0.20, False)),
        Transform("crop_corner_30", "large_crop", False, crop(0.30, False)),
        Transform("mirror", "mirror", True, transpose(T.FLIP_LEFT_RIGHT)),
        Transform("flip_vertical", "mirror", True, transpose(T.FLIP_TOP_BOTTOM)),
        Transform("rotate_90", "rotate_right_angle", True, transpose(T.ROTATE_90)),
        Transform("rotate_180", "rotate_right_angle", True, transpose(T.ROTATE_180)),
        Transform("rotate_270", "rotate_right_angle", True, transpose(T.ROTATE_270)),
        Transform("rotate_5", "rotate_small", False, rotate_small(5.0)),
        Transform("brighter_30", "brightness_contrast", True, enhance("brightness", 1.3)),
        Transform("darker_30", "brightness_contrast", True, enhance("brightness", 0.7)),
        Transform("contrast_up_30", "brightness_contrast", True, enhance("contrast", 1.3)),
        Transform("contrast_down_30", "brightness_contrast", True, enhance("contrast", 0.7)),
        Transform("grayscale", "grayscale", True, grayscale),
        Transform("text_overlay", "overlay", False, text_overlay),
        Transform("pad_10", "padding", False, pad(0.10)),
        Transform("letterbox", "padding", False, letterbox),
    ]
    return {t.name: t for t in items}


TRANSFORMS: dict[str, Transform] = _registry()
EXPECTED: tuple[str, ...] = tuple(n for n, t in TRANSFORMS.items() if t.expected)
# the transform classes the quality goal (precision >= 0.95, recall >= 0.90) is stated for
GOAL_KINDS: tuple[str, ...] = ("jpeg", "downscale", "small_crop", "mirror")


def names_of_kind(kind: str) -> list[str]:
    return [n for n, t in TRANSFORMS.items() if t.kind == kind]


def apply(name: str, im: Image.Image) -> Image.Image:
    """Apply the named transform; an unknown name is a ``KeyError`` listing the known ones."""
    try:
        t = TRANSFORMS[name]
    except KeyError:
        raise KeyError(f"unknown transform {name!r}; known: {', '.join(TRANSFORMS)}") from None
    return t(im)

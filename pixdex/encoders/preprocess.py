"""Image preprocessing in numpy + Pillow (no torch): equal to open_clip's eval transform.

``shortest``: resize the short side to ``image_size`` (long side ``int(size * long / short)``, as
torchvision computes it), center crop with torchvision's rounding. ``squash``: resize to exactly
``(size, size)``. Then ``/255`` and ``(x - mean) / std`` in float32, channels first.
Images over the decoder's pixel budget (:func:`pixdex.images.check_shape`: pixel count, aspect ratio)
raise :class:`pixdex.images.DecodeError` instead of being resized.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pixdex.encoders.config import PreprocessConfig
from pixdex.images import check_shape

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def shortest_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(new_w, new_h) for resizing the short side to ``size`` (torchvision's rounding)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


class Preprocessor:
    """``pre(PIL.Image RGB) -> np.ndarray float32 (3, H, W)``."""

    def __init__(self, config):
        cfg = getattr(config, "preprocess", config)  # a ModelConfig or a PreprocessConfig
        if not isinstance(cfg, PreprocessConfig):
            raise TypeError(f"expected a PreprocessConfig, got {type(cfg).__name__}")
        if cfg.resize_mode not in ("shortest", "squash"):
            raise ValueError(f"unsupported resize mode {cfg.resize_mode!r} (shortest or squash)")
        if cfg.interpolation not in _RESAMPLE:
            raise ValueError(f"unsupported interpolation {cfg.interpolation!r}")
        self.config = cfg
        self.image_size = int(cfg.image_size)
        self.resample = _RESAMPLE[cfg.interpolation]
        self.mean = np.asarray(cfg.mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(cfg.std, dtype=np.float32).reshape(3, 1, 1)
        # Image.draft() keeps both sides >= this, so resizing afterwards still only downsamples
        self.draft_size = (self.image_size, self.image_size)

    def to_dict(self) -> dict:
        return {
            "image_size": self.image_size,
            "mean": list(self.config.mean),
            "std": list(self.config.std),
            "resize_mode": self.config.resize_mode,
            "interpolation": self.config.interpolation,
        }

    def resize(self, img: Image.Image) -> Image.Image:
        """The resized and cropped (size x size) image, still a PIL image."""
        s = self.image_size
        w, h = img.size
        if w < 1 or h < 1:
            raise ValueError(f"empty image ({w}x{h})")
        check_shape(w, h)  # the pixel budget: a 1 x 40,000,000 strip would resize to billions of pixels
        if self.config.resize_mode == "squash":
            return img if (w, h) == (s, s) else img.resize((s, s), self.resample)
        nw, nh = shortest_side_size(w, h, s)
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), self.resample)
        if (nw, nh) != (s, s):
            top = int(round((nh - s) / 2.0))
            left = int(round((nw - s) / 2.0))
            img = img.crop((left, top, left + s, top + s))
        return img

    def normalize(self, arr: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) -> normalised float32 (3, H, W)."""
        x = arr.transpose(2, 0, 1).astype(np.float32)
        x /= np.float32(255.0)
        x -= self.mean
        x /= self.std
        return x

    def pixels(self, img: Image.Image) -> np.ndarray:
        """The resized and cropped image as uint8 ``(H, W, 3)``: what the decode workers ship to the
        encoder, which normalises it on its device (:mod:`pixdex.encoders.device_input`) exactly as
        :meth:`normalize` does."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        return np.asarray(self.resize(img))

    def __call__(self, img: Image.Image) -> np.ndarray:
        return self.normalize(self.pixels(img))

"""The gallery's icon (``/favicon.ico``), drawn in code: no binary file in the repository.

A rounded square in the UI's accent colour with a dark magnifying glass, at 16 and 32 pixels, as an
ICO file made by Pillow once per process.
"""

from __future__ import annotations

import functools
import io

ACCENT = (110, 168, 254, 255)  # --accent in static/style.css
INK = (11, 18, 32, 255)  # the text colour on accent buttons


@functools.lru_cache(maxsize=1)
def favicon_ico() -> bytes:
    from PIL import Image, ImageDraw

    side = 64  # drawn large, scaled down by Pillow's ICO writer
    im = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.rounded_rectangle((0, 0, side - 1, side - 1), radius=14, fill=ACCENT)
    d.ellipse((12, 10, 42, 40), outline=INK, width=7)  # the lens
    d.line((38, 36, 52, 52), fill=INK, width=9)  # the handle
    out = io.BytesIO()
    im.save(out, format="ICO", sizes=[(16, 16), (32, 32)])
    return out.getvalue()

"""Image bytes for the web UI: originals and cached thumbnails of indexed files.

Callers pass a stored row (never a path from a request). Thumbnails are JPEGs cached under
``STORE/thumbs/`` (one line "mtime_ns:size" of the source, then the JPEG bytes), keyed by image id and
rebuilt when the source file changes.
Formats that browsers cannot show (HEIC, TIFF, ...) are converted to JPEG on the fly. Decoding is the
indexer's (:mod:`pixdex.images`), so the UI shows what was indexed, the same way.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from pathlib import Path

from pixdex.errors import PixdexError
from pixdex.fsutil import atomic_write

log = logging.getLogger(__name__)

THUMB_SIZE = 320
_BROWSER_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".avif": "image/avif",
}
MAX_ORIGINAL_BYTES = 512 * 1024 * 1024


def _open_image(path: Path, draft_size=None):
    """RGB image through the indexer's decoder (every mode, EXIF orientation, HEIC, bomb guard)."""
    from pixdex.images import DecodeError, load_image

    try:
        return load_image(path, draft_size)[0]
    except DecodeError as e:
        raise PixdexError(f"cannot read image {path.name}: {e}") from e


def _jpeg(im, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


class Media:
    def __init__(self, store_dir: Path, size: int = THUMB_SIZE):
        self.dir = Path(store_dir) / "thumbs"
        self.size = int(size)
        self._lock = threading.Lock()

    def _source(self, row) -> tuple[Path, os.stat_result]:
        path = Path(row.path)
        try:
            st = path.stat()
        except OSError:
            raise PixdexError(f"the file of image {row.id} is missing") from None
        return path, st

    def original(self, row) -> tuple[bytes, str]:
        path, st = self._source(row)
        ctype = _BROWSER_TYPES.get(path.suffix.lower())
        if ctype:
            if st.st_size > MAX_ORIGINAL_BYTES:
                raise PixdexError(f"image {row.id} is too large to serve")
            with open(path, "rb") as f:
                return f.read(), ctype
        return _jpeg(_open_image(path), quality=92), "image/jpeg"

    def thumb_path(self, image_id: int) -> Path:
        return self.dir / f"{int(image_id) // 1000:04d}" / f"{int(image_id)}-{self.size}.thumb"

    def thumbnail(self, row) -> tuple[bytes, str]:
        path, st = self._source(row)
        out = self.thumb_path(row.id)
        stamp = f"{st.st_mtime_ns}:{st.st_size}".encode()
        try:
            data = out.read_bytes()
            head, _, body = data.partition(b"\n")
            if head == stamp:
                return body, "image/jpeg"
        except OSError:
            pass
        im = _open_image(path, draft_size=self.size)
        im.thumbnail((self.size, self.size))
        body = _jpeg(im)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(out, stamp + b"\n" + body, durable=False)  # a cache: never torn, may be lost
        except OSError as e:
            log.warning("cannot cache thumbnail %s: %s", out, e)
        return body, "image/jpeg"

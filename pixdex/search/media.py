"""Image bytes for the web UI: originals and cached thumbnails of indexed files.

Callers pass a stored row (never a path from a request); its file is served only while it is still the
file that was indexed: a regular file with the recorded size and content hash (:meth:`Media.read`).
Thumbnails are JPEGs cached under ``STORE/thumbs/`` (one line "mtime_ns:size" of the source, then the
JPEG bytes), keyed by image id, made only from verified bytes, and rebuilt when the file changes (and
has been indexed again).
Formats that browsers cannot show (HEIC, TIFF, ...) are converted to JPEG on the fly. Decoding is the
indexer's (:mod:`pixdex.images`), so the UI shows what was indexed, the same way.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import threading
from pathlib import Path

from pixdex.errors import PixdexError
from pixdex.fsutil import atomic_write
from pixdex.paths import pixdex_command

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


class Unavailable(PixdexError):
    """The file of an indexed row cannot be served: ``status`` 404 (gone) or 410 (no longer the file
    that was indexed: another size or content, or not a regular file)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _changed(row, what: str, store_dir: Path) -> Unavailable:
    fix = pixdex_command("index", "FOLDER", store_dir=store_dir)
    return Unavailable(
        410, f"the file of image {row.id} {what} since it was indexed; run {fix} on its folder"
    )


def _decode(row, data: bytes, draft_size=None):
    """RGB image through the indexer's decoder (every mode, EXIF orientation, HEIC, bomb guard)."""
    from pixdex.images import DecodeError, decode

    try:
        return decode(data, draft_size, name=row.path)[0]
    except DecodeError as e:
        raise PixdexError(f"cannot read image {Path(row.path).name}: {e}") from e


def _jpeg(im, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


class Media:
    def __init__(self, store_dir: Path, size: int = THUMB_SIZE):
        self.dir = Path(store_dir) / "thumbs"
        self.size = int(size)
        self._lock = threading.Lock()

    def read(self, row) -> tuple[bytes, os.stat_result]:
        """The bytes of ``row``'s file, only if it is still the file that was indexed.

        Opened with O_NONBLOCK and checked on the open descriptor (:func:`pixdex.images.open_regular`):
        a FIFO or device swapped in is refused at once, never waited on. Then the size and the content
        hash recorded at indexing must match (when the row carries them), so a path swapped for a
        symlink to another file (``/etc/passwd``) or rewritten is refused (410), not served.
        """
        from pixdex.images import NotRegularFile, content_hash, open_regular

        try:
            f, st = open_regular(row.path)
        except NotRegularFile:
            raise _changed(row, "is no longer a regular file", self.dir.parent) from None
        except FileNotFoundError:
            raise Unavailable(404, f"the file of image {row.id} is missing") from None
        except OSError as e:
            raise Unavailable(404, f"cannot open the file of image {row.id}: {e.strerror or e}") from None
        with f:
            if row.size is not None and st.st_size != row.size:
                raise _changed(row, "changed size", self.dir.parent)
            if st.st_size > MAX_ORIGINAL_BYTES:
                raise PixdexError(f"image {row.id} is too large to serve")
            data = f.read(st.st_size + 1)
        if len(data) != st.st_size or (row.content_hash and content_hash(data) != row.content_hash):
            raise _changed(row, "changed content", self.dir.parent)
        return data, st

    def original(self, row) -> tuple[bytes, str]:
        data, _ = self.read(row)
        ctype = _BROWSER_TYPES.get(Path(row.path).suffix.lower())
        if ctype:
            return data, ctype
        return _jpeg(_decode(row, data), quality=92), "image/jpeg"

    def thumb_path(self, image_id: int) -> Path:
        return self.dir / f"{int(image_id) // 1000:04d}" / f"{int(image_id)}-{self.size}.thumb"

    @staticmethod
    def _stamp(st: os.stat_result) -> bytes:
        return f"{st.st_mtime_ns}:{st.st_size}".encode()

    def thumbnail(self, row) -> tuple[bytes, str]:
        out = self.thumb_path(row.id)
        try:  # a cached thumbnail is made only from verified bytes: same mtime and size, same file
            st = os.stat(row.path)
            if stat.S_ISREG(st.st_mode) and (row.size is None or st.st_size == row.size):
                head, _, body = out.read_bytes().partition(b"\n")
                if head == self._stamp(st):
                    return body, "image/jpeg"
        except OSError:
            pass
        data, st = self.read(row)
        im = _decode(row, data, draft_size=self.size)
        im.thumbnail((self.size, self.size))
        body = _jpeg(im)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            # a cache: never torn, may be lost
            atomic_write(out, self._stamp(st) + b"\n" + body, durable=False)
        except OSError as e:
            log.warning("cannot cache thumbnail %s: %s", out, e)
        return body, "image/jpeg"

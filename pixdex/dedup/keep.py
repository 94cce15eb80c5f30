"""Which member of a duplicate group to keep: a total, deterministic order per policy.

Each policy is a sort key over :class:`Item` records; the smallest key is kept. Every key ends with
``(path, id)``, so two different records never tie and the choice never depends on input order.
Missing values (no EXIF date, unknown size) always sort after known ones.

``largest`` (default)
    most pixels; then least compressed format (:data:`FORMAT_RANK`); then more bytes; then oldest
    EXIF date; then path order.
``original`` -- the copy that looks like what the camera wrote:
    1. no copy/re-encode marker in the file name (:data:`COPY_MARKER`: the words ``copy``, ``kopie``,
       ``copie``, ``edited``, ``resized``, ``scaled``, ``compressed``, ``thumb(nail)``, ``small``,
       ``preview``, ``export(ed)``, ``min``; ``(2)``-style counters; a trailing `` 2`` (macOS
       Finder); ``1024x768``-style sizes);
    2. has an EXIF capture date (cameras write it; messengers, web exports and screenshots drop it);
    3. most pixels (re-encodes are usually downscaled);
    4. more bytes (at equal pixels, a re-encode at lower quality is smaller; a lossless conversion of
       the same picture is larger, but it loses on 2. when it dropped EXIF);
    5. least compressed format; 6. oldest file modification time (the first one written); path.
``oldest``
    oldest EXIF date, then oldest modification time, then the ``largest`` order.
``newest``
    newest EXIF date, then newest modification time, then the ``largest`` order.
``shortest-path``
    fewest characters in the path, then fewest folders, then the ``largest`` order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePath
from typing import Optional, Union

import numpy as np

from pixdex.errors import PixdexError

POLICIES = ("largest", "original", "oldest", "newest", "shortest-path")
DEFAULT_POLICY = "largest"

# Pillow format name -> rank (lower = less compressed = preferred). WEBP is ranked lossy because the
# store records Pillow's format name, which does not say whether a WebP is lossless; a caller that
# knows can pass "WEBP-LOSSLESS".
FORMAT_RANK = {
    # 0: lossless
    "PNG": 0,
    "TIFF": 0,
    "BMP": 0,
    "PPM": 0,
    "PGM": 0,
    "PBM": 0,
    "PNM": 0,
    "QOI": 0,
    "WEBP-LOSSLESS": 0,
    # 1: modern lossy codecs, usually camera-native or high quality
    "HEIF": 1,
    "HEIC": 1,
    "AVIF": 1,
    "JXL": 1,
    "JPEG2000": 1,
    # 2: classic lossy
    "JPEG": 2,
    "MPO": 2,
    "WEBP": 2,
    # 3: palette (256 colours)
    "GIF": 3,
}
UNKNOWN_FORMAT_RANK = 4

COPY_MARKER = re.compile(
    r"(?<![a-z])(copy|kopie|copie|edited|resized|scaled|compressed|thumb|thumbnail|small|preview"
    r"|export|exported|min)(?![a-z])"  # words, not inside longer words
    r"|\(\d+\)"  # "name (2)", "name(1)": Windows, browsers, Google Photos
    r"| \d{1,2}$"  # "IMG_1234 2": macOS Finder duplicate
    r"|(?<!\d)\d{2,5}x\d{2,5}(?!\d)",  # "photo-1024x768": resized renditions
    re.IGNORECASE,
)

_FAR = datetime.max  # sorts after every real date
_EPOCH = datetime(1, 1, 1)
_NEVER = float("inf")


@dataclass(frozen=True)
class Item:
    """What the keep policies read about one image (a plain record; see :meth:`from_row`)."""

    id: int
    path: str
    width: Optional[int] = None
    height: Optional[int] = None
    bytes: Optional[int] = None
    format: Optional[str] = None
    taken_at: Union[datetime, str, None] = None  # EXIF DateTimeOriginal, datetime or ISO text
    mtime: Optional[float] = None  # unix seconds

    @classmethod
    def from_row(cls, row) -> Item:
        """From a store row (``pixdex.storage.schema.ImageRow``: ``size`` bytes, ``mtime_ns``)."""
        mtime_ns = getattr(row, "mtime_ns", None)
        return cls(
            id=int(row.id),
            path=str(row.path),
            width=row.width,
            height=row.height,
            bytes=getattr(row, "size", None),
            format=row.format,
            taken_at=row.taken_at,
            mtime=mtime_ns / 1e9 if mtime_ns is not None else None,
        )

    @property
    def pixels(self) -> int:
        return int(self.width or 0) * int(self.height or 0)


def _date(v: Union[datetime, str, None]) -> Optional[datetime]:
    if v is None or isinstance(v, datetime):
        return v.replace(tzinfo=None) if v is not None else None
    try:
        return datetime.fromisoformat(str(v).strip()).replace(tzinfo=None)
    except ValueError:
        return None


def format_rank(fmt: Optional[str]) -> int:
    return FORMAT_RANK.get((fmt or "").upper(), UNKNOWN_FORMAT_RANK)


def has_copy_marker(path: str) -> bool:
    """Whether the file name (without extension) looks like a copy or a re-encode."""
    return bool(COPY_MARKER.search(PurePath(path).stem))


def _tail(it: Item) -> tuple:
    return (it.path, it.id)


def _largest(it: Item) -> tuple:
    d = _date(it.taken_at)
    return (
        -it.pixels,
        format_rank(it.format),
        -(it.bytes or 0),
        d is None,
        d or _FAR,
    ) + _tail(it)


def _original(it: Item) -> tuple:
    return (
        has_copy_marker(it.path),
        _date(it.taken_at) is None,
        -it.pixels,
        -(it.bytes or 0),
        format_rank(it.format),
        it.mtime if it.mtime is not None else _NEVER,
    ) + _tail(it)


def _oldest(it: Item) -> tuple:
    d = _date(it.taken_at)
    m = it.mtime
    return (d is None, d or _FAR, m is None, m if m is not None else 0.0) + _largest(it)


def _newest(it: Item) -> tuple:
    d = _date(it.taken_at)
    m = it.mtime
    ds = -(d - _EPOCH).total_seconds() if d is not None else 0.0  # newer first
    return (d is None, ds, m is None, -(m or 0.0)) + _largest(it)


def _shortest(it: Item) -> tuple:
    return (len(it.path), len(PurePath(it.path).parts)) + _largest(it)


_KEYS = {
    "largest": _largest,
    "original": _original,
    "oldest": _oldest,
    "newest": _newest,
    "shortest-path": _shortest,
}


def check_policy(policy: str) -> str:
    if policy not in _KEYS:
        raise PixdexError(f"unknown keep policy {policy!r}; choose one of {', '.join(POLICIES)}")
    return policy


def sort_key(item: Item, policy: str = DEFAULT_POLICY) -> tuple:
    """The policy's key for ``item``: the smallest key is the one to keep."""
    return _KEYS[check_policy(policy)](item)


def order(items: Sequence[Item], policy: str = DEFAULT_POLICY) -> list[int]:
    """Indices of ``items`` from the one to keep to the one to drop first."""
    key = _KEYS[check_policy(policy)]
    return sorted(range(len(items)), key=lambda k: key(items[k]))


def keep_rank(items: Sequence[Item], policy: str = DEFAULT_POLICY) -> np.ndarray:
    """rank[k] = position of ``items[k]`` in the policy's order (0 = keep first); for groups."""
    rank = np.empty(len(items), np.int64)
    rank[order(items, policy)] = np.arange(len(items))
    return rank


def choose(items: Sequence[Item], policy: str = DEFAULT_POLICY) -> int:
    """Index of the item to keep among ``items`` (non-empty)."""
    if not items:
        raise ValueError("choose() needs at least one item")
    return order(items, policy)[0]

"""An image's date: the one rule for date filters, JSON results and the gallery.

An image's date is its EXIF date (``taken_at``, the camera's local time) when it has one, else its
file's modification time (``mtime_ns``, shown in this machine's local time): PNGs, screenshots and
scans have no EXIF date but still match ``--after`` / ``--before``. Results say which it was
(``date_source``: ``"exif"`` or ``"mtime"``).

A bound (``--after 2024-05-01``) is a naive local date-time. An EXIF date is compared with it as
written; a modification time is compared as an instant, with the bound's instant in local time
(``datetime.timestamp``), so SQL compares integers (``mtime_ns >= ?``) and needs no per-row time-zone
conversion. :func:`date_condition` (SQL) and :func:`date_in_range` (Python) apply the same rule.

Standard library only: this is on the torch- and SQLAlchemy-free search path.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Optional

from pixdex.storage.contract import C_MTIME_NS, C_TAKEN

SOURCE_EXIF = "exif"
SOURCE_MTIME = "mtime"

_NS = 1_000_000_000


def to_datetime(v) -> Optional[datetime]:
    """A stored ``taken_at`` (ISO text, with ``T`` or a space) as a naive datetime; None if absent or unreadable."""
    if v is None or v == "":
        return None
    if isinstance(v, datetime):
        return v.replace(tzinfo=None)
    try:
        return datetime.fromisoformat(str(v).replace("Z", "+00:00")).replace(tzinfo=None)
    except ValueError:
        return None


def mtime_datetime(mtime_ns: int) -> datetime:
    """A modification time (ns since the epoch) as a naive local date-time, to the microsecond."""
    secs, ns = divmod(int(mtime_ns), _NS)
    return datetime.fromtimestamp(secs) + timedelta(microseconds=ns // 1000)


def bound_ns(bound: datetime) -> int:
    """The instant of the naive local date-time ``bound``, in ns since the epoch."""
    return int(bound.replace(microsecond=0).timestamp()) * _NS + bound.microsecond * 1000


def effective_date(taken_at, mtime_ns: Optional[int]) -> tuple[Optional[datetime], Optional[str]]:
    """``(date, source)`` of an image: ``(EXIF date, "exif")``, else ``(mtime as local time, "mtime")``,
    else ``(None, None)``."""
    taken = to_datetime(taken_at)
    if taken is not None:
        return taken, SOURCE_EXIF
    if mtime_ns is not None:
        return mtime_datetime(mtime_ns), SOURCE_MTIME
    return None, None


def date_fields(taken_at, mtime_ns: Optional[int]) -> dict:
    """The JSON fields of a result: ``date`` (ISO, to the second) and ``date_source``."""
    d, source = effective_date(taken_at, mtime_ns)
    return {"date": d.isoformat(timespec="seconds") if d else None, "date_source": source}


def date_in_range(
    taken_at, mtime_ns: Optional[int], after: Optional[datetime], before: Optional[datetime]
) -> bool:
    """Whether an image's date is in ``[after, before)`` (either bound may be None)."""
    if after is None and before is None:
        return True
    taken = to_datetime(taken_at)
    if taken is not None:
        return (after is None or taken >= after) and (before is None or taken < before)
    if mtime_ns is None:
        return False
    t = int(mtime_ns)
    return (after is None or t >= bound_ns(after)) and (before is None or t < bound_ns(before))


def date_condition(op: str, bound: datetime) -> tuple[str, list, bool]:
    """SQL for "the image's date ``op`` ``bound``" (``op``: ``>=`` for after, ``<`` for before) over the
    images table: ``(sql, args, exact)``. The EXIF half compares text: exact for a whole-day bound (a
    ``YYYY-MM-DD`` prefix, right for both ``T`` and space separators), else a superset by whole days
    (``exact`` False: the caller re-checks with :func:`date_in_range`). The mtime half is always exact."""
    midnight = bound.time() == datetime.min.time()
    if midnight:
        day = bound.date()
    else:
        day = bound.date() if op == ">=" else bound.date() + timedelta(days=1)
    sql = (
        f"(({C_TAKEN} IS NOT NULL AND {C_TAKEN} {op} ?) OR "
        f"({C_TAKEN} IS NULL AND {C_MTIME_NS} IS NOT NULL AND {C_MTIME_NS} {op} ?))"
    )
    return sql, [day.isoformat(), bound_ns(bound)], midnight

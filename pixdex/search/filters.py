"""Search filters: path glob, taken-date range, zero-shot tags and minimum score.

Row filters (path, dates) select which images may be returned; retrieval guarantees they never shrink
the answer below k while more matching images exist. ``min_score`` only cuts the ranked list.

Path globs match the whole stored (absolute) path, case-insensitively, with ``*`` crossing folder
separators. A pattern that is not absolute is matched against the tail of the path:
``*.png``, ``IMG_*`` (file names) and ``2023/*`` (a folder anywhere) all do what they look like.

Dates are ``YYYY``, ``YYYY-MM``, ``YYYY-MM-DD`` or an ISO date-time. ``--after`` is inclusive,
``--before`` exclusive. An image's date is its EXIF date, else its file's modification time (the rule
lives in :mod:`pixdex.search.dates`); an image with neither is left out when either bound is given.

Tags (``--tag dog``, repeatable: all of them) are labels stored by ``pixdex tag``, compared
case-insensitively.

The CLI (`pixdex search`) and the HTTP API (`pixdex serve`) both build their filters with
:func:`make_filters`; error messages name the option as the caller spells it (``names``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Optional, Union

from pixdex.errors import PixdexError
from pixdex.search.dates import date_in_range

# How each filter is spelled in error messages: on the command line, and as HTTP query parameters.
CLI_NAMES = {
    "path": "--path",
    "after": "--after",
    "before": "--before",
    "min_score": "--min-score",
    "tag": "--tag",
}
API_NAMES = {name: name for name in CLI_NAMES}

_DATE_RE = re.compile(r"^(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?$")


def parse_date(text: str, option: str) -> datetime:
    """Parse a --after/--before value; partial dates start at their first day."""
    s = text.strip()
    m = _DATE_RE.match(s)
    try:
        if m:
            return datetime(int(m.group(1)), int(m.group(2) or 1), int(m.group(3) or 1))
        return datetime.fromisoformat(s.replace("Z", "+00:00")).replace(tzinfo=None)
    except ValueError:
        raise PixdexError(f"{option}: not a date: {text!r} (expected YYYY-MM-DD)") from None


def normalize_glob(pattern: str, option: str = "--path") -> str:
    """The pattern as matched against full paths (lower case, ``/`` separators)."""
    p = os.path.expanduser(pattern.strip()).replace("\\", "/")
    if not p:
        raise PixdexError(f"{option}: empty pattern")
    if not (p.startswith("/") or p.startswith("*") or re.match(r"^[A-Za-z]:/", p)):
        p = "*/" + p
    return p.lower()


@dataclass(frozen=True)
class Filters:
    path_glob: Optional[str] = None  # normalised (see normalize_glob)
    after: Optional[datetime] = None
    before: Optional[datetime] = None
    min_score: Optional[float] = None
    tags: tuple[str, ...] = ()

    @property
    def restricts_rows(self) -> bool:
        return (
            self.path_glob is not None or self.after is not None or self.before is not None or bool(self.tags)
        )

    def path_ok(self, path: str) -> bool:
        return self.path_glob is None or fnmatchcase(path.replace("\\", "/").lower(), self.path_glob)

    def date_ok(self, taken_at, mtime_ns: Optional[int] = None) -> bool:
        """Whether an image with this EXIF date (or None) and file mtime passes the date bounds."""
        return date_in_range(taken_at, mtime_ns, self.after, self.before)


def make_filters(
    path_glob: Optional[str] = None,
    after: Optional[str] = None,
    before: Optional[str] = None,
    min_score: Union[float, str, None] = None,
    tags: Sequence[str] = (),
    names: Mapping[str, str] = CLI_NAMES,
) -> Filters:
    """Validated filters; bad values raise a one-line :class:`PixdexError` naming ``names[option]``."""
    a = parse_date(after, names["after"]) if after else None
    b = parse_date(before, names["before"]) if before else None
    if a is not None and b is not None and a >= b:
        raise PixdexError(f"{names['after']} ({after}) must be earlier than {names['before']} ({before})")
    if isinstance(min_score, str):  # an HTTP parameter
        try:
            min_score = float(min_score) if min_score.strip() else None
        except ValueError:
            min_score = math.nan
    if min_score is not None and not math.isfinite(min_score):
        raise PixdexError(f"{names['min_score']} must be a number")
    clean = tuple({" ".join(t.split()).casefold(): " ".join(t.split()) for t in tags}.values())
    if any(not t for t in clean):
        raise PixdexError(f"{names['tag']}: empty tag")
    path = normalize_glob(path_glob, names["path"]) if path_glob else None
    return Filters(path, a, b, min_score, clean)

"""Search filters: path glob, taken-date range, zero-shot tags and minimum score.

Row filters (path, dates) select which images may be returned; retrieval guarantees they never shrink
the answer below k while more matching images exist. ``min_score`` only cuts the ranked list.

Path globs match the whole stored (absolute) path, case-insensitively, with ``*`` crossing folder
separators. A pattern that is not absolute is matched against the tail of the path:
``*.png``, ``IMG_*`` (file names) and ``2023/*`` (a folder anywhere) all do what they look like.

Dates are ``YYYY``, ``YYYY-MM``, ``YYYY-MM-DD`` or an ISO date-time. ``--after`` is inclusive,
``--before`` exclusive; images without a known date are left out when either is given.

Tags (``--tag dog``, repeatable: all of them) are labels stored by ``pixdex tag``, compared
case-insensitively.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Optional

from pixdex.errors import PixdexError

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


def normalize_glob(pattern: str) -> str:
    """The pattern as matched against full paths (lower case, ``/`` separators)."""
    p = os.path.expanduser(pattern.strip()).replace("\\", "/")
    if not p:
        raise PixdexError("--path: empty pattern")
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

    def date_ok(self, taken_at: Optional[datetime]) -> bool:
        if self.after is None and self.before is None:
            return True
        if taken_at is None:
            return False
        if self.after is not None and taken_at < self.after:
            return False
        if self.before is not None and taken_at >= self.before:
            return False
        return True


def make_filters(
    path_glob: Optional[str] = None,
    after: Optional[str] = None,
    before: Optional[str] = None,
    min_score: Optional[float] = None,
    tags: Sequence[str] = (),
) -> Filters:
    a = parse_date(after, "--after") if after else None
    b = parse_date(before, "--before") if before else None
    if a is not None and b is not None and a >= b:
        raise PixdexError(f"--after ({after}) must be earlier than --before ({before})")
    if min_score is not None and not math.isfinite(min_score):
        raise PixdexError("--min-score must be a number")
    clean = tuple({" ".join(t.split()).casefold(): " ".join(t.split()) for t in tags}.values())
    if any(not t for t in clean):
        raise PixdexError("--tag: empty tag")
    return Filters(normalize_glob(path_glob) if path_glob else None, a, b, min_score, clean)

"""The dedup report: plain dataclasses shared by the tiers, the keep policy, the outputs and the actions.

No torch, SQLAlchemy or rich import here: every output (table, JSON, CSV, HTML) and every action reads
these objects only.

- A :class:`Member` is one image of a group. ``tier``/``score`` describe its link to the group's kept
  item: ``"exact"`` (score 1.0), ``"copy"`` (score = Hamming distance, an int, lower is closer) or
  ``"semantic"`` (score = cosine, higher is closer). The kept member has ``tier=None``, ``score=None``
  and ``kept=True``.
- A :class:`Group` holds its kept member and all members, the kept one first, then by descending
  strength (:func:`strength_key`). :func:`make_group` builds one in that order.
- A :class:`Report` is the groups plus a ``summary`` dict (:func:`make_summary`).
- :func:`to_json` is the ``--json`` shape: ``{"groups": [{"keep": PATH, "members": [{"id", "path",
  "tier", "score", "width", "height", "bytes", "format", "kept"}, ...]}, ...], "summary": {...}}``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

TIERS = ("exact", "copy", "semantic")  # strongest first
_TIER_RANK = {t: i for i, t in enumerate(TIERS)}

# the member fields that the JSON and CSV outputs carry, in order
MEMBER_FIELDS = ("id", "path", "tier", "score", "width", "height", "bytes", "format", "kept")


@dataclass
class Member:
    id: int
    path: str  # absolute
    tier: str | None  # link to the kept item: "exact" | "copy" | "semantic"; None for the kept one
    score: float | None  # exact 1.0, copy Hamming distance (int), semantic cosine; None for the kept one
    width: int | None
    height: int | None
    bytes: int | None  # file size recorded at index time
    format: str | None = None
    taken_at: str | None = None  # 'YYYY-MM-DD HH:MM:SS' or None
    kept: bool = False
    # not part of the JSON/CSV shape; the actions use them when present
    root: str | None = None  # the indexed root folder the file was found under
    mtime_ns: int | None = None  # st_mtime_ns recorded at index time

    @property
    def pixels(self) -> int:
        return (self.width or 0) * (self.height or 0)


@dataclass
class Group:
    keep: Member
    members: list[Member]  # includes ``keep``, first

    def duplicates(self) -> list[Member]:
        """The non-kept members (never the kept one, whatever its ``kept`` flag says). Compared by path:
        ids of two stores (``--against``) may coincide, paths of distinct files do not."""
        return [m for m in self.members if m is not self.keep and m.path != self.keep.path]

    def best_tier(self) -> str | None:
        """The strongest tier linking any member to the kept item."""
        tiers = [m.tier for m in self.duplicates() if m.tier in _TIER_RANK]
        return min(tiers, key=_TIER_RANK.__getitem__) if tiers else None


@dataclass
class Report:
    groups: list[Group]
    summary: dict = field(default_factory=dict)


def strength_key(m: Member) -> tuple:
    """Sort key, strongest link first: exact, then copy by ascending distance, then semantic by
    descending cosine; ties by path."""
    rank = _TIER_RANK.get(m.tier or "", len(TIERS))
    s = m.score if m.score is not None else 0.0
    closeness = s if m.tier == "copy" else -s
    return (rank, closeness, m.path)


def make_group(keep: Member, others: Iterable[Member]) -> Group:
    """A group in the canonical order: ``keep`` first (marked kept, no tier), then ``others`` by
    :func:`strength_key`."""
    keep.kept, keep.tier, keep.score = True, None, None
    rest = [m for m in others if m is not keep and m.path != keep.path]
    for m in rest:
        m.kept = False
    rest.sort(key=strength_key)
    return Group(keep=keep, members=[keep, *rest])


def make_summary(
    groups: list[Group],
    *,
    images: int,
    tiers: Iterable[str] = TIERS,
    thresholds: dict | None = None,
    elapsed_s: float | None = None,
    **extra,
) -> dict:
    """The report's summary: images examined, groups, duplicates (non-kept members), duplicates per
    tier, bytes reclaimable (sum of the non-kept members' sizes), tiers and thresholds used."""
    tiers = list(tiers)
    by_tier = {t: 0 for t in tiers}
    dups = 0
    reclaim = 0
    for g in groups:
        for m in g.duplicates():
            dups += 1
            reclaim += m.bytes or 0
            if m.tier is not None:
                by_tier[m.tier] = by_tier.get(m.tier, 0) + 1
    out = {
        "images": images,
        "groups": len(groups),
        "duplicates": dups,
        "by_tier": by_tier,
        "bytes_reclaimable": reclaim,
        "tiers": tiers,
        "thresholds": dict(thresholds or {}),
    }
    if elapsed_s is not None:
        out["elapsed_s"] = round(elapsed_s, 3)
    out.update(extra)
    return out


def json_score(m: Member):
    """The score as written to JSON/CSV: copy distances as int, cosines rounded to 6 decimals."""
    if m.score is None:
        return None
    if m.tier == "copy":
        return int(m.score)
    return round(float(m.score), 6)


def member_to_json(m: Member, kept: bool) -> dict:
    return {
        "id": m.id,
        "path": m.path,
        "tier": m.tier,
        "score": json_score(m),
        "width": m.width,
        "height": m.height,
        "bytes": m.bytes,
        "format": m.format,
        "kept": kept,
    }


def group_to_json(g: Group) -> dict:
    return {"keep": g.keep.path, "members": [member_to_json(m, m is g.keep) for m in g.members]}


def to_json(report: Report) -> dict:
    """The ``--json`` document (see the module docstring); ``output.write_json`` streams the same."""
    return {"groups": [group_to_json(g) for g in report.groups], "summary": report.summary}

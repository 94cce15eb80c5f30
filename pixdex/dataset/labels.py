"""Labels for the rows of an image-caption dataset, from given vectors (nothing is encoded here).

Inputs per row: the image vector and the caption vector (unit length, one joint space, as CLIP/SigLIP
give them), the caption text, optionally the image's content hash (exact tier) and copy-tier pairs.

**Links.** Two rows' *images* are linked when their content hashes are equal (tier ``exact``), a copy
pair joins them (``copy``), or their image vectors have cosine >= ``image_threshold`` (``semantic``).
Their *captions* are linked when the normalised texts are equal (``exact``, see ``normalize_caption``)
or the caption vectors have cosine >= ``caption_threshold`` (``semantic``). Rows with equal hashes
(equal normalised captions) form one unit: the pair finder runs over one vector per unit, so a caption
repeated 100,000 times costs one vector, not 5e9 pairs.

**Duplicate labels** (at most one per row), by greedy leader clustering in priority order (input order,
or ``keep="best"``: highest image-caption score first), in three nested levels so that each mode's kept
set is the previous one's minus its duplicates and no group chains (every member is linked directly to
the row it is labelled a duplicate of):

1. ``duplicate_pair``: image *and* caption linked to an earlier pair leader. Pair leaders are the kept
   rows of ``--mode pairs``.
2. ``duplicate_image``: among pair leaders, image linked to an earlier image leader (its caption is
   not linked, else level 1 had taken it). Image leaders are kept by ``--mode images``.
3. ``duplicate_caption``: among image leaders (pairwise unrelated images), caption linked to an earlier
   caption leader: boilerplate. Caption leaders are kept by ``--mode strict``.

When several leaders qualify, the row joins the closest (stronger tier, then higher score, then
earlier). ``duplicate_of`` is that leader; a ``duplicate_pair`` row's leader may itself be a
``duplicate_image`` (dropped in ``images`` mode): follow ``duplicate_of`` to the kept row.

**Mismatch.** ``clip_score`` is the cosine of a row's image and caption (CLIPScore = 2.5 x max(cos, 0)).
With ``m`` = median and ``s`` = 1.4826 x MAD of the dataset's clip scores, a row is ``low`` when its
score < cut = max(``mismatch_floor``, m - ``mismatch_z`` x s), and ``swapped`` when another row's image
matches its caption at cosine >= max(cut, own score + margin), margin = ``swap_margin`` or ``mismatch_z``
x s; ``mismatch_with`` names the best such row. Found with two ``cross_pairs(captions, images, t)`` calls,
never N x N, each caption at its own bound t = max(cut, own score + margin): the low rows (few
queries, the lowest bound) and the others (t >= m for most of them by default, so that a caption's many
fair matches are not returned).

**Contaminated.** The row's image or caption is linked (same tiers and thresholds) to an item of the
``against`` set; ``contaminated_by`` names the closest item (image tiers before caption tiers).

**Unreadable.** A row whose image cannot be read or decoded has no image vector: it is labelled
``unreadable`` alone (``error`` says why), takes no part in the other labels, and is always dropped
(:func:`with_unreadable` lays the table of the readable rows out over all rows).

Dropped rows: ``duplicate_pair`` always, ``duplicate_image`` in modes images/strict,
``duplicate_caption`` in strict, ``contaminated`` and ``unreadable`` always, ``mismatch`` with
``drop_mismatch``.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from pixdex.dataset.graph import LinkGraph, leader_levels
from pixdex.errors import PixdexError

log = logging.getLogger(__name__)

MODES = ("pairs", "images", "strict")
KEEP = ("first", "best")
LABELS = ("duplicate_pair", "duplicate_image", "duplicate_caption", "mismatch", "contaminated", "unreadable")
DUPLICATE_PAIR, DUPLICATE_IMAGE, DUPLICATE_CAPTION, MISMATCH, CONTAMINATED, UNREADABLE = (
    1 << k for k in range(6)
)
# provisional defaults, to be calibrated on pixdex-demo and real CLIP models by the quality tests
IMAGE_THRESHOLD = 0.95
CAPTION_THRESHOLD = 0.95
MISMATCH_Z = 3.0
TOP_CAPTIONS = 20

# tier codes: larger = stronger link (0 = none)
IMAGE_TIERS = {3: "exact", 2: "copy", 1: "semantic"}
CAPTION_TIERS = {2: "exact", 1: "semantic"}
AGAINST_TIERS = {
    5: "image:exact",
    4: "image:copy",
    3: "image:semantic",
    2: "caption:exact",
    1: "caption:semantic",
}
MISMATCH_REASONS = {1: "low", 2: "swapped", 3: "low+swapped"}


class Pairs(Protocol):
    i: np.ndarray
    j: np.ndarray
    score: np.ndarray


class PairFinder(Protocol):
    """What ``pixdex.dedup.semantic`` provides: cosine pairs above a threshold without N x N."""

    def similar_pairs(self, vectors: np.ndarray, threshold: float) -> Pairs: ...

    def cross_pairs(self, queries: np.ndarray, base: np.ndarray, threshold: float | np.ndarray) -> Pairs: ...


def default_finder() -> PairFinder:
    """``pixdex.dedup.semantic``: exact for small inputs, clustered (SemDeDup-style) above."""
    from pixdex.dedup import semantic

    return semantic


_EDGE_PUNCT = re.compile(r"^[\W_]+|[\W_]+$")


def normalize_caption(text: str) -> str:
    """Unicode NFKC, lower case, whitespace runs collapsed to one space, punctuation and symbols stripped
    at both ends: ``'  "A  Dog!" '`` -> ``'a dog'``."""
    text = " ".join(unicodedata.normalize("NFKC", text).lower().split())
    return _EDGE_PUNCT.sub("", text)


@dataclass(frozen=True)
class LabelOptions:
    mode: str = "pairs"
    drop_mismatch: bool = False
    image_threshold: float = IMAGE_THRESHOLD
    caption_threshold: float = CAPTION_THRESHOLD
    keep: str = "first"  # first in input order, or "best" image-caption score
    mismatch_z: float = MISMATCH_Z
    mismatch_floor: float | None = None  # absolute clip-score floor (model-specific), off by default
    swap_margin: float | None = None  # default mismatch_z x robust spread

    def check(self) -> None:
        if self.mode not in MODES:
            raise PixdexError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.keep not in KEEP:
            raise PixdexError(f"--keep must be one of {', '.join(KEEP)}, got {self.keep!r}")
        for name in ("image_threshold", "caption_threshold"):
            t = getattr(self, name)
            if not -1.0 < t <= 1.0:
                raise PixdexError(f"--{name.replace('_', '-')} must be a cosine in (-1, 1], got {t}")
        if self.mismatch_z <= 0:
            raise PixdexError(f"mismatch_z must be positive, got {self.mismatch_z}")


@dataclass
class AgainstSet:
    """Items to decontaminate against (an evaluation set): same vector space as the dataset."""

    keys: Sequence[str]
    image_vectors: np.ndarray
    caption_vectors: np.ndarray
    captions: Sequence[str] | None = None
    image_hashes: Sequence | None = None
    copy_pairs: Pairs | None = None  # i: dataset row, j: against item, score: higher = closer


@dataclass
class LabelTable:
    """One entry per dataset row, in input order. Integer codes; ``columns()`` gives the output form."""

    keys: list
    labels: np.ndarray  # uint8 bit mask of LABELS
    duplicate_of: np.ndarray  # int64 row, -1
    image_tier: np.ndarray  # int8 IMAGE_TIERS
    image_score: np.ndarray  # float32, NaN
    caption_tier: np.ndarray  # int8 CAPTION_TIERS
    caption_score: np.ndarray
    clip_score: np.ndarray
    mismatch_reason: np.ndarray  # int8 MISMATCH_REASONS
    mismatch_with: np.ndarray  # int64 row, -1
    mismatch_score: np.ndarray
    against_index: np.ndarray  # int64 against item, -1
    against_tier: np.ndarray  # int8 AGAINST_TIERS
    against_score: np.ndarray
    against_keys: list
    dropped: np.ndarray  # bool, under ``options``
    options: LabelOptions
    stats: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)  # row -> why its image is unreadable

    def __len__(self) -> int:
        return len(self.keys)

    def has(self, label: str) -> np.ndarray:
        return (self.labels & (1 << LABELS.index(label))) != 0

    def label_names(self, i: int) -> list[str]:
        return [name for k, name in enumerate(LABELS) if self.labels[i] >> k & 1]

    def columns(self, rows: np.ndarray | None = None) -> dict[str, list]:
        """Output columns (``removed.csv``, ``labels.*``), for ``rows`` (all by default): key, labels
        (``;``-joined), duplicate_of (a key), then the evidence, ``error`` (why an ``unreadable`` row's
        image cannot be read), then ``kept``. Missing values are None."""
        idx = np.arange(len(self.keys)) if rows is None else np.asarray(rows)

        def key_of(a, keys):
            return [keys[int(v)] if v >= 0 else None for v in a[idx]]

        def code(a, names):
            return [names.get(int(v)) for v in a[idx]]

        def num(a):
            return [None if np.isnan(v) else round(float(v), 6) for v in a[idx]]

        return {
            "key": [self.keys[int(i)] for i in idx],
            "labels": [";".join(self.label_names(int(i))) for i in idx],
            "duplicate_of": key_of(self.duplicate_of, self.keys),
            "image_tier": code(self.image_tier, IMAGE_TIERS),
            "image_score": num(self.image_score),
            "caption_tier": code(self.caption_tier, CAPTION_TIERS),
            "caption_score": num(self.caption_score),
            "clip_score": num(self.clip_score),
            "mismatch": code(self.mismatch_reason, MISMATCH_REASONS),
            "mismatch_with": key_of(self.mismatch_with, self.keys),
            "mismatch_score": num(self.mismatch_score),
            "contaminated_by": key_of(self.against_index, self.against_keys),
            "contaminated_tier": code(self.against_tier, AGAINST_TIERS),
            "contaminated_score": num(self.against_score),
            "error": [self.errors.get(int(i)) for i in idx],
            "kept": [not bool(d) for d in self.dropped[idx]],
        }

    def summary(self) -> dict:
        """Counts per label, kept/removed, removal rate, the most repeated boilerplate captions, and the
        figures the labels were decided with."""
        n = len(self.keys)
        removed = int(self.dropped.sum())
        return {
            "rows": n,
            "labels": {name: int(self.has(name).sum()) for name in LABELS},
            "kept": n - removed,
            "removed": removed,
            "removed_rate": removed / n if n else 0.0,
            "mode": self.options.mode,
            **self.stats,
        }


def label_dataset(
    keys: Sequence[str],
    image_vectors: np.ndarray,
    caption_vectors: np.ndarray,
    captions: Sequence[str],
    image_hashes: Sequence | None = None,
    copy_pairs: Pairs | None = None,
    against: AgainstSet | None = None,
    options: LabelOptions | None = None,
    finder: PairFinder | None = None,
) -> LabelTable:
    """Label every row (see the module docstring). ``image_hashes[i]`` None means "no hash"; ``copy_pairs``
    join rows (score: higher = closer). ``finder`` defaults to ``default_finder()``."""
    o = options or LabelOptions()
    o.check()
    finder = finder or default_finder()
    n = len(keys)
    img = _unit_vectors(image_vectors, n, "image vectors")
    cap = _unit_vectors(caption_vectors, n, "caption vectors")
    if img.shape[1] != cap.shape[1]:
        raise PixdexError(f"image vectors have {img.shape[1]} dimensions, caption vectors {cap.shape[1]}")
    if len(captions) != n or (image_hashes is not None and len(image_hashes) != n):
        raise PixdexError(f"captions/hashes must have one entry per row ({n})")
    norm = [normalize_caption(c) for c in captions]

    clip = _rowwise_dot(img, cap)
    if o.keep == "best":
        order = np.lexsort((np.arange(n), -clip.astype(np.float64)))
    else:
        order = np.arange(n)

    graph = LinkGraph.build(
        img, cap, norm, image_hashes, copy_pairs, o.image_threshold, o.caption_threshold, finder
    )
    lv = leader_levels(graph, order)

    labels = np.zeros(n, np.uint8)
    labels[lv.level == 1] |= DUPLICATE_PAIR
    labels[lv.level == 2] |= DUPLICATE_IMAGE
    labels[lv.level == 3] |= DUPLICATE_CAPTION
    dup = lv.duplicate_of
    # evidence for the side that did not link: the plain cosine (shows why it is not a pair)
    for level, score, a, b in ((2, lv.caption_score, cap, cap), (3, lv.image_score, img, img)):
        rows = np.flatnonzero(lv.level == level)
        score[rows] = _pair_dot(a, b, rows, dup[rows])

    mismatch_reason, mismatch_with, mismatch_score, mstats = _mismatch(img, cap, clip, o, finder)
    labels[mismatch_reason > 0] |= MISMATCH

    m = 0 if against is None else len(against.keys)
    against_index = np.full(n, -1, np.int64)
    against_tier = np.zeros(n, np.int8)
    against_score = np.full(n, np.nan, np.float32)
    if m:
        against_index, against_tier, against_score = _contamination(
            img, cap, norm, image_hashes, against, o, finder
        )
        labels[against_index >= 0] |= CONTAMINATED

    drop_bits = DUPLICATE_PAIR | CONTAMINATED
    if o.mode in ("images", "strict"):
        drop_bits |= DUPLICATE_IMAGE
    if o.mode == "strict":
        drop_bits |= DUPLICATE_CAPTION
    if o.drop_mismatch:
        drop_bits |= MISMATCH
    stats = {
        **mstats,
        "image_threshold": o.image_threshold,
        "caption_threshold": o.caption_threshold,
        "top_captions": _top_captions(lv.level, dup, captions),
        "links": graph.counts(),
    }
    return LabelTable(
        keys=list(keys),
        labels=labels,
        duplicate_of=dup,
        image_tier=lv.image_tier,
        image_score=lv.image_score,
        caption_tier=lv.caption_tier,
        caption_score=lv.caption_score,
        clip_score=clip,
        mismatch_reason=mismatch_reason,
        mismatch_with=mismatch_with,
        mismatch_score=mismatch_score,
        against_index=against_index,
        against_tier=against_tier,
        against_score=against_score,
        against_keys=list(against.keys) if m else [],
        dropped=(labels & drop_bits) != 0,
        options=o,
        stats=stats,
    )


def with_unreadable(table: LabelTable, keys: Sequence[str], rows: np.ndarray, errors: dict) -> LabelTable:
    """The table of all ``len(keys)`` rows from ``table``, the table of the readable ``rows`` (ascending
    row numbers); every other row is ``unreadable`` (``errors[row]`` says why) and dropped."""
    n, rows = len(keys), np.asarray(rows, np.int64)
    if len(rows) == n:
        table.errors = {}
        return table

    def spread(a, fill, index=False):
        out = np.full(n, fill, a.dtype)
        out[rows] = np.where(a >= 0, rows[np.maximum(a, 0)], -1) if index else a
        return out

    labels = spread(table.labels, UNREADABLE)
    return LabelTable(
        keys=list(keys),
        labels=labels,
        duplicate_of=spread(table.duplicate_of, -1, index=True),
        image_tier=spread(table.image_tier, 0),
        image_score=spread(table.image_score, np.nan),
        caption_tier=spread(table.caption_tier, 0),
        caption_score=spread(table.caption_score, np.nan),
        clip_score=spread(table.clip_score, np.nan),
        mismatch_reason=spread(table.mismatch_reason, 0),
        mismatch_with=spread(table.mismatch_with, -1, index=True),
        mismatch_score=spread(table.mismatch_score, np.nan),
        against_index=spread(table.against_index, -1),
        against_tier=spread(table.against_tier, 0),
        against_score=spread(table.against_score, np.nan),
        against_keys=table.against_keys,
        dropped=spread(table.dropped, True),
        options=table.options,
        stats=table.stats,
        errors={int(r): str(e) for r, e in errors.items()},
    )


def _unit_vectors(v, n: int, what: str) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    if v.ndim != 2 or len(v) != n:
        raise PixdexError(f"{what}: expected {n} rows of one dimension, got shape {v.shape}")
    sample = v[:: max(1, n // 1000)]
    if len(sample) and not np.allclose(np.linalg.norm(sample, axis=1), 1.0, atol=1e-2):
        raise PixdexError(f"{what} must be L2-normalised")
    return v


def _rowwise_dot(a: np.ndarray, b: np.ndarray, chunk: int = 65536) -> np.ndarray:
    out = np.empty(len(a), np.float32)
    for s in range(0, len(a), chunk):
        out[s : s + chunk] = np.einsum("ij,ij->i", a[s : s + chunk], b[s : s + chunk])
    return out


def _pair_dot(a: np.ndarray, b: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 65536) -> np.ndarray:
    out = np.empty(len(i), np.float32)
    for s in range(0, len(i), chunk):
        out[s : s + chunk] = np.einsum("ij,ij->i", a[i[s : s + chunk]], b[j[s : s + chunk]])
    return out


def best_per_query(q: np.ndarray, j: np.ndarray, score: np.ndarray, n: int):
    """For each of ``n`` queries, the ``j`` with the highest score (ties: smallest j) and that score;
    -1 / NaN for queries without a pair."""
    best_j = np.full(n, -1, np.int64)
    best_s = np.full(n, np.nan, np.float32)
    if len(q):
        order = np.lexsort((j, -score.astype(np.float64), q))
        first = np.ones(len(order), bool)
        first[1:] = q[order][1:] != q[order][:-1]
        pick = order[first]
        best_j[q[pick]] = j[pick]
        best_s[q[pick]] = score[pick]
    return best_j, best_s


def _mismatch(img, cap, clip, o: LabelOptions, finder: PairFinder):
    n = len(clip)
    med = float(np.median(clip))
    spread = 1.4826 * float(np.median(np.abs(clip - med)))
    low_cut = med - o.mismatch_z * spread
    if o.mismatch_floor is not None:
        low_cut = max(low_cut, o.mismatch_floor)
    margin = o.swap_margin if o.swap_margin is not None else o.mismatch_z * spread
    reason = np.where(clip < low_cut, 1, 0).astype(np.int8)
    bound = np.maximum(clip + margin, low_cut)
    low = reason == 1
    found = [_swaps(img, cap, bound, rows, finder) for rows in (low, ~low)]
    q, j, s = (np.concatenate(x) for x in zip(*found))
    with_row, with_score = best_per_query(q, j, s, n)
    reason[with_row >= 0] |= 2
    stats = {
        "clip_median": med,
        "clip_spread": spread,
        "mismatch_cut": low_cut,
        "swap_margin": margin,
        "clip_histogram": _histogram(clip),
    }
    return reason, with_row, with_score, stats


def _swaps(img, cap, bound: np.ndarray, rows: np.ndarray, finder: PairFinder):
    """(row, other row, cosine) with cos(caption of row, image of other) >= ``bound[row]``, for the rows
    of the mask ``rows``: one ``cross_pairs`` call, each caption at its own bound. The few low rows go
    alone (their bound is the lowest, and a small query set gets fewer, larger cells: see
    ``semantic.nlist_for``); most rows: all captions are queried, the others asking for nothing."""
    if not rows.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    if rows.sum() > len(rows) // 4:  # most rows: query all rather than copy most of the matrix
        p = finder.cross_pairs(cap, img, np.where(rows, bound, np.float32(2.0)))
        q = np.asarray(p.i, np.int64)
    else:
        idx = np.flatnonzero(rows)
        p = finder.cross_pairs(cap[idx], img, bound[idx])
        q = idx[np.asarray(p.i, np.int64)]
    j, s = np.asarray(p.j, np.int64), np.asarray(p.score, np.float32)
    ok = rows[q] & (q != j)
    return q[ok], j[ok], s[ok]


def _histogram(x: np.ndarray, bins: int = 40) -> dict:
    finite = x[np.isfinite(x)].astype(np.float64)
    if not len(finite):
        return {"edges": [], "counts": []}
    lo, hi = float(finite.min()), float(finite.max())
    counts, edges = np.histogram(
        finite, bins=bins, range=(lo, hi) if hi - lo > 1e-6 else (lo - 0.5, lo + 0.5)
    )
    return {"edges": [round(float(e), 5) for e in edges], "counts": counts.tolist()}


def _contamination(img, cap, norm, hashes, against: AgainstSet, o: LabelOptions, finder: PairFinder):
    n, m = len(img), len(against.keys)
    a_img = _unit_vectors(against.image_vectors, m, "against image vectors")
    a_cap = _unit_vectors(against.caption_vectors, m, "against caption vectors")
    best_i = np.full(n, -1, np.int64)
    best_t = np.zeros(n, np.int8)
    best_s = np.full(n, np.nan, np.float32)

    def take(tier: int, q, j, s):
        bj, bs = best_per_query(
            np.asarray(q, np.int64), np.asarray(j, np.int64), np.asarray(s, np.float32), n
        )
        new = (bj >= 0) & (best_i < 0)  # tiers come strongest first
        best_i[new], best_t[new], best_s[new] = bj[new], tier, bs[new]

    if hashes is not None and against.image_hashes is not None:
        first = {}
        for k, h in enumerate(against.image_hashes):
            if h is not None:
                first.setdefault(h, k)
        q = [r for r, h in enumerate(hashes) if h is not None and h in first]
        take(5, q, [first[hashes[r]] for r in q], np.ones(len(q), np.float32))
    if against.copy_pairs is not None:
        take(4, against.copy_pairs.i, against.copy_pairs.j, against.copy_pairs.score)
    p = finder.cross_pairs(img, a_img, o.image_threshold)
    take(3, p.i, p.j, p.score)
    if against.captions is not None:
        first = {}
        for k, c in enumerate(against.captions):
            first.setdefault(normalize_caption(c), k)
        q = [r for r, c in enumerate(norm) if c in first]
        take(2, q, [first[norm[r]] for r in q], np.ones(len(q), np.float32))
    p = finder.cross_pairs(cap, a_cap, o.caption_threshold)
    take(1, p.i, p.j, p.score)
    return best_i, best_t, best_s


def _top_captions(level: np.ndarray, dup: np.ndarray, captions: Sequence[str]) -> list[dict]:
    """Boilerplate: caption leaders with the most ``duplicate_caption`` rows (count includes the leader)."""
    leaders = dup[level == 3]
    if not len(leaders):
        return []
    lead, count = np.unique(leaders, return_counts=True)
    top = np.lexsort((lead, -count))[:TOP_CAPTIONS]
    return [{"caption": captions[int(lead[t])], "rows": int(count[t]) + 1} for t in top]

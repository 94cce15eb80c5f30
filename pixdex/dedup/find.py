"""The three tiers of ``pixdex dedup`` over loaded items: which pairs each tier links, never N x N.

An :class:`ItemSet` is what the tiers read about a set of images (a store's ``ok`` rows, or files given
with ``--image``): per item its content hash, and for the items that have them the stored copy hashes
(``perceptual.COPY_ROWS`` x 32 bytes: 8 dihedral PDQ hashes, then the crop-window hashes) and the
embedding. Nothing is decoded or encoded here: a store's items come from its database
(:func:`load_store_items`), query files from :mod:`pixdex.dedup.files`.

Tiers (pairs are :class:`pixdex.dedup.pairs.Pairs` over item positions, ``score`` as in
:mod:`pixdex.dedup.groups`):

- ``exact``: same content hash (blake2b of the file's bytes). Within a set an exact class is returned
  as a list of positions (the caller links it as a star on the item its keep policy prefers, so a class
  of k identical files costs k - 1 links, not k^2 / 2).
- ``copy``: Hamming distance of PDQ hashes <= D, every stored row of one image (its 8 dihedral
  variants and its crop windows) against the other's canonical hash, both ways, plus two-hop links
  checked on all dihedral rows (:func:`two_hop_links`)
  (:mod:`pixdex.dedup.hamming`: exact range search, multi-index hashing for large sets). Only items
  whose PDQ quality is at least :data:`pixdex.dedup.perceptual.MIN_QUALITY` take part
  (:func:`trusted_copies`): the PDQ bits of a near-flat image are close to random, so two different
  flat images fall within D of each other.
- ``semantic``: cosine of the stored embeddings >= T (:mod:`pixdex.dedup.semantic`: exact blocked
  products for small sets, SemDeDup-style cells above).

Defaults: :data:`pixdex.dedup.perceptual.DEFAULT_DISTANCE` for the copy tier; :func:`default_threshold`
for the semantic tier (a cosine depends on the model: see ARCHITECTURE.md "dedup", and
``pixdex dedup --calibrate`` for a store's own figures).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np

from pixdex.dedup import hamming, perceptual, semantic
from pixdex.dedup.pairs import Pairs
from pixdex.errors import PixdexError

log = logging.getLogger(__name__)

TIERS = ("exact", "copy", "semantic")
DEFAULT_DISTANCE = perceptual.DEFAULT_DISTANCE[perceptual.DEFAULT_ALGORITHM]
TWO_HOP_MAX_DEGREE = (
    64  # copy_within checks two-hop candidates only through items with at most this many links
)
# Semantic threshold: a cosine, so it depends on the model. Measured with pixdex-demo on demo-data
# images and their copies (bench/dedup_quality.py, "demo" section): at 0.95 pair precision >= 0.99 on
# JPEG re-encodes while distinct scenes of two or more objects stay below it; DataComp reports that
# CLIP ViT-B/32 needs about 0.96 for 90% copy precision, so 0.95 is also the default for models not
# measured here. MODEL_THRESHOLDS holds per-model values as they get measured.
DEFAULT_THRESHOLD = 0.95
MODEL_THRESHOLDS: dict[str, float] = {"pixdex-demo": 0.95}

Progress = Callable[[str, int, int], None]  # (step, done, total)


def default_threshold(identity: Optional[dict]) -> float:
    """The semantic threshold for a store's model (its name in :data:`MODEL_THRESHOLDS`, else the default)."""
    name = str((identity or {}).get("model") or "")
    return MODEL_THRESHOLDS.get(name, MODEL_THRESHOLDS.get(name.split(":")[0], DEFAULT_THRESHOLD))


def parse_tiers(text: Optional[str]) -> tuple[str, ...]:
    """``"exact,copy"`` -> ("exact", "copy") in tier order; None or empty -> all tiers."""
    if text is None or not text.strip():
        return TIERS
    asked = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [t for t in asked if t not in TIERS]
    if bad:
        raise PixdexError(f"unknown tier {bad[0]!r}: choose among {', '.join(TIERS)} (comma-separated)")
    return tuple(t for t in TIERS if t in asked)


def check_thresholds(copy_distance: Optional[int], semantic_threshold: Optional[float]) -> None:
    if copy_distance is not None and not 0 <= copy_distance <= perceptual.NBITS["pdq"]:
        raise PixdexError(
            f"--copy-distance must be between 0 and {perceptual.NBITS['pdq']}, got {copy_distance}"
        )
    if semantic_threshold is not None and not -1.0 <= semantic_threshold <= 1.0:
        raise PixdexError(f"--semantic-threshold must be a cosine in [-1, 1], got {semantic_threshold}")


@dataclass
class ItemSet:
    """What the tiers read about n images. ``copy_pos``/``vec_pos`` are the positions (0..n-1) of the
    items that have copy hashes / vectors, aligned with ``copy_rows`` / ``vectors``; ``copy_quality``
    (PDQ's, aligned with ``copy_rows``) is required whenever ``copy_rows`` is not empty."""

    ids: np.ndarray  # (n,) int64 store ids (-1 for a file outside any store)
    content: np.ndarray  # (n,) object: content hash or None
    copy_pos: np.ndarray  # (m,) int64
    copy_rows: np.ndarray  # (m, COPY_ROWS, 32) uint8
    vec_pos: np.ndarray  # (k,) int64
    vectors: np.ndarray  # (k, d) float32
    pixels: Optional[np.ndarray] = None  # (n,) int64 width x height, 0 when unknown
    copy_quality: Optional[np.ndarray] = None  # (m,) PDQ quality 0-100 of each copy_rows item

    def __len__(self) -> int:
        return int(self.ids.size)


def empty_rows() -> np.ndarray:
    return np.zeros((0, perceptual.COPY_ROWS, perceptual.COPY_NBYTES), np.uint8)


def load_store_items(store, tiers: tuple[str, ...], progress: Optional[Progress] = None) -> ItemSet:
    """The ``ok`` rows of a read-only store with what ``tiers`` need, read from the database only."""
    from sqlalchemy import select

    from pixdex.storage.contract import STATUS_OK
    from pixdex.storage.schema import ImageRow

    with store.session() as s:
        q = (
            select(ImageRow.id, ImageRow.content_hash, ImageRow.width, ImageRow.height)
            .where(ImageRow.status == STATUS_OK)
            .order_by(ImageRow.id)
        )
        got = s.execute(q).all()
    ids = np.fromiter((r[0] for r in got), dtype=np.int64, count=len(got))
    content = np.empty(len(got), dtype=object)
    content[:] = [r[1] for r in got]
    pixels = np.fromiter(((r[2] or 0) * (r[3] or 0) for r in got), dtype=np.int64, count=len(got))
    del got
    copy_pos, copy_rows, quality = np.zeros(0, np.int64), empty_rows(), np.zeros(0, np.int16)
    vec_pos, vectors = np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    if "copy" in tiers:
        if progress:
            progress("reading copy hashes", 0, 1)
        cid, copy_rows, quality = store.copy_hashes()
        copy_pos, copy_rows = _positions(ids, cid, copy_rows)
        _, quality = _positions(ids, cid, quality)
    if "semantic" in tiers:
        if progress:
            progress("reading vectors", 0, 1)
        vid, vectors = store.vectors(store.live_ids())
        vec_pos, vectors = _positions(ids, vid, vectors)
    return ItemSet(ids, content, copy_pos, copy_rows, vec_pos, vectors, pixels, quality)


def _positions(ids: np.ndarray, got_ids: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``ids`` (sorted) of ``got_ids``, dropping ids not there (a row changed meanwhile)."""
    if not ids.size:
        return np.zeros(0, np.int64), data[:0]
    pos = np.searchsorted(ids, got_ids)
    ok = ids[np.minimum(pos, ids.size - 1)] == got_ids
    return pos[ok].astype(np.int64), data[ok]


# ---------------------------------------------------------------------- exact


def exact_classes(content: np.ndarray) -> list[np.ndarray]:
    """Positions sharing one content hash, for each hash held by two or more items."""
    have = np.flatnonzero(np.array([c is not None for c in content], dtype=bool))
    if have.size < 2:
        return []
    _, inv, counts = np.unique(content[have].astype(str), return_inverse=True, return_counts=True)
    order = np.argsort(inv, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [have[order[bounds[c] : bounds[c + 1]]] for c in np.flatnonzero(counts >= 2)]


def exact_cross(a: ItemSet, b: ItemSet) -> Pairs:
    """(i in a, j in b) with the same content hash, score 1."""
    where: dict[str, list[int]] = {}
    for j, h in enumerate(b.content.tolist()):
        if h is not None:
            where.setdefault(h, []).append(j)
    ii, jj = [], []
    for i, h in enumerate(a.content.tolist()):
        for j in where.get(h, ()) if h is not None else ():
            ii.append(i)
            jj.append(j)
    return Pairs.of(ii, jj, np.ones(len(ii)))


# ---------------------------------------------------------------------- copy


def trusted_copies(items: ItemSet) -> tuple[np.ndarray, np.ndarray]:
    """(positions, rows) of the items that take part in the copy tier: those with copy hashes whose
    PDQ quality is at least ``perceptual.MIN_QUALITY`` (:func:`pixdex.dedup.perceptual.trusted`)."""
    if not len(items.copy_rows):
        return items.copy_pos, items.copy_rows
    if items.copy_quality is None or len(items.copy_quality) != len(items.copy_rows):
        raise ValueError("an ItemSet with copy hashes needs their PDQ quality (copy_quality)")
    ok = perceptual.trusted(items.copy_quality)
    if ok.all():
        return items.copy_pos, items.copy_rows
    log.debug(
        "copy tier: %d of %d hashed items under PDQ quality %d", (~ok).sum(), ok.size, perceptual.MIN_QUALITY
    )
    return items.copy_pos[ok], items.copy_rows[ok]


def copy_within(items: ItemSet, distance: int, progress: Optional[Progress] = None) -> Pairs:
    """Pairs of trusted items (:func:`trusted_copies`) within ``distance``: any stored row of one
    against the other's canonical hash (the search), plus the two-hop links of :func:`two_hop_links`."""
    pos, rows = trusted_copies(items)
    if len(rows) < 2:
        return Pairs.empty()
    tick = _ticker(progress, "copy tier", len(rows) * rows.shape[1])
    p = hamming.copy_pairs(rows[:, 0], distance, dihedral=rows, progress=tick)
    pixels = items.pixels[pos] if items.pixels is not None else None
    i, j, d = two_hop_links(rows, p.i, p.j, distance, pixels)
    found = Pairs(np.concatenate([p.i, i]), np.concatenate([p.j, j]), np.concatenate([p.distance, d]))
    return Pairs(pos[found.i], pos[found.j], found.score.astype(np.float32))


def two_hop_links(
    rows: np.ndarray, i: np.ndarray, j: np.ndarray, distance: int, pixels: Optional[np.ndarray] = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Links (x, z, distance), x < z, from a crop x of an image y to a whole-image copy z of y.

    The search compares each row with the other's canonical hash only, so a crop x of an original y
    (a window of y matched x) is not linked to a mirrored or flipped copy z of y (the crop's windows
    are not mirrored); with the star rule of the grouping, a kept z would then leave the crops out.
    For each such x ~ y ~ z (x ~ y: a window row of y within ``distance`` of x's canonical hash; y ~ z:
    a dihedral row of one within ``distance`` of the other's canonical hash), x and z not linked, the
    distance over every stored row of one against every dihedral row of the other is computed (z's
    windows meet x's mirror row) and kept when within ``distance``. Only these candidates are
    checked: all 8 dihedral rows as the search's base would cost about 3.3x its time and links an
    image whose window matched a copy of an unrelated image to that image's whole family. Items with
    more than :data:`TWO_HOP_MAX_DEGREE` links are not used as y (bounded work). With ``pixels`` (per
    row, 0 = unknown), x must have fewer pixels than y to count as its crop: a window of one image
    matching another of the same size is a chance match between low-texture images (measured on
    demo-data), not a crop."""
    n = len(rows)
    z0 = np.zeros(0, np.int64)
    if not len(i):
        return z0, z0.copy(), np.zeros(0, np.int32)
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    words = np.ascontiguousarray(rows).view(np.uint64)  # (n, COPY_ROWS, 4)
    nd = len(perceptual.DIHEDRAL)

    def best(a: np.ndarray, b: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """min over rows lo:hi of a against b's canonical hash (in blocks: memory stays bounded)."""
        out = np.empty(a.size, np.int32)
        for s in range(0, a.size, 16384):
            aa, bb = a[s : s + 16384], b[s : s + 16384]
            out[s : s + 16384] = _popcount(words[aa, lo:hi] ^ words[bb, None, 0]).min(axis=1)
        return out

    # per link, both directions: (y, x) when a window of y matched x; (y, z) when a dihedral row matched
    src, dst = np.concatenate([i, j]), np.concatenate([j, i])
    deg = np.bincount(src, minlength=n)
    ok = deg[src] <= TWO_HOP_MAX_DEGREE
    src, dst = src[ok], dst[ok]
    crop = best(src, dst, nd, rows.shape[1]) <= distance
    if pixels is not None:
        px = np.asarray(pixels, np.int64)
        crop &= (px[dst] < px[src]) | (px[dst] <= 0) | (px[src] <= 0)
    whole = np.minimum(best(src, dst, 0, nd), best(dst, src, 0, nd)) <= distance
    o = np.argsort(src, kind="stable")
    src, dst, crop, whole = src[o], dst[o], crop[o], whole[o]
    start = np.searchsorted(src, np.arange(n + 1))
    cand = []
    for y in np.unique(src[crop]).tolist():
        sl = slice(start[y], start[y + 1])
        xs, zs = dst[sl][crop[sl]], dst[sl][whole[sl]]
        if zs.size:
            xx, zz = np.repeat(xs, zs.size), np.tile(zs, xs.size)
            diff = xx != zz
            cand.append(np.minimum(xx, zz)[diff] * n + np.maximum(xx, zz)[diff])
    if not cand:
        return z0, z0.copy(), np.zeros(0, np.int32)
    key = np.setdiff1d(np.concatenate(cand), np.minimum(i, j) * n + np.maximum(i, j))
    x, z = key // n, key % n
    dih = words[:, :nd]
    d = np.empty(key.size, np.int32)
    for s in range(0, key.size, 1024):
        bx, bz = x[s : s + 1024], z[s : s + 1024]
        d1 = _popcount(words[bx][:, :, None] ^ dih[bz][:, None]).min(axis=(1, 2))
        d2 = _popcount(words[bz][:, :, None] ^ dih[bx][:, None]).min(axis=(1, 2))
        d[s : s + 1024] = np.minimum(d1, d2)
    keep = d <= distance
    return x[keep], z[keep], d[keep]


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits over the last axis of a uint64 array, as int32."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).sum(axis=-1, dtype=np.int32)
    return np.unpackbits(x.view(np.uint8), axis=-1).sum(axis=-1, dtype=np.int32)


def copy_cross(a: ItemSet, b: ItemSet, distance: int, progress: Optional[Progress] = None) -> Pairs:
    """(i in a, j in b) within ``distance``, both ways: a's rows against b's canonical hashes (b is a
    rotation/crop... of a) and b's rows against a's (a is a crop of b); one best distance per pair.
    Exact up to ``hamming.EXACT_MAX`` base hashes, LSH above (``method="auto"``), each way. No two-hop
    links: with ``--against`` each image joins the group of the reference image it is closest to.
    Only trusted items of either side take part (:func:`trusted_copies`)."""
    pa, ra = trusted_copies(a)
    pb, rb = trusted_copies(b)
    if not len(ra) or not len(rb):
        return Pairs.empty()
    tick = _ticker(progress, "copy tier", (len(ra) * ra.shape[1] + len(rb) * rb.shape[1]))
    p1 = hamming.cross_copy_pairs(ra[:, 0], rb[:, 0], distance, query_dihedral=ra, progress=tick)
    off = len(ra) * ra.shape[1]
    tick2 = (lambda n: tick(off + n)) if tick else None
    p2 = hamming.cross_copy_pairs(rb[:, 0], ra[:, 0], distance, query_dihedral=rb, progress=tick2)
    i = np.concatenate([pa[p1.i], pa[p2.j]])
    j = np.concatenate([pb[p1.j], pb[p2.i]])
    d = np.concatenate([p1.distance, p2.distance]).astype(np.float32)
    return best_per_pair(Pairs(i, j, d), lower_is_closer=True)


def best_per_pair(p: Pairs, lower_is_closer: bool) -> Pairs:
    """One row per (i, j), its closest score; sorted by (i, j)."""
    if not len(p):
        return p
    o = np.lexsort((p.score if lower_is_closer else -p.score, p.j, p.i))
    i, j, s = p.i[o], p.j[o], p.score[o]
    first = np.ones(i.size, bool)
    first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    return Pairs(i[first], j[first], s[first])


# ---------------------------------------------------------------------- semantic


def semantic_within(items: ItemSet, threshold: float, progress: Optional[Progress] = None) -> Pairs:
    if len(items.vectors) < 2:
        return Pairs.empty()
    p = semantic.similar_pairs(items.vectors, threshold, progress=_ticker2(progress, "semantic tier"))
    return Pairs(items.vec_pos[p.i], items.vec_pos[p.j], p.score)


def semantic_cross(a: ItemSet, b: ItemSet, threshold: float, progress: Optional[Progress] = None) -> Pairs:
    if not len(a.vectors) or not len(b.vectors):
        return Pairs.empty()
    p = semantic.cross_pairs(a.vectors, b.vectors, threshold, progress=_ticker2(progress, "semantic tier"))
    return Pairs(a.vec_pos[p.i], b.vec_pos[p.j], p.score)


def _ticker(progress: Optional[Progress], step: str, total: int) -> Optional[Callable[[int], None]]:
    if progress is None:
        return None
    progress(step, 0, total)
    return lambda done: progress(step, done, total)


def _ticker2(progress: Optional[Progress], step: str) -> Optional[Callable[[int, int], None]]:
    if progress is None:
        return None
    return lambda done, total: progress(step, done, total)

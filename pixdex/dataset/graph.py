"""The link graph of a dataset's rows and its three nested leader levels (see ``pixdex.dataset.labels``).

Rows are grouped into *units*: an image unit is the rows sharing a content hash (or one row without
one), a caption unit the rows sharing a normalised caption. Links between different units come from
the copy pairs and from the pair finder run on one vector per unit; links inside a unit are implicit
(exact tier). Memory is O(rows + links); nothing is quadratic in a unit's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EXACT, COPY, SEMANTIC = 3, 2, 1  # image tiers (larger = stronger)
TEXT = 2  # caption tier of equal normalised text (semantic = 1)


@dataclass
class Adjacency:
    """Symmetric links between units, CSR: neighbours of ``u`` are ``nb[ip[u]:ip[u+1]]``."""

    ip: np.ndarray
    nb: np.ndarray
    tier: np.ndarray
    score: np.ndarray
    edges: int  # undirected

    @classmethod
    def build(cls, n_units: int, a, b, tier, score) -> Adjacency:
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        tier, score = np.asarray(tier, np.int8), np.asarray(score, np.float32)
        keep = a != b
        a, b, tier, score = a[keep], b[keep], tier[keep], score[keep]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        # one link per unit pair: the strongest tier, then the highest score
        order = np.lexsort((-score, -tier, hi, lo))
        first = np.ones(len(order), bool)
        first[1:] = (lo[order][1:] != lo[order][:-1]) | (hi[order][1:] != hi[order][:-1])
        sel = order[first]
        lo, hi, tier, score = lo[sel], hi[sel], tier[sel], score[sel]
        src = np.concatenate([lo, hi])
        dst = np.concatenate([hi, lo])
        by = np.argsort(src, kind="stable")
        ip = np.zeros(n_units + 1, np.int64)
        np.cumsum(np.bincount(src, minlength=n_units), out=ip[1:])
        return cls(ip, dst[by], np.concatenate([tier, tier])[by], np.concatenate([score, score])[by], len(lo))

    def degree(self) -> np.ndarray:
        return np.diff(self.ip)


def units(values: Sequence | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(unit of each row, first row of each unit)``: equal non-None values share a unit."""
    if values is None:
        r = np.arange(n, dtype=np.int64)
        return r, r
    ids: dict = {}
    out = [ids.setdefault(v if v is not None else (None, r), len(ids)) for r, v in enumerate(values)]
    unit = np.asarray(out, np.int64)
    reps = np.full(len(ids), n, np.int64)
    np.minimum.at(reps, unit, np.arange(n, dtype=np.int64))
    return unit, reps


@dataclass
class LinkGraph:
    image_unit: np.ndarray
    image_links: Adjacency
    image_exact: bool  # units come from content hashes
    caption_unit: np.ndarray
    caption_links: Adjacency

    @classmethod
    def build(cls, img, cap, norm_captions, hashes, copy_pairs, image_threshold, caption_threshold, finder):
        n = len(img)
        iu, ireps = units(hashes, n)
        p = finder.similar_pairs(img if len(ireps) == n else img[ireps], image_threshold)
        a, b = [np.asarray(p.i, np.int64)], [np.asarray(p.j, np.int64)]
        tier, score = [np.full(len(p.i), SEMANTIC, np.int8)], [np.asarray(p.score, np.float32)]
        if copy_pairs is not None and len(copy_pairs.i):
            a.append(iu[np.asarray(copy_pairs.i, np.int64)])
            b.append(iu[np.asarray(copy_pairs.j, np.int64)])
            tier.append(np.full(len(copy_pairs.i), COPY, np.int8))
            score.append(np.asarray(copy_pairs.score, np.float32))
        image_links = Adjacency.build(len(ireps), *(np.concatenate(x) for x in (a, b, tier, score)))
        cu, creps = units(norm_captions, n)
        p = finder.similar_pairs(cap if len(creps) == n else cap[creps], caption_threshold)
        caption_links = Adjacency.build(
            len(creps), p.i, p.j, np.full(len(p.i), SEMANTIC, np.int8), np.asarray(p.score, np.float32)
        )
        return cls(iu, image_links, hashes is not None, cu, caption_links)

    def counts(self) -> dict:
        n = len(self.image_unit)
        ilinks, clinks = self.image_links, self.caption_links
        return {
            "rows_sharing_a_hash": int(n - (self.image_unit.max() + 1)) if self.image_exact and n else 0,
            "image_links": int(ilinks.edges),
            "image_copy_links": int((ilinks.tier == COPY).sum() // 2),
            "rows_sharing_a_caption": int(n - (self.caption_unit.max() + 1)) if n else 0,
            "caption_links": int(clinks.edges),
        }


@dataclass
class Levels:
    level: np.ndarray  # int8: 0 leader everywhere, 1 duplicate pair, 2 duplicate image, 3 duplicate caption
    duplicate_of: np.ndarray  # int64 row, -1
    image_tier: np.ndarray  # int8 (EXACT/COPY/SEMANTIC, 0)
    image_score: np.ndarray  # float32, NaN
    caption_tier: np.ndarray  # int8 (TEXT/SEMANTIC, 0)
    caption_score: np.ndarray


def leader_levels(g: LinkGraph, order: np.ndarray) -> Levels:
    """Greedy leader clustering in ``order`` at the pair, image and caption levels (nested)."""
    n = len(g.image_unit)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    iu, cu = g.image_unit, g.caption_unit
    il, cl = g.image_links, g.caption_links
    i_size = np.bincount(iu)
    c_size = np.bincount(cu)
    i_active = (i_size > 1) | (il.degree() > 0)
    c_active = (c_size > 1) | (cl.degree() > 0)
    todo = order[i_active[iu[order]] | c_active[cu[order]]]

    level = np.zeros(n, np.int8)
    dup = np.full(n, -1, np.int64)
    itier = np.zeros(n, np.int8)
    iscore = np.full(n, np.nan, np.float32)
    ctier = np.zeros(n, np.int8)
    cscore = np.full(n, np.nan, np.float32)

    iu_l, cu_l, rank_l = iu.tolist(), cu.tolist(), rank.tolist()
    iip, inb, itr, isc = il.ip.tolist(), il.nb.tolist(), il.tier.tolist(), il.score.tolist()
    cip, cnb, csc = cl.ip.tolist(), cl.nb.tolist(), cl.score.tolist()
    same_tier = EXACT if g.image_exact else SEMANTIC
    n_cap = int(len(c_size))
    cap_link: dict[int, float] = {}  # c1 * n_cap + c2 -> cosine, filled per unit c1 when first needed
    cap_loaded: set[int] = set()
    i_act, c_act = i_active.tolist(), c_active.tolist()

    def cap_neighbours(c):
        return [(c, TEXT, 1.0)] + [(cnb[k], SEMANTIC, csc[k]) for k in range(cip[c], cip[c + 1])]

    def cap_score(c1, c2):
        if c1 == c2:
            return TEXT, 1.0
        if c1 not in cap_loaded:
            cap_loaded.add(c1)
            for k in range(cip[c1], cip[c1 + 1]):
                cap_link[c1 * n_cap + cnb[k]] = csc[k]
        s = cap_link.get(c1 * n_cap + c2)
        return (SEMANTIC, s) if s is not None else (0, 0.0)

    pair_by_unit: dict[int, list[int]] = {}  # image unit -> its pair leaders
    pair_at: dict[tuple[int, int], int] = {}  # (image unit, caption unit) -> its pair leader
    image_leader: dict[int, int] = {}
    caption_leader: dict[int, int] = {}

    for v in todo.tolist():
        U, C = iu_l[v], cu_l[v]
        if i_act[U]:
            inbrs = [(U, same_tier, 1.0)] + [(inb[k], itr[k], isc[k]) for k in range(iip[U], iip[U + 1])]
            # level 1: pairs. Scan the linked units' pair leaders, or look up (unit, caption unit)
            # combinations, whichever is fewer.
            best = None
            cnbrs = cap_neighbours(C)
            scan = sum(len(pair_by_unit.get(W, ())) for W, _, _ in inbrs)
            if scan <= len(inbrs) * len(cnbrs):
                for W, t, s in inbrs:
                    for u in pair_by_unit.get(W, ()):
                        ct, cs = cap_score(cu_l[u], C)
                        if ct:
                            cand = (t, s, ct, cs, -rank_l[u], u)
                            best = cand if best is None or cand > best else best
            else:
                for W, t, s in inbrs:
                    for X, ct, cs in cnbrs:
                        u = pair_at.get((W, X))
                        if u is not None:
                            cand = (t, s, ct, cs, -rank_l[u], u)
                            best = cand if best is None or cand > best else best
            if best is not None:
                t, s, ct, cs, _, u = best
                level[v], dup[v], itier[v], iscore[v], ctier[v], cscore[v] = 1, u, t, s, ct, cs
                continue
            pair_by_unit.setdefault(U, []).append(v)
            pair_at[(U, C)] = v
            # level 2: images, among pair leaders
            best = _best_leader(inbrs, image_leader, rank_l)
            if best is not None:
                t, s, _, u = best
                level[v], dup[v], itier[v], iscore[v] = 2, u, t, s
                continue
            image_leader[U] = v
        # level 3: captions, among image leaders
        if c_act[C]:
            best = _best_leader(cap_neighbours(C), caption_leader, rank_l)
            if best is not None:
                ct, cs, _, u = best
                level[v], dup[v], ctier[v], cscore[v] = 3, u, ct, cs
                continue
            caption_leader[C] = v
    return Levels(level, dup, itier, iscore, ctier, cscore)


def _best_leader(neighbours, leaders: dict, rank_l):
    """The strongest link to a leader among ``neighbours`` (unit, tier, score): the largest
    ``(tier, score, -rank, leader)``, or None when no neighbour leads a group."""
    best = None
    for unit, tier, score in neighbours:
        u = leaders.get(unit)
        if u is not None:
            cand = (tier, score, -rank_l[u], u)
            if best is None or cand > best:
                best = cand
    return best

"""Duplicate groups from labelled pairs, without chaining.

Input: pairs from one or more tiers, each pair within its tier's threshold (``exact`` same content
hash; ``copy`` perceptual-hash Hamming distance, lower is closer; ``semantic`` cosine, higher is
closer), and a keep rank per item (:func:`pixdex.dedup.keep.keep_rank`: 0 = keep first).

The rule (greedy, anti-chaining): the links of all tiers form a graph whose connected components
(union-find) are the *candidate* groups. Within a component, the item the keep policy prefers is kept,
and its group is the kept item plus every item **directly** linked to it, by any tier. Those items are
removed, and the same step repeats on what is left of the component (best-ranked remaining item that
still has a remaining neighbour, its direct neighbours, and so on). An item whose only links went to
items already placed in another group is in no group: it is not a duplicate of anything kept, so it
stays. Hence a~b~c with a and c unlinked never puts a and c in one group, every member of a group is
within its tier's threshold of the kept item, and the kept item is the policy's best of its group.

A member's ``tier`` and ``score`` describe its link to the kept item: the strongest tier that links
the two (exact > copy > semantic), and that tier's best score for the pair. The kept member has tier
``"keep"`` and score ``None``. Members are listed kept first, then by tier strength, then best score,
then keep rank. Groups are listed by the keep rank of their kept item. Everything is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional

import numpy as np

from pixdex.dedup.pairs import Pairs

TIERS = ("exact", "copy", "semantic")  # strongest first
LOWER_IS_CLOSER = frozenset({"copy"})  # Hamming distances; other tiers' scores are similarities
KEPT = "keep"


@dataclass(frozen=True)
class Member:
    index: int
    tier: str  # KEPT for the kept item, else the tier of its link to the kept item
    score: Optional[float]


@dataclass(frozen=True)
class Group:
    keep: int  # index of the kept item
    members: tuple[Member, ...]  # the kept item first
    component: int  # candidate component (union-find) it came from; several groups = a split

    @property
    def duplicates(self) -> tuple[Member, ...]:
        return self.members[1:]


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Union-find labels (n,): each item labelled by the smallest index of its connected component."""
    parent = np.arange(n, dtype=np.int64)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for a, b in zip(i.tolist(), j.tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            if ra < rb:
                parent[rb] = ra
            else:
                parent[ra] = rb
    labels = np.arange(n, dtype=np.int64)
    for x in np.unique(np.concatenate([i, j])).tolist():
        labels[x] = find(x)
    return labels


def _merge_links(links: Iterable[tuple[str, Pairs]], n: int):
    """One best link per unordered pair: (a, b, tier index, score), a < b."""
    aa, bb, tt, ss = [], [], [], []
    for tier, p in links:
        if tier not in TIERS:
            raise ValueError(f"unknown tier {tier!r}; expected one of {TIERS}")
        if not len(p):
            continue
        i, j = np.asarray(p.i, np.int64), np.asarray(p.j, np.int64)
        if i.min() < 0 or j.min() < 0 or max(i.max(), j.max()) >= n:
            raise ValueError(f"{tier} pairs index outside 0..{n - 1}")
        keep = i != j
        aa.append(np.minimum(i, j)[keep])
        bb.append(np.maximum(i, j)[keep])
        tt.append(np.full(int(keep.sum()), TIERS.index(tier), np.int64))
        ss.append(np.asarray(p.score, np.float64)[keep])
    if not aa:
        z = np.zeros(0, np.int64)
        return z, z, z, np.zeros(0, np.float64)
    a, b, t, s = (np.concatenate(x) for x in (aa, bb, tt, ss))
    closeness = np.where(np.isin(t, [TIERS.index(x) for x in LOWER_IS_CLOSER]), s, -s)
    o = np.lexsort((closeness, t, b, a))  # per pair: strongest tier, then closest score first
    a, b, t, s = a[o], b[o], t[o], s[o]
    first = np.ones(a.size, bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return a[first], b[first], t[first], s[first]


def group_pairs(links: Iterable[tuple[str, Pairs]], rank: np.ndarray) -> list[Group]:
    """Groups from ``(tier, Pairs)`` links over items ``0..len(rank)-1`` (see the module docstring).

    ``rank[k]`` is item k's keep rank (0 = keep first; a permutation, e.g. from
    :func:`pixdex.dedup.keep.keep_rank`); ties in ``rank`` are broken by index.
    """
    rank = np.asarray(rank, dtype=np.int64)
    n = rank.size
    a, b, t, s = _merge_links(links, n)
    if a.size == 0:
        return []
    comp = components(n, a, b)
    # adjacency (both directions), CSR by node
    src = np.concatenate([a, b])
    dst = np.concatenate([b, a])
    tier = np.concatenate([t, t])
    score = np.concatenate([s, s])
    o = np.argsort(src, kind="stable")
    src, dst, tier, score = src[o], dst[o], tier[o], score[o]
    start = np.searchsorted(src, np.arange(n + 1))
    placed = np.zeros(n, bool)
    lower = np.array([TIERS[x] in LOWER_IS_CLOSER for x in range(len(TIERS))])
    nodes = np.unique(src)
    nodes = nodes[np.lexsort((nodes, rank[nodes]))]
    groups: list[Group] = []
    for v in nodes.tolist():
        if placed[v]:
            continue
        sl = slice(start[v], start[v + 1])
        nb, nt, ns = dst[sl], tier[sl], score[sl]
        free = ~placed[nb]
        if not free.any():
            continue
        nb, nt, ns = nb[free], nt[free], ns[free]
        closeness = np.where(lower[nt], ns, -ns)
        mo = np.lexsort((nb, rank[nb], closeness, nt))
        placed[v] = True
        placed[nb] = True
        members = [Member(int(v), KEPT, None)]
        members += [Member(int(nb[k]), TIERS[nt[k]], float(ns[k])) for k in mo.tolist()]
        groups.append(Group(int(v), tuple(members), int(comp[v])))
    return groups

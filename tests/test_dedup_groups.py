"""Groups from labelled pairs (no chaining) and keep policies (each tie-break), deterministic."""

from __future__ import annotations

import itertools
from datetime import datetime
from types import SimpleNamespace

import numpy as np
import pytest

from pixdex.dedup import keep
from pixdex.dedup.groups import KEPT, components, group_pairs
from pixdex.dedup.keep import Item
from pixdex.dedup.pairs import Pairs
from pixdex.errors import PixdexError


def _sem(*pairs) -> tuple[str, Pairs]:
    return ("semantic", Pairs.of([p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs]))


def _index(groups) -> dict[int, int]:
    """item -> kept item of its group."""
    return {m.index: g.keep for g in groups for m in g.members}


# ---------------------------------------------------------------------- groups


def test_chain_is_split_when_an_end_is_kept():
    a, b, c = 0, 1, 2  # a~b and b~c, a and c below the threshold (no pair)
    links = [_sem((a, b, 0.93), (b, c, 0.92))]
    for rank in ([0, 1, 2], [0, 2, 1], [2, 1, 0], [1, 2, 0]):  # a or c preferred over b
        where = _index(group_pairs(links, np.array(rank)))
        assert where.get(a) is None or where.get(a) != where.get(c), rank


def test_groups_hold_only_direct_links_to_the_kept_item():
    # a long chain 0~1~2~...~9 and a triangle; every rank order must give star groups
    chain = [(k, k + 1, 0.95) for k in range(9)] + [(20, 21, 0.97), (21, 22, 0.97), (20, 22, 0.96)]
    linked = {(a, b) for a, b, _ in chain} | {(b, a) for a, b, _ in chain}
    rng = np.random.default_rng(0)
    for _ in range(50):
        rank = rng.permutation(23)
        groups = group_pairs([_sem(*chain)], rank)
        seen: set[int] = set()
        for g in groups:
            idx = [m.index for m in g.members]
            assert not seen & set(idx)  # disjoint
            seen |= set(idx)
            assert g.members[0].index == g.keep and g.members[0].tier == KEPT
            assert all((g.keep, m) in linked for m in idx[1:])
            assert rank[g.keep] == min(rank[i] for i in idx)  # the policy's best is kept
        kept = {g.keep for g in groups}
        for a, b, _ in chain:  # maximal: nothing left out is linked to a kept item
            assert not (a in kept and b not in seen) and not (b in kept and a not in seen)
        assert {m.index for g in groups for m in g.members if g.keep in (20, 21, 22)} == {20, 21, 22}


def _reference_groups(n, edges, rank):
    """Independent plain-Python version of the documented greedy rule."""
    adj = {k: set() for k in range(n)}
    for a, b in edges:
        adj[a].add(b)
        adj[b].add(a)
    placed: set[int] = set()
    out = []
    for v in sorted(range(n), key=lambda k: (rank[k], k)):
        free = adj[v] - placed if v not in placed else set()
        if free:
            placed |= free | {v}
            out.append((v, frozenset(free)))
    return out


def test_matches_reference_on_random_graphs():
    rng = np.random.default_rng(1)
    for _ in range(30):
        n = 40
        m = int(rng.integers(10, 80))
        e = {tuple(sorted(map(int, rng.choice(n, 2, replace=False)))) for _ in range(m)}
        rank = rng.permutation(n)
        groups = group_pairs([_sem(*[(a, b, 0.95) for a, b in e])], rank)
        got = [(g.keep, frozenset(mm.index for mm in g.duplicates)) for g in groups]
        assert got == _reference_groups(n, e, rank)
        # components: groups never span two union-find components
        comp = components(n, np.array([a for a, _ in e]), np.array([b for _, b in e]))
        for g in groups:
            assert len({int(comp[mm.index]) for mm in g.members}) == 1 and g.component == comp[g.keep]


def test_strongest_tier_and_best_score_describe_the_link():
    links = [
        ("semantic", Pairs.of([0, 0, 0], [1, 2, 3], [0.97, 0.95, 0.91])),
        ("copy", Pairs.of([1, 2, 2], [0, 0, 0], [9, 6, 3])),  # Hamming: lower is closer
        ("exact", Pairs.of([3], [0], [1.0])),
    ]
    (g,) = group_pairs(links, np.arange(4))
    got = {m.index: (m.tier, m.score) for m in g.members}
    assert got[0] == (KEPT, None)
    assert got[1] == ("copy", 9)
    assert got[2] == ("copy", 3)
    assert got[3] == ("exact", 1.0)
    assert [m.index for m in g.members] == [0, 3, 2, 1]  # kept, then strongest tier, then closest


def test_deterministic_whatever_the_input_order():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 60, 200)
    b = rng.integers(0, 60, 200)
    s = rng.uniform(0.9, 1.0, 200).astype(np.float32)
    rank = rng.permutation(60)
    base = group_pairs([("semantic", Pairs.of(a, b, s))], rank)
    for _ in range(5):
        o = rng.permutation(200)
        swapped = group_pairs([("semantic", Pairs.of(b[o], a[o], s[o]))], rank)
        assert swapped == base


def test_bad_links():
    with pytest.raises(ValueError):
        group_pairs([("fuzzy", Pairs.of([0], [1], [1.0]))], np.arange(2))
    with pytest.raises(ValueError):
        group_pairs([("semantic", Pairs.of([0], [5], [1.0]))], np.arange(2))
    assert group_pairs([("semantic", Pairs.empty())], np.arange(2)) == []


# ---------------------------------------------------------------------- keep policies


def _it(id_, path, w=100, h=100, size=1000, fmt="JPEG", taken=None, mtime=None):
    return Item(id=id_, path=path, width=w, height=h, bytes=size, format=fmt, taken_at=taken, mtime=mtime)


def _best(items, policy):
    kept = items[keep.choose(items, policy)]
    for perm in itertools.permutations(items):  # the choice never depends on the input order
        assert perm[keep.choose(list(perm), policy)] == kept
    return kept.id


D1, D2 = datetime(2019, 5, 1, 12, 0), datetime(2021, 1, 1, 8, 30)


def test_largest_tie_breaks():
    assert _best([_it(1, "/a"), _it(2, "/b", w=200)], "largest") == 2  # pixels
    assert _best([_it(1, "/a", fmt="JPEG"), _it(2, "/b", fmt="PNG", size=10)], "largest") == 2  # format
    assert _best([_it(1, "/a", fmt="HEIF"), _it(2, "/b", fmt="WEBP")], "largest") == 1
    assert _best([_it(1, "/a", size=10), _it(2, "/b", size=20)], "largest") == 2  # bytes
    assert _best([_it(1, "/a", taken=D2), _it(2, "/b", taken=D1)], "largest") == 2  # oldest EXIF
    assert _best([_it(1, "/a"), _it(2, "/b", taken=D2)], "largest") == 2  # a date beats none
    assert _best([_it(2, "/b"), _it(1, "/a")], "largest") == 1  # path
    assert _best([_it(2, "/a"), _it(1, "/a")], "largest") == 1  # id, last resort


def test_original_tie_breaks():
    # a copy marker loses even when larger; each marker style is recognised
    for name in ("IMG_1 (2).jpg", "IMG_1 copy.jpg", "IMG_1-edited.jpg", "IMG_1 2.jpg", "p-1024x768.jpg"):
        assert _best([_it(1, "/x/IMG_1.jpg"), _it(2, f"/x/{name}", w=400)], "original") == 1, name
    assert not keep.has_copy_marker("/x/IMG_1234.jpg") and not keep.has_copy_marker("/x/smallville.jpg")
    assert _best([_it(1, "/a", w=400), _it(2, "/b", taken=D1)], "original") == 2  # EXIF date
    assert _best([_it(1, "/a"), _it(2, "/b", w=400)], "original") == 2  # pixels
    assert _best([_it(1, "/a", fmt="PNG"), _it(2, "/b", size=5000)], "original") == 2  # bytes
    assert _best([_it(1, "/a", fmt="JPEG"), _it(2, "/b", fmt="PNG")], "original") == 2  # format
    assert _best([_it(1, "/a", mtime=20.0), _it(2, "/b", mtime=10.0)], "original") == 2  # first written
    assert _best([_it(2, "/b"), _it(1, "/a")], "original") == 1  # path


@pytest.mark.parametrize("policy,first", [("oldest", 1), ("newest", 2)])
def test_oldest_newest(policy, first):
    assert _best([_it(1, "/a", taken=D1), _it(2, "/b", taken=D2), _it(3, "/c")], policy) == first
    # no date sorts last for both; then modification time; then the largest order
    assert _best([_it(3, "/c", w=900), _it(1, "/a", taken=D1)], policy) == 1
    assert _best([_it(1, "/a", mtime=1.0), _it(2, "/b", mtime=2.0)], policy) == first
    assert _best([_it(1, "/a", taken=D1), _it(2, "/b", taken=D1, w=200)], policy) == 2


def test_shortest_path():
    assert _best([_it(1, "/photos/a/long_name.jpg"), _it(2, "/p/b.jpg")], "shortest-path") == 2
    assert _best([_it(1, "/a/b/cd.jpg"), _it(2, "/ab/cde.jpg")], "shortest-path") == 2  # fewer folders
    assert _best([_it(1, "/a/x.jpg"), _it(2, "/a/y.jpg", w=300)], "shortest-path") == 2  # then largest


def test_total_order_and_rank():
    rng = np.random.default_rng(0)
    items = [
        _it(k, f"/d{k % 3}/f{k % 5}.jpg", w=int(rng.integers(1, 3)) * 100, fmt=["JPEG", "PNG"][k % 2])
        for k in range(30)
    ]
    for policy in keep.POLICIES:
        keys = [keep.sort_key(it, policy) for it in items]
        assert len(set(keys)) == len(items)  # distinct records never tie
        rank = keep.keep_rank(items, policy)
        assert sorted(rank.tolist()) == list(range(30))
        assert keep.order(items, policy)[0] == int(np.argmin(rank))


def test_dates_as_text_and_rows():
    a = _it(1, "/a", taken="2019-05-01 12:00:00")
    b = _it(2, "/b", taken=D1)
    assert keep.sort_key(a, "oldest")[:2] == keep.sort_key(b, "oldest")[:2]
    row = SimpleNamespace(
        id=5, path="/p.jpg", width=4, height=3, size=77, format="PNG", taken_at=None, mtime_ns=2_000_000_000
    )
    it = Item.from_row(row)
    assert (it.bytes, it.mtime, it.pixels) == (77, 2.0, 12)
    with pytest.raises(PixdexError):
        keep.choose([it], "biggest")

"""``pixdex dedup``: the tiers of :mod:`pixdex.dedup.find` over a store, grouped, as a report.

:func:`find_duplicates` has three modes:

- **within a store** (default): every pair of the store's images linked by a tier; pairs are grouped by
  :func:`pixdex.dedup.groups.group_pairs` (star rule: each member directly linked to the kept item)
  with the ``--keep`` policy's order; the kept item is the policy's best of its group.
- **against another store** (``against=``): each image of this store that duplicates an image of the
  other is reported in the group of the other store's image it is closest to (strongest tier, then
  best score, then the keep policy among the candidates); the *kept* item of every group is the other
  store's (the reference: a user removes from this store, so ``--action`` only ever touches this
  store's files). The semantic tier needs both stores on the same model.
- **files** (``images=``): "is this file already here": each file is grouped like an image of a second
  store with the store's image it is closest to (kept); ``summary["matches"]`` lists every store image
  each file matches, per tier, and ``summary["not_found"]`` the files that match nothing.

Only the rows, hashes and vectors of the store(s) are read; query files are decoded and encoded once
(:mod:`pixdex.dedup.files`). Memory is linear in the number of images plus the pairs found.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Optional

import numpy as np

from pixdex.dedup import find
from pixdex.dedup.find import ItemSet, Progress
from pixdex.dedup.groups import LOWER_IS_CLOSER, group_pairs
from pixdex.dedup.groups import TIERS as TIER_ORDER
from pixdex.dedup.keep import DEFAULT_POLICY, Item, check_policy, keep_rank
from pixdex.dedup.model import Group, Member, Report, make_group, make_summary
from pixdex.dedup.pairs import Pairs
from pixdex.errors import PixdexError
from pixdex.paths import pixdex_command

log = logging.getLogger(__name__)


def find_duplicates(
    store_dir,
    *,
    against=None,
    images: Optional[Sequence[str]] = None,
    tiers: Optional[Sequence[str]] = None,
    copy_distance: Optional[int] = None,
    semantic_threshold: Optional[float] = None,
    keep: str = DEFAULT_POLICY,
    device: str = "auto",
    progress: Optional[Progress] = None,
) -> Report:
    """The duplicates of the store at ``store_dir`` (see the module docstring for the three modes).

    ``tiers``: None = every tier (a tier that cannot run is skipped with a warning in
    ``summary["warnings"]``); an explicit list makes such a tier a one-line error instead.
    """
    from pixdex.storage.store import Store

    t0 = time.perf_counter()
    check_policy(keep)
    find.check_thresholds(copy_distance, semantic_threshold)
    explicit = tiers is not None
    tiers = tuple(t for t in find.TIERS if t in (tiers or find.TIERS))
    if against is not None and images:
        raise PixdexError("give either --against or --image, not both")
    warnings: list[str] = []
    store = Store.open_readonly(Path(store_dir))
    other = None
    try:
        n_ok = store.count()
        if n_ok == 0:
            raise PixdexError(
                f"the store at {store.dir} has no indexed images "
                f"(run: {pixdex_command('index', 'FOLDER', store_dir=store.dir)})"
            )
        if against is not None:
            other = Store.open_readonly(Path(against))
        tiers = _usable_tiers(store, other, tiers, explicit, warnings)
        D = find.DEFAULT_DISTANCE if copy_distance is None else int(copy_distance)
        T = (
            find.default_threshold(store.identity)
            if semantic_threshold is None
            else float(semantic_threshold)
        )
        thresholds = {k: v for k, v in (("copy", D), ("semantic", T)) if k in tiers}
        extra = {"store": str(store.dir), "keep_policy": keep}
        items = find.load_store_items(store, tiers, progress)
        if other is not None:
            extra["mode"] = "against"
            extra["against"] = str(other.dir)
            ref = find.load_store_items(other, tiers, progress)
            groups = _against_groups(store, items, other, ref, tiers, D, T, keep, progress)
            n_images = len(items)
        elif images:
            from pixdex.dedup.files import load_files

            extra["mode"] = "image"
            q, infos = load_files(images, store, tiers, device=device, progress=progress)
            groups, matches = _file_groups(q, infos, store, items, tiers, D, T, keep, progress)
            extra["matches"] = matches
            extra["not_found"] = [f.path for f in infos if not matches.get(f.path)]
            n_images = len(infos)
        else:
            extra["mode"] = "store"
            groups = _within_groups(store, items, tiers, D, T, keep, progress)
            n_images = len(items)
    finally:
        store.close()
        if other is not None:
            other.close()
    if warnings:
        extra["warnings"] = warnings
    summary = make_summary(
        groups,
        images=n_images,
        tiers=tiers,
        thresholds=thresholds,
        elapsed_s=time.perf_counter() - t0,
        **extra,
    )
    return Report(groups, summary)


# ---------------------------------------------------------------------- which tiers can run


def _usable_tiers(
    store, other, tiers: tuple[str, ...], explicit: bool, warnings: list[str]
) -> tuple[str, ...]:
    from pixdex.storage.contract import same_model

    out = list(tiers)

    def drop(tier: str, why: str) -> None:
        if explicit:
            raise PixdexError(why)
        warnings.append(why + f"; the {tier} tier is skipped")
        out.remove(tier)

    from pixdex.storage.roots import index_again_command

    for s in (store, other) if other is not None else (store,):
        if "copy" in out:
            c = s.copy_hash_counts()
            if c["missing"]:
                msg = (
                    f"{c['missing']} of {s.count()} images of {s.dir} have no copy hashes yet "
                    f"(run: {index_again_command(s)} to compute them, no re-encoding)"
                )
                if c["hashed"] == 0:
                    drop("copy", msg)
                else:
                    warnings.append(msg + "; they are left out of the copy tier")
        if "semantic" in out and s.identity is None:
            drop("semantic", f"the store at {s.dir} has no model")
    if other is not None and "semantic" in out and not same_model(store.identity, other.identity):
        a, b = _model_text(store.identity), _model_text(other.identity)
        drop(
            "semantic",
            f"the semantic tier needs both stores on the same model ({store.dir}: {a}, {other.dir}: {b}); "
            "use --tiers exact,copy",
        )
    if not out:
        raise PixdexError("no tier left to run")
    return tuple(out)


def _model_text(identity: dict) -> str:
    sha = str(identity.get("checkpoint_sha256") or "")[:12]
    return f"{identity.get('model')} (checkpoint {sha or 'none'}, dim {identity.get('dim')})"


# ---------------------------------------------------------------------- members


def _taken(v) -> Optional[str]:
    if v is None:
        return None
    return v.strftime("%Y-%m-%d %H:%M:%S") if isinstance(v, datetime) else str(v)


def member_of_row(row, tier: Optional[str] = None, score: Optional[float] = None) -> Member:
    return Member(
        id=int(row.id),
        path=str(row.path),
        tier=tier,
        score=_score(tier, score),
        width=row.width,
        height=row.height,
        bytes=row.size,
        format=row.format,
        taken_at=_taken(row.taken_at),
        root=row.root,
        mtime_ns=row.mtime_ns,
    )


def member_of_file(f, tier: Optional[str] = None, score: Optional[float] = None) -> Member:
    info = f.info
    return Member(
        id=None,
        path=f.path,
        tier=tier,
        score=_score(tier, score),
        width=info.width if info else None,
        height=info.height if info else None,
        bytes=f.bytes,
        format=info.format if info else None,
        taken_at=_taken(info.taken_at) if info else None,
        root=os.path.dirname(f.path),
        mtime_ns=f.mtime_ns,
    )


def _score(tier: Optional[str], score) -> Optional[float]:
    if score is None or tier is None:
        return None
    return int(round(float(score))) if tier == "copy" else float(score)


def _ranks(rows: dict, ids: np.ndarray, keep: str) -> np.ndarray:
    return keep_rank([Item.from_row(rows[int(i)]) for i in ids], keep)


# ---------------------------------------------------------------------- within one store


def _within_groups(store, items: ItemSet, tiers, D: int, T: float, keep: str, progress) -> list[Group]:
    classes = find.exact_classes(items.content) if "exact" in tiers else []
    cp = find.copy_within(items, D, progress) if "copy" in tiers else Pairs.empty()
    sp = find.semantic_within(items, T, progress) if "semantic" in tiers else Pairs.empty()
    parts = [cp.i, cp.j, sp.i, sp.j, *classes]
    involved = np.unique(np.concatenate(parts)) if any(p.size for p in parts) else np.zeros(0, np.int64)
    if involved.size == 0:
        return []
    if progress:
        progress("grouping", 0, 1)
    ids = items.ids[involved]
    rows = store.rows(ids)
    ids_ok = np.array([int(i) in rows for i in ids], dtype=bool)  # a row deleted meanwhile is left out
    involved, ids = involved[ids_ok], ids[ids_ok]
    rank = _ranks(rows, ids, keep)
    loc = np.full(len(items), -1, np.int64)
    loc[involved] = np.arange(involved.size)
    links = []
    if classes:  # star on the preferred item of each exact class
        ei, ej = [], []
        for c in classes:
            c = loc[c]
            c = c[c >= 0]
            if c.size < 2:
                continue
            centre = c[np.argmin(rank[c])]
            others = c[c != centre]
            ei.append(np.full(others.size, centre))
            ej.append(others)
        if ei:
            ei, ej = np.concatenate(ei), np.concatenate(ej)
            links.append(("exact", Pairs.of(ei, ej, np.ones(ei.size))))
    for tier, p in (("copy", cp), ("semantic", sp)):
        if len(p):
            a, b = loc[p.i], loc[p.j]
            ok = (a >= 0) & (b >= 0)
            links.append((tier, Pairs(a[ok], b[ok], p.score[ok])))
    out = []
    for g in group_pairs(links, rank):
        row = rows[int(ids[g.keep])]
        others = [member_of_row(rows[int(ids[m.index])], m.tier, m.score) for m in g.duplicates]
        out.append(make_group(member_of_row(row), others))
    if progress:
        progress("grouping", 1, 1)
    return out


# ---------------------------------------------------------------------- against a reference set


def _cross_links(q: ItemSet, ref: ItemSet, tiers, D: int, T: float, progress) -> list[tuple[str, Pairs]]:
    links = []
    if "exact" in tiers:
        links.append(("exact", find.exact_cross(q, ref)))
    if "copy" in tiers:
        links.append(("copy", find.copy_cross(q, ref, D, progress)))
    if "semantic" in tiers:
        links.append(("semantic", find.semantic_cross(q, ref, T, progress)))
    return [(t, p) for t, p in links if len(p)]


def _flatten(links: list[tuple[str, Pairs]]):
    """(i, j, tier index, score, closeness) of every link (closeness: smaller is closer)."""
    if not links:
        z = np.zeros(0, np.int64)
        return z, z, z, np.zeros(0), np.zeros(0)
    i = np.concatenate([p.i for _, p in links])
    j = np.concatenate([p.j for _, p in links])
    t = np.concatenate([np.full(len(p), TIER_ORDER.index(tier)) for tier, p in links])
    s = np.concatenate([p.score.astype(np.float64) for _, p in links])
    lower = np.isin(t, [TIER_ORDER.index(x) for x in LOWER_IS_CLOSER])
    return i, j, t, s, np.where(lower, s, -s)


def _ref_ranks(other, ref: ItemSet, j: np.ndarray, keep: str) -> tuple[dict, np.ndarray]:
    """Rows of the reference items in ``j`` and a rank over all reference positions (others: last)."""
    involved = np.unique(j)
    rows = other.rows(ref.ids[involved])
    involved = np.array([p for p in involved.tolist() if int(ref.ids[p]) in rows], dtype=np.int64)
    rank = np.full(len(ref), np.iinfo(np.int64).max, np.int64)
    if involved.size:
        rank[involved] = _ranks(rows, ref.ids[involved], keep)
    return rows, rank


def _assign(i, j, t, closeness, rank_ref) -> np.ndarray:
    """Index of each query item's best link: strongest tier, closest score, reference keep rank."""
    o = np.lexsort((j, rank_ref[j], closeness, t, i))
    first = np.ones(o.size, bool)
    first[1:] = i[o][1:] != i[o][:-1]
    best = o[first]
    return best[rank_ref[j[best]] < np.iinfo(np.int64).max]


def _grouped(best, i, j, t, s, rank_ref, ref_member, query_member) -> list[Group]:
    best = best[np.lexsort((i[best], j[best], rank_ref[j[best]]))]
    out = []
    k = 0
    while k < best.size:
        jj = j[best[k]]
        e = k
        while e < best.size and j[best[e]] == jj:
            e += 1
        members = [query_member(int(i[b]), TIER_ORDER[t[b]], float(s[b])) for b in best[k:e].tolist()]
        out.append(make_group(ref_member(int(jj)), members))
        k = e
    return out


def _against_groups(store, items, other, ref, tiers, D, T, keep, progress) -> list[Group]:
    i, j, t, s, close = _flatten(_cross_links(items, ref, tiers, D, T, progress))
    if i.size == 0:
        return []
    ref_rows, rank_ref = _ref_ranks(other, ref, j, keep)
    best = _assign(i, j, t, close, rank_ref)
    rows = store.rows(items.ids[np.unique(i[best])])
    best = best[[int(items.ids[i[b]]) in rows for b in best.tolist()]]
    return _grouped(
        best,
        i,
        j,
        t,
        s,
        rank_ref,
        lambda p: member_of_row(ref_rows[int(ref.ids[p])]),
        lambda p, tier, score: member_of_row(rows[int(items.ids[p])], tier, score),
    )


def _file_groups(q, infos, store, items, tiers, D, T, keep, progress) -> tuple[list[Group], dict]:
    i, j, t, s, close = _flatten(_cross_links(q, items, tiers, D, T, progress))
    matches: dict[str, list[dict]] = {f.path: [] for f in infos}
    if i.size == 0:
        return [], matches
    rows, rank = _ref_ranks(store, items, j, keep)
    o = np.lexsort((rank[j], close, t, j, i))  # per (file, store image): its strongest link first
    seen = set()
    for k in o.tolist():
        key = (int(i[k]), int(j[k]))
        row = rows.get(int(items.ids[j[k]]))
        if key in seen or row is None:
            continue
        seen.add(key)
        tier = TIER_ORDER[t[k]]
        matches[infos[key[0]].path].append(
            {"id": int(row.id), "path": row.path, "tier": tier, "score": _score(tier, s[k])}
        )
    for v in matches.values():
        v.sort(
            key=lambda m: (TIER_ORDER.index(m["tier"]), m["score"] if m["tier"] == "copy" else -m["score"])
        )
    # a file that is itself indexed is found (matches) but not its own duplicate: groups pair it with
    # the store's other images only
    other = np.array(
        [
            (r := rows.get(int(items.ids[b]))) is not None and r.path != infos[a].path
            for a, b in zip(i.tolist(), j.tolist())
        ],
        dtype=bool,
    )
    i, j, t, s, close = i[other], j[other], t[other], s[other], close[other]
    best = _assign(i, j, t, close, rank)
    return _grouped(
        best,
        i,
        j,
        t,
        s,
        rank,
        lambda p: member_of_row(rows[int(items.ids[p])]),
        lambda p, tier, score: member_of_file(infos[p], tier, score),
    ), matches

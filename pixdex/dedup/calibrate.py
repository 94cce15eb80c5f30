"""``pixdex dedup --calibrate``: which thresholds suit this store, measured on its own photos.

1. A seeded sample of the store's images (``--sample N``) is decoded in full.
2. Every transform of :mod:`pixdex.dedup.transforms` is applied to each and saved as a JPEG (quality
   95) in a temporary folder (removed afterwards).
3. The copies are read, hashed and (with the semantic tier) encoded exactly as ``pixdex index`` would
   (:mod:`pixdex.dedup.files`), and the tiers run them against the whole store at the loosest setting
   of a sweep.
4. Recall per transform: the share of copies linked to their own original (or to a file with the same
   content), at the current thresholds and at each value of the sweep. ``other_matches``: copies
   linked, at the current thresholds, to a store image of other content (a real duplicate in the
   store, or a false positive).
5. False positives among distinct images: the pairs among the sampled originals (different content)
   linked at each threshold, over all such pairs. A real duplicate inside the sample counts here too;
   ``closest_pairs`` lists the closest ones so a user can look.
6. Suggested threshold per tier: the loosest value of the sweep at which no two sampled originals are
   linked (at least the tightest value of the sweep), with its recall.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from pixdex.dedup import find
from pixdex.dedup.pairs import Pairs
from pixdex.dedup.transforms import TRANSFORMS
from pixdex.errors import PixdexError
from pixdex.paths import pixdex_command

log = logging.getLogger(__name__)

COPY_SWEEP = (8, 12, 16, 20, 24, 28, 31, 36, 40, 48)
SEMANTIC_SWEEP = (0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)
SEED = 0
CLOSEST = 10


def calibrate(
    store_dir,
    *,
    sample: int = 100,
    tiers=None,
    copy_distance: Optional[int] = None,
    semantic_threshold: Optional[float] = None,
    device: str = "auto",
    progress=None,
    tmp_dir=None,
) -> dict:
    """Run the calibration (module docstring) and return its figures as a JSON-ready dict."""
    from pixdex.dedup.files import load_files
    from pixdex.images import DecodeError, decode, read_file
    from pixdex.storage.roots import index_again_command
    from pixdex.storage.store import Store

    if sample < 2:
        raise PixdexError("--sample must be at least 2")
    find.check_thresholds(copy_distance, semantic_threshold)
    tiers = tuple(t for t in ("copy", "semantic") if t in (tiers or find.TIERS))
    if not tiers:
        raise PixdexError("--calibrate measures the copy and semantic tiers; give at least one of them")
    store = Store.open_readonly(Path(store_dir))
    try:
        if store.count() == 0:
            raise PixdexError(
                f"the store at {store.dir} has no indexed images "
                f"(run: {pixdex_command('index', 'FOLDER', store_dir=store.dir)})"
            )
        if "copy" in tiers and store.copy_hash_counts()["hashed"] == 0:
            raise PixdexError(
                f"the store at {store.dir} has no copy hashes yet (run: {index_again_command(store)})"
            )
        D = find.DEFAULT_DISTANCE if copy_distance is None else int(copy_distance)
        T = (
            find.default_threshold(store.identity)
            if semantic_threshold is None
            else float(semantic_threshold)
        )
        items = find.load_store_items(store, tiers, progress)
        eligible = np.arange(len(items))
        if "copy" in tiers:
            eligible = np.intersect1d(eligible, find.trusted_copies(items)[0])  # the tier's own items
        if "semantic" in tiers:
            eligible = np.intersect1d(eligible, items.vec_pos)
        rng = np.random.default_rng(SEED)
        order = rng.permutation(eligible)
        rows = store.rows(items.ids[order[: min(len(order), sample * 2)]])
        with tempfile.TemporaryDirectory(prefix="pixdex-calibrate-", dir=tmp_dir) as tmp:
            originals, copies, source, transform = [], [], [], []
            for pos in order.tolist():
                if len(originals) >= sample:
                    break
                row = rows.get(int(items.ids[pos]))
                if row is None:
                    continue
                try:
                    img, _ = decode(read_file(row.path), None, row.path)
                except DecodeError as e:
                    log.info("calibration: skipping %s (%s)", row.path, e)
                    continue
                k = len(originals)
                originals.append(pos)
                for name, t in TRANSFORMS.items():
                    if progress:
                        progress("making copies", k, sample)
                    out = Path(tmp) / f"{k:05d}-{name}.jpg"
                    t(img).save(out, format="JPEG", quality=95)
                    copies.append(str(out))
                    source.append(pos)
                    transform.append(name)
            if len(originals) < 2:
                raise PixdexError("fewer than two of the sampled images could be read; nothing to calibrate")
            q, _ = load_files(copies, store, tiers, device=device, what="--calibrate", progress=progress)
        result = _measure(
            items, q, np.asarray(originals), np.asarray(source), transform, tiers, D, T, progress
        )
        result.update(
            {
                "store": str(store.dir),
                "model": (store.identity or {}).get("model"),
                "sample": len(originals),
                "copies": len(copies),
                "tiers": list(tiers),
                "thresholds": {k: v for k, v in (("copy", D), ("semantic", T)) if k in tiers},
            }
        )
        return result
    finally:
        store.close()


def _measure(items, q, originals, source, transform, tiers, D, T, progress) -> dict:
    same = {}  # position -> positions of the same content (an exact duplicate counts as the original)
    for pos in originals.tolist():
        h = items.content[pos]
        same[pos] = set(np.flatnonzero(items.content == h).tolist()) if h is not None else {pos}
    out: dict = {
        "recall": {},
        "other_matches": {},
        "false_positives": {},
        "suggested": {},
        "closest_pairs": {},
    }
    for tier in tiers:
        lower = tier == "copy"
        sweep = sorted(set(COPY_SWEEP) | {D}) if lower else sorted(set(SEMANTIC_SWEEP) | {T})
        loosest = max(sweep) if lower else min(sweep)
        current = D if lower else T
        within = (lambda s, v: s <= v) if lower else (lambda s, v: s >= v)
        _key = (lambda v: str(int(v))) if lower else (lambda v: f"{float(v):.2f}")  # noqa: E731
        if lower:
            links = find.copy_cross(q, items, loosest, progress)
        else:
            links = find.semantic_cross(q, items, loosest, progress)
        # each copy's best score to its own original, and whether it matched other content at `current`
        to_source = np.full(len(q), np.nan)
        other = np.zeros(len(q), bool)
        for i, j, s in zip(links.i.tolist(), links.j.tolist(), links.score.tolist()):
            if j in same[source[i]]:
                if np.isnan(to_source[i]) or (s < to_source[i] if lower else s > to_source[i]):
                    to_source[i] = s
            elif within(s, current):
                other[i] = True
        rec: dict = {}
        for name in TRANSFORMS:
            sel = np.array([t == name for t in transform])
            got = to_source[sel]
            rec[name] = {
                "expected": TRANSFORMS[name].expected,
                "kind": TRANSFORMS[name].kind,
                "current": _share(got, current, within),
                "sweep": {_key(v): _share(got, v, within) for v in sweep},
            }
        out["recall"][tier] = rec
        out["other_matches"][tier] = int(other.sum())
        # pairs among the sampled originals (different content)
        sub = _subset(items, originals, tier)
        if lower:
            pairs = find.copy_within(sub, loosest)
        else:
            pairs = find.semantic_within(sub, loosest)
        pairs = _distinct(pairs, sub)
        n_pairs = len(originals) * (len(originals) - 1) // 2
        fp = {_key(v): int(sum(within(s, v) for s in pairs.score.tolist())) for v in sweep}
        out["false_positives"][tier] = {
            "pairs_compared": n_pairs,
            "current": fp[_key(current)],
            "current_rate": fp[_key(current)] / n_pairs if n_pairs else 0.0,
            "sweep": fp,
        }
        o = np.argsort(pairs.score if lower else -pairs.score, kind="stable")[:CLOSEST]
        out["closest_pairs"][tier] = [
            {
                "a": int(items.ids[originals[pairs.i[k]]]),
                "b": int(items.ids[originals[pairs.j[k]]]),
                "score": float(pairs.score[k]),
            }
            for k in o.tolist()
        ]
        ok = [v for v in sweep if fp[_key(v)] == 0]
        best = (max(ok) if lower else min(ok)) if ok else (min(sweep) if lower else max(sweep))
        expected = [n for n in TRANSFORMS if TRANSFORMS[n].expected]
        exp_got = to_source[np.array([t in expected for t in transform])]
        out["suggested"][tier] = {
            "value": best,
            "recall_expected": _share(exp_got, best, within),
            "recall_expected_current": _share(exp_got, current, within),
        }
    return out


def _subset(items, originals: np.ndarray, tier: str):
    """The sampled originals as an ItemSet of their own (positions 0..n-1)."""
    n = len(originals)
    if tier == "copy":
        where = {p: k for k, p in enumerate(items.copy_pos.tolist())}
        k = [where[p] for p in originals.tolist()]
        return find.ItemSet(
            items.ids[originals],
            items.content[originals],
            np.arange(n),
            items.copy_rows[k],
            np.zeros(0, np.int64),
            np.zeros((0, 0), np.float32),
            copy_quality=items.copy_quality[k],
        )
    where = {p: k for k, p in enumerate(items.vec_pos.tolist())}
    vecs = items.vectors[[where[p] for p in originals.tolist()]]
    return find.ItemSet(
        items.ids[originals],
        items.content[originals],
        np.zeros(0, np.int64),
        find.empty_rows(),
        np.arange(n),
        vecs,
    )


def _distinct(p: Pairs, sub) -> Pairs:
    keep = np.array(
        [sub.content[a] != sub.content[b] for a, b in zip(p.i.tolist(), p.j.tolist())], dtype=bool
    )
    return Pairs(p.i[keep], p.j[keep], p.score[keep]) if len(p) else p


def _share(got: np.ndarray, v, within) -> float:
    if got.size == 0:
        return float("nan")
    hit = sum(1 for s in got.tolist() if not np.isnan(s) and within(s, v))
    return round(hit / got.size, 4)

"""Measure the copy tier on labelled images: pair precision and recall per transform and per distance.

Shared by ``bench/dedup_quality.py`` and ``pixdex dedup --calibrate``. The caller supplies, for each
hashed image, its ``scene`` (images of one scene are true duplicates of each other; images of
different scenes must never pair) and, for generated copies, the ``transform`` name and the ``source``
index of the image it was made from. Scores:

- per transform t, at distance D: recall = share of the (source, copy) pairs of t found at <= D;
  precision = share of the found pairs that touch a t-copy and are true (same scene);
- overall: precision over all found pairs, recall over all true pairs and over the true pairs whose
  images are originals or copies by ``expected`` transforms; ``false_distinct`` = found pairs between
  two originals of different scenes (the "merged different scenes" count).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from PIL import Image

from pixdex.dedup.hamming import Pairs
from pixdex.dedup.transforms import TRANSFORMS


@dataclass
class Labels:
    scene: list[str] = field(default_factory=list)
    transform: list[Optional[str]] = field(default_factory=list)  # None for an original image
    source: list[int] = field(default_factory=list)  # index of the original a copy was made from, or -1

    def add(self, scene: str, transform: Optional[str] = None, source: int = -1) -> int:
        self.scene.append(scene)
        self.transform.append(transform)
        self.source.append(source)
        return len(self.scene) - 1

    def __len__(self) -> int:
        return len(self.scene)


def make_copy(
    img: Image.Image, name: str, decode: Optional[Callable[[bytes], Image.Image]] = None
) -> Image.Image:
    """``name``'s transform of ``img``, saved as a JPEG (quality 95, as a user's copy would be stored)
    and read back through ``decode`` (the indexer's decoder; plain Pillow when None)."""
    out = TRANSFORMS[name](img)
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    if decode is not None:
        return decode(data)
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


@dataclass(frozen=True)
class Score:
    found: int
    true_found: int
    positives: int

    @property
    def precision(self) -> float:
        return self.true_found / self.found if self.found else 1.0

    @property
    def recall(self) -> float:
        return self.true_found / self.positives if self.positives else float("nan")


@dataclass(frozen=True)
class TransformScore(Score):
    hits: int = 0

    @property
    def recall(self) -> float:
        return self.hits / self.positives if self.positives else float("nan")


def _true_pairs(labels: Labels) -> set[tuple[int, int]]:
    by_scene: dict[str, list[int]] = {}
    for k, s in enumerate(labels.scene):
        by_scene.setdefault(s, []).append(k)
    out = set()
    for members in by_scene.values():
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                out.add((members[a], members[b]))
    return out


def evaluate(labels: Labels, pairs: Pairs, thresholds: Sequence[int]) -> dict:
    """Scores at each threshold (pairs must come from a search at >= max(thresholds)).

    Returns ``{"per_transform": {name: {D: Score}}, "overall": {D: Score}, "expected": {D: Score},
    "false_distinct": {D: int}, "false_pairs": {D: [(i, j, distance), ...]}, "copy_distances":
    {name: [distance or None per source]}}``.
    """
    scene = np.asarray(labels.scene, dtype=object)
    tr = labels.transform
    src = np.asarray(labels.source)
    is_orig = np.array([t is None for t in tr])
    expected_item = np.array([t is None or TRANSFORMS[t].expected for t in tr])
    truth = _true_pairs(labels)
    truth_expected = {(a, b) for a, b in truth if expected_item[a] and expected_item[b]}
    dist = {(int(a), int(b)): int(d) for a, b, d in zip(pairs.i, pairs.j, pairs.distance)}
    copy_distances: dict[str, list[Optional[int]]] = {}
    for k, t in enumerate(tr):
        if t is not None:
            a, b = sorted((int(src[k]), k))
            copy_distances.setdefault(t, []).append(dist.get((a, b)))
    out: dict = {"per_transform": {}, "overall": {}, "expected": {}, "false_distinct": {}, "false_pairs": {}}
    out["copy_distances"] = copy_distances
    for D in thresholds:
        found = [(a, b, d) for (a, b), d in dist.items() if d <= D]
        true_found = [(a, b) for a, b, _ in found if scene[a] == scene[b]]
        false = [(a, b, d) for a, b, d in found if scene[a] != scene[b]]
        out["overall"][D] = Score(len(found), len(true_found), len(truth))
        tf = set(true_found)
        out["expected"][D] = Score(
            sum(1 for a, b, _ in found if expected_item[a] and expected_item[b]),
            len(tf & truth_expected),
            len(truth_expected),
        )
        out["false_distinct"][D] = sum(1 for a, b, _ in false if is_orig[a] and is_orig[b])
        out["false_pairs"][D] = false
        for name, ds in copy_distances.items():
            touching = [(a, b) for a, b, _ in found if tr[a] == name or tr[b] == name]
            hits = sum(1 for d in ds if d is not None and d <= D)
            ok = sum(1 for a, b in touching if scene[a] == scene[b])
            # recall counts the (source, copy) pairs; precision every found pair that touches a copy
            out["per_transform"].setdefault(name, {})[D] = TransformScore(len(touching), ok, len(ds), hits)
    return out


def kind_score(result: dict, names: Sequence[str], D: int) -> TransformScore:
    """Pooled score of several transforms (a transform class) at D."""
    parts = [result["per_transform"][n][D] for n in names if n in result["per_transform"]]
    return TransformScore(
        sum(p.found for p in parts),
        sum(p.true_found for p in parts),
        sum(p.positives for p in parts),
        sum(p.hits for p in parts),
    )

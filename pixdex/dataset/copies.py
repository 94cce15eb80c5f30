"""The copy tier of ``pixdex dataset dedup``: image pairs within a Hamming distance of their PDQ hashes.

Each distinct image content of the dataset (and of ``--against``) that has copy hashes in the embedding
store (:mod:`pixdex.dataset.store`, ``copy_hashes``) takes part once, through the first readable row
that shows it; the pairs are found by ``pixdex dedup``'s copy tier (:func:`pixdex.dedup.find.copy_within`,
:func:`pixdex.dedup.find.copy_cross`: every stored row of one image, its 8 dihedral variants and crop
windows, against the other's canonical hash, both ways), so a mirrored, rotated or slightly cropped
copy links where the embedding may not. As there, an image whose PDQ quality is under
``perceptual.MIN_QUALITY`` (near-flat: its hash is not to be trusted) takes no part.

Score: the labels' pairs say "higher = closer", so a Hamming distance ``d`` becomes
:func:`copy_score` ``= 1 - d / 256`` (256 = the bits of a PDQ hash): 1.0 for equal hashes, 0.879 at the
default distance 31. The evidence columns show it as ``image_tier = copy`` with this score
(``contaminated_tier = image:copy`` against ``--against``); ``d = round(256 x (1 - score))``. A copy link
outranks any semantic link (graph tier ``COPY``) whatever its score; the distance cut-off is the only
threshold of the tier.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pixdex.dedup import perceptual
from pixdex.dedup.pairs import Pairs

NBITS = perceptual.NBITS["pdq"]
DEFAULT_DISTANCE = perceptual.DEFAULT_DISTANCE["pdq"]


def copy_score(distance) -> np.ndarray:
    """A Hamming distance as a score where higher = closer: ``1 - d / 256``."""
    return (1.0 - np.asarray(distance, np.float32) / NBITS).astype(np.float32)


def _items(hashes: Sequence[str | None], copies: dict[str, perceptual.CopyHash]):
    """An ItemSet over the rows ``hashes``: the first row of each content with copy hashes."""
    from pixdex.dedup.find import ItemSet, empty_rows

    pos: list[int] = []
    seen: set[str] = set()
    for r, h in enumerate(hashes):
        if h is not None and h in copies and h not in seen:
            seen.add(h)
            pos.append(r)
    rows = np.stack([copies[hashes[r]].rows for r in pos]) if pos else empty_rows()
    quality = np.array([copies[hashes[r]].quality for r in pos], dtype=np.int16)
    n = len(hashes)
    content = np.empty(n, dtype=object)
    content[:] = list(hashes)
    return ItemSet(
        ids=np.arange(n, dtype=np.int64),
        content=content,
        copy_pos=np.asarray(pos, np.int64),
        copy_rows=rows,
        vec_pos=np.zeros(0, np.int64),
        vectors=np.zeros((0, 0), np.float32),
        copy_quality=quality,
    )


def _scored(p: Pairs) -> Pairs:
    return Pairs(p.i, p.j, copy_score(p.score))


def within(hashes: Sequence[str | None], copies: dict[str, perceptual.CopyHash], distance: int) -> Pairs:
    """Copy pairs (i < j) of the rows ``hashes`` (one row per content), score :func:`copy_score`."""
    from pixdex.dedup.find import copy_within

    return _scored(copy_within(_items(hashes, copies), distance))


def cross(
    hashes: Sequence[str | None],
    copies: dict[str, perceptual.CopyHash],
    against_hashes: Sequence[str | None],
    against_copies: dict[str, perceptual.CopyHash],
    distance: int,
) -> Pairs:
    """Copy pairs (dataset row i, against row j), both ways, one best per pair; score :func:`copy_score`."""
    from pixdex.dedup.find import copy_cross

    return _scored(copy_cross(_items(hashes, copies), _items(against_hashes, against_copies), distance))

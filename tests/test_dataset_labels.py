"""Dataset labels on given vectors: a hand-made set where every label occurs (expected rows derived by
hand from how each vector is built), the modes, ``keep="best"``, ``--against``, and the unit/adjacency
machinery against a brute-force reading of the definitions on random data."""

import math

import numpy as np
import pytest

from pixdex.dataset.labels import (
    AgainstSet,
    LabelOptions,
    label_dataset,
    normalize_caption,
)
from pixdex.dedup.semantic import EXACT as exact
from pixdex.errors import PixdexError

D = 96


class Space:
    """Named orthogonal axes; ``vec(S1=1, N3=0.2)`` is the unit vector of that combination."""

    def __init__(self):
        self.axes: dict[str, int] = {}

    def vec(self, **w) -> np.ndarray:
        v = np.zeros(D, np.float32)
        for name, x in w.items():
            v[self.axes.setdefault(name, len(self.axes))] += x
        return v / np.linalg.norm(v)

    def caption(self, scene: str, clip: float, own: str) -> np.ndarray:
        """A caption whose cosine with image ``vec(scene=1)`` is ``clip``; ``own`` is its private axis."""
        return self.vec(**{scene: clip, own: math.sqrt(1 - clip * clip)})


def hand_made():
    """16 rows; the comments say which label each row must get with keep="first" and why."""
    s = Space()
    c1 = s.caption("S1", 0.30, "F1")
    theta = math.acos(0.96)
    rows = [
        # key, image vector, content hash, caption text, caption vector
        ("r1", s.vec(S1=1), "h1", "A red circle.", c1),  # first of its group: kept
        ("r2", s.vec(S1=1), "h1", "a red circle", c1),  # same bytes, same normalised text as r1: pair
        # near-copy of r1's image (cos 1/sqrt(1.04)=0.981) with a paraphrase (cos 0.999): pair of r1
        ("r3", s.vec(S1=1, N3=0.2), "h3", "a red disc", s.vec(S1=0.35, F1=math.sqrt(1 - 0.35**2))),
        (
            "r4",
            s.vec(S1=1),
            "h1",
            "a circle in red ink",
            s.caption("S1", 0.26, "F4"),
        ),  # r1's image, new caption
        # boilerplate on two unrelated images (cos 0): r6 is a duplicate caption of r5
        ("r5", s.vec(S2=1), "h5", "a photo", s.vec(S2=0.27, S3=0.27, G=math.sqrt(1 - 2 * 0.27**2))),
        ("r6", s.vec(S3=1), "h6", "A  photo!", s.vec(S2=0.27, S3=0.27, G=math.sqrt(1 - 2 * 0.27**2))),
        ("r7", s.vec(S4=1), "h7", "a blue square", s.caption("S4", 0.32, "F7")),  # nothing
        # r8 and r9 carry each other's captions: own score 0, the other's image 0.40 -> low + swapped
        ("r8", s.vec(S5=1), "h8", "a green star", s.caption("S6", 0.40, "F9")),
        ("r9", s.vec(S6=1), "h9", "a yellow cross", s.caption("S5", 0.40, "F8")),
        ("r10", s.vec(S7=1), "h10", "zzz", s.vec(F10=1)),  # describes nothing: low only
        ("r11", s.vec(S8=1), "h11", "a lighthouse", s.caption("S8", 0.29, "F11")),  # val-1's bytes
        (
            "r12",
            s.vec(S9=1),
            "h12",
            "The Eiffel Tower at night",
            s.caption("S9", 0.31, "F12"),
        ),  # val-2's text
        ("r13", s.vec(S10=1), "h13", "a boat", s.caption("S10", 0.33, "F13")),  # val-3's image, cos 0.981
        # an image chain: r15 is cos 0.96 from r14 and r16, r16 is cos 0.843 from r14. r15 is a
        # duplicate image of r14; r16 is linked only to r15, which is not kept at the image level: kept.
        ("r14", s.vec(A=1), "h14", "chain one", None),
        ("r15", s.vec(A=math.cos(theta), B=math.sin(theta)), "h15", "chain two", None),
        ("r16", s.vec(A=math.cos(2 * theta), B=math.sin(2 * theta)), "h16", "chain three", None),
    ]
    for k, clip in ((13, 0.28), (14, 0.34), (15, 0.25)):  # chain captions: clip x image + private axis
        key, img, h, text, _ = rows[k]
        cap = clip * img + math.sqrt(1 - clip * clip) * s.vec(**{f"F{key}": 1})
        rows[k] = (key, img, h, text, cap.astype(np.float32))
    against = AgainstSet(
        keys=["val-1", "val-2", "val-3"],
        image_vectors=np.stack([s.vec(S8=1), s.vec(V2=1), s.vec(S10=1, N13=0.2)]),
        caption_vectors=np.stack([s.vec(V1c=1), rows[11][4], s.vec(V3c=1)]),
        captions=["a tall lighthouse", "the eiffel tower at night.", "a sailing boat"],
        image_hashes=["h11", "hv2", "hv3"],
    )
    keys, imgs, hashes, texts, caps = zip(*rows)
    return list(keys), np.stack(imgs), list(hashes), list(texts), np.stack(caps), against


def run(keep="first", against=True, **opts):
    keys, img, hashes, texts, cap, ag = hand_made()
    o = LabelOptions(keep=keep, **opts)
    return label_dataset(
        keys, img, cap, texts, hashes, against=ag if against else None, options=o, finder=exact
    )


def by_key(table, column):
    cols = table.columns()
    return {k: v for k, v in zip(cols["key"], cols[column]) if v not in (None, "")}


def removed(table):
    return {k for k, d in zip(table.keys, table.dropped) if d}


def test_every_label_on_the_hand_made_set():
    t = run()
    assert by_key(t, "labels") == {
        "r2": "duplicate_pair",
        "r3": "duplicate_pair",
        "r4": "duplicate_image",
        "r6": "duplicate_caption",
        "r8": "mismatch",
        "r9": "mismatch",
        "r10": "mismatch",
        "r11": "contaminated",
        "r12": "contaminated",
        "r13": "contaminated",
        "r15": "duplicate_image",
    }
    assert by_key(t, "duplicate_of") == {"r2": "r1", "r3": "r1", "r4": "r1", "r6": "r5", "r15": "r14"}
    assert by_key(t, "image_tier") == {"r2": "exact", "r3": "semantic", "r4": "exact", "r15": "semantic"}
    assert by_key(t, "caption_tier") == {"r2": "exact", "r3": "semantic", "r6": "exact"}
    scores = by_key(t, "image_score")
    assert scores["r3"] == pytest.approx(1 / math.sqrt(1.04), abs=1e-5)
    assert scores["r15"] == pytest.approx(0.96, abs=1e-5)
    assert scores["r6"] == pytest.approx(0.0, abs=1e-6)  # evidence: the images are unrelated
    assert by_key(t, "caption_score")["r4"] == pytest.approx(0.30 * 0.26, abs=1e-5)  # why not a pair
    assert by_key(t, "mismatch") == {"r8": "low+swapped", "r9": "low+swapped", "r10": "low"}
    assert by_key(t, "mismatch_with") == {"r8": "r9", "r9": "r8"}
    assert by_key(t, "mismatch_score")["r8"] == pytest.approx(0.40, abs=1e-5)
    assert by_key(t, "contaminated_by") == {"r11": "val-1", "r12": "val-2", "r13": "val-3"}
    assert by_key(t, "contaminated_tier") == {
        "r11": "image:exact",
        "r12": "caption:exact",
        "r13": "image:semantic",
    }
    assert t.clip_score[0] == pytest.approx(0.30, abs=1e-6)
    s = t.summary()
    assert s["labels"]["duplicate_caption"] == 1 and s["top_captions"] == [{"caption": "a photo", "rows": 2}]
    assert s["rows"] == 16 and s["removed"] == len(removed(t)) == s["rows"] - s["kept"]


def test_modes_drop_nested_sets():
    contaminated = {"r11", "r12", "r13"}
    pairs = {"r2", "r3"} | contaminated
    assert removed(run(mode="pairs")) == pairs
    assert removed(run(mode="images")) == pairs | {"r4", "r15"}
    assert removed(run(mode="strict")) == pairs | {"r4", "r15", "r6"}
    assert removed(run(mode="pairs", drop_mismatch=True)) == pairs | {"r8", "r9", "r10"}
    assert removed(run(mode="pairs", against=False)) == {"r2", "r3"}


def test_keep_best_score_changes_the_kept_rows():
    """By image-caption score: r3 (0.343) leads the r1 group and r15 (0.34) the chain, whose both ends
    are linked to it; r5/r6 tie at 0.27 and fall back to input order."""
    t = run(keep="best")
    assert by_key(t, "duplicate_of") == {
        "r1": "r3",
        "r2": "r3",
        "r4": "r3",
        "r6": "r5",
        "r14": "r15",
        "r16": "r15",
    }
    labels = by_key(t, "labels")
    assert [labels[k] for k in ("r1", "r2", "r4", "r14", "r16")] == ["duplicate_pair"] * 2 + [
        "duplicate_image"
    ] * 3


def test_thresholds_move_the_semantic_tier():
    t = run(image_threshold=0.99, caption_threshold=0.9999)
    labels = by_key(t, "labels")
    # r3 is no longer a copy of r1, r15 no longer of r14; r13 no longer leaks val-3's image
    assert "r3" not in labels and "r15" not in labels and "r13" not in labels
    assert labels["r2"] == "duplicate_pair" and labels["r4"] == "duplicate_image"


def test_normalize_caption():
    assert normalize_caption('  "A  Dog\u00a0on\tthe GRASS!" ') == "a dog on the grass"
    assert normalize_caption("ＡＢＣ…") == "abc"  # NFKC folds full-width letters
    assert normalize_caption("a cat, a dog") == "a cat, a dog"  # inner punctuation stays


def test_bad_inputs_are_one_line_errors():
    keys, img, hashes, texts, cap, _ = hand_made()
    with pytest.raises(PixdexError, match="--mode must be one of"):
        label_dataset(keys, img, cap, texts, options=LabelOptions(mode="fast"), finder=exact)
    with pytest.raises(PixdexError, match="L2-normalised"):
        label_dataset(keys, img * 2, cap, texts, finder=exact)
    with pytest.raises(PixdexError, match="expected 16 rows"):
        label_dataset(keys, img[:3], cap, texts, finder=exact)


# ----------------------------------------------------------------------------- against a brute force


def _reference(img, cap, norm, hashes, copy, order, ti, tc):
    """The three levels straight from the definitions, with N x N link tables."""
    n = len(img)
    isim, csim = img @ img.T, cap @ cap.T
    unit = [h if h is not None else ("row", r) for r, h in enumerate(hashes)]
    copy_score = {}
    for a, b, s in zip(copy.i, copy.j, copy.score):
        k = frozenset((unit[a], unit[b]))
        copy_score[k] = max(copy_score.get(k, -1), float(s))

    def ilink(u, v):
        if unit[u] == unit[v]:
            return 3, 1.0
        k = frozenset((unit[u], unit[v]))
        if k in copy_score:
            return 2, copy_score[k]
        return (1, float(isim[u, v])) if isim[u, v] >= ti else None

    def clink(u, v):
        if norm[u] == norm[v]:
            return 2, 1.0
        return (1, float(csim[u, v])) if csim[u, v] >= tc else None

    rank = {int(v): k for k, v in enumerate(order)}
    level, dup = np.zeros(n, int), np.full(n, -1)
    pl, il, cl = [], [], []
    for v in map(int, order):
        c = [(*ilink(u, v), *clink(u, v), -rank[u], u) for u in pl if ilink(u, v) and clink(u, v)]
        if c:
            level[v], dup[v] = 1, max(c)[-1]
            continue
        pl.append(v)
        c = [(*ilink(u, v), -rank[u], u) for u in il if ilink(u, v)]
        if c:
            level[v], dup[v] = 2, max(c)[-1]
            continue
        il.append(v)
        c = [(*clink(u, v), -rank[u], u) for u in cl if clink(u, v)]
        if c:
            level[v], dup[v] = 3, max(c)[-1]
            continue
        cl.append(v)
    return level, dup


@pytest.mark.parametrize("seed,keep", [(0, "first"), (1, "best"), (2, "first")])
def test_levels_match_brute_force(seed, keep):
    """Clustered vectors, repeated hashes and captions, copy pairs: many overlapping links."""
    rng = np.random.default_rng(seed)
    n, d = 400, 16
    centres = rng.normal(size=(12, d))

    def clustered(noise):
        v = centres[rng.integers(12, size=n)] + noise * rng.normal(size=(n, d))
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    img, cap = clustered(0.25), clustered(0.25)
    hashes = [None if rng.random() < 0.2 else f"h{rng.integers(150)}" for _ in range(n)]
    texts = [f"Caption {rng.integers(120)}." for _ in range(n)]
    first_of_hash, first_of_text = {}, {}
    for r in range(n):  # equal bytes / equal text -> equal vectors, as an encoder gives
        if hashes[r] is not None:
            img[r] = img[first_of_hash.setdefault(hashes[r], r)]
        cap[r] = cap[first_of_text.setdefault(normalize_caption(texts[r]), r)]
    ci = rng.integers(n, size=40)
    cj = rng.integers(n, size=40)
    copy = exact.Pairs(ci.astype(np.int64), cj.astype(np.int64), rng.random(40).astype(np.float32))
    o = LabelOptions(keep=keep, image_threshold=0.9, caption_threshold=0.93)
    t = label_dataset([str(r) for r in range(n)], img, cap, texts, hashes, copy, options=o, finder=exact)
    order = np.lexsort((np.arange(n), -t.clip_score.astype(np.float64))) if keep == "best" else np.arange(n)
    norm = [normalize_caption(x) for x in texts]
    level, dup = _reference(img, cap, norm, hashes, copy, order, 0.9, 0.93)
    lv = np.select(
        [t.has("duplicate_pair"), t.has("duplicate_image"), t.has("duplicate_caption")], [1, 2, 3], 0
    )
    assert min(np.bincount(level, minlength=4)) > 5  # every level occurs
    np.testing.assert_array_equal(lv, level)
    np.testing.assert_array_equal(t.duplicate_of, dup)

"""Copy tier: perceptual hashes, their dihedral variants, the Hamming pair search, quality on real photos."""

from __future__ import annotations

import math

import numpy as np
import pytest
from index_support import SHARED_DATA
from PIL import Image

from pixdex.dedup import perceptual
from pixdex.dedup.copyeval import make_copy
from pixdex.dedup.hamming import copy_pairs, cross_copy_pairs, plan_multihash
from pixdex.dedup.transforms import GOAL_KINDS, TRANSFORMS, names_of_kind
from pixdex.images import decode, read_file

needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared test data not present")
DRAFT = perceptual.HASH_DRAFT  # the indexer decodes at this size for the hashes, whatever the model
D = perceptual.DEFAULT_DISTANCE[perceptual.DEFAULT_ALGORITHM]
ALG = perceptual.DEFAULT_ALGORITHM


def _bits(a: np.ndarray) -> np.ndarray:
    return np.unpackbits(a, axis=-1).astype(np.int32)


def brute_distances(dihedral: np.ndarray) -> np.ndarray:
    """(N, N) min over the 8 variants of either image against the other's canonical hash (reference)."""
    b = _bits(dihedral)  # (N, 8, nbits)
    canon = b[:, 0]
    n = len(b)
    d = np.full((n, n), 10**6, dtype=np.int64)
    for g in range(b.shape[1]):
        v = b[:, g]
        dg = v @ (1 - canon).T + (1 - v) @ canon.T  # hamming(variant g of row i, canonical of column j)
        d = np.minimum(d, np.minimum(dg, dg.T))
    return d


def synthetic_photo(seed: int, size=(96, 80)) -> Image.Image:
    """A smooth, asymmetric, textured image (blurred noise plus a bar), deterministic."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    im = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    a = np.asarray(im).copy()
    a[5:20, 10:60] = (255, 240, 0)
    return Image.fromarray(a)


# ---------------------------------------------------------------------- hashes


def test_hash_sizes_and_canonical_is_variant_zero():
    im = synthetic_photo(0)
    for alg in perceptual.ALGORITHMS:
        h = perceptual.hash_image(im, alg)
        dih = perceptual.dihedral_hashes(im, alg)
        assert len(h) == perceptual.NBYTES[alg] and len(dih) == 8
        assert dih[0] == h and len(set(dih)) > 1


def test_phash_equals_imagehash_on_small_images():
    import imagehash

    for seed in range(5):
        im = synthetic_photo(seed, size=(120 + 20 * seed, 90))
        assert perceptual.hash_image(im, "phash").hex() == str(imagehash.phash(im))


@pytest.mark.parametrize("alg", perceptual.ALGORITHMS)
def test_dihedral_variant_equals_hash_of_the_transposed_image(alg):
    T = Image.Transpose
    ops = [None, T.ROTATE_90, T.ROTATE_180, T.ROTATE_270, T.FLIP_LEFT_RIGHT, T.FLIP_TOP_BOTTOM]
    ops += [T.TRANSPOSE, T.TRANSVERSE]
    assert len(ops) == len(perceptual.DIHEDRAL)
    for seed in range(3):
        im = synthetic_photo(seed)
        dih = perceptual.dihedral_hashes(im, alg)
        for g, op in enumerate(ops):
            copy = im if op is None else im.transpose(op)
            # equal up to coefficients tied with the median (float rounding): a few bits at most
            assert perceptual.hamming(dih[g], perceptual.hash_image(copy, alg)) <= perceptual.NBITS[alg] // 32


def test_rotated_and_mirrored_copies_are_found_by_the_pair_search():
    ims = [synthetic_photo(s, size=(160, 120)) for s in range(6)]
    T = Image.Transpose
    copies = [
        ims[0].transpose(T.FLIP_LEFT_RIGHT),
        ims[1].transpose(T.ROTATE_90),
        ims[2].transpose(T.ROTATE_270),
    ]
    dih = np.stack([perceptual.dihedral_array(im) for im in ims + copies])
    found = copy_pairs(dih[:, 0], D, dih)
    assert {(0, 6), (1, 7), (2, 8)} <= found.as_set()
    plain = copy_pairs(dih[:, 0], D)  # without the variants the mirrored/rotated copies are missed
    assert not {(0, 6), (1, 7), (2, 8)} & plain.as_set()
    q = cross_copy_pairs(dih[6:, 0], dih[:6, 0], D, query_dihedral=dih[6:])
    assert {(0, 0), (1, 1), (2, 2)} <= q.as_set()


# ---------------------------------------------------------------------- search


def planted(n: int, nbytes: int, max_distance: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random hashes and dihedral sets with near pairs planted at distances around ``max_distance``."""
    rng = np.random.default_rng(seed)
    nbits = nbytes * 8
    dih = rng.integers(0, 256, (n, 8, nbytes), dtype=np.uint8)
    for k in range(0, n - 1, 7):  # variant g of k is within a few bits of the canonical hash of k + 1
        g = int(rng.integers(0, 8))
        flips = int(rng.integers(0, max_distance + 4))
        bits = np.unpackbits(dih[k, g])
        bits[rng.choice(nbits, flips, replace=False)] ^= 1
        dih[k + 1, 0] = np.packbits(bits)
    dih[n - 1] = dih[n - 2]  # an exact duplicate
    return dih[:, 0].copy(), dih


@pytest.mark.parametrize("nbytes,max_distance", [(32, 31), (32, 12), (8, 10), (8, 3)])
def test_copy_pairs_match_brute_force(nbytes, max_distance):
    hashes, dih = planted(700, nbytes, max_distance, seed=nbytes + max_distance)
    ref = brute_distances(dih)
    ii, jj = np.nonzero(np.triu(ref <= max_distance, k=1))
    expected = {(int(i), int(j)): int(ref[i, j]) for i, j in zip(ii, jj)}
    assert len(expected) >= 40  # the planted pairs within reach are there
    assert plan_multihash(nbytes * 8, 700, max_distance) is not None
    for method in ("flat", "multihash"):
        got = copy_pairs(hashes, max_distance, dih, method=method)
        assert dict(zip(zip(got.i.tolist(), got.j.tolist()), got.distance.tolist())) == expected, method
    # without variants: plain pairwise distances
    plain = _bits(hashes)
    pref = plain @ (1 - plain).T + (1 - plain) @ plain.T
    ii, jj = np.nonzero(np.triu(pref <= max_distance, k=1))
    got = copy_pairs(hashes, max_distance, method="multihash")
    assert got.as_set() == set(zip(ii.tolist(), jj.tolist()))


def test_lsh_finds_exact_pairs_only_and_nearly_all_of_them():
    hashes, dih = planted(3000, 32, 31, seed=5)
    exact = copy_pairs(hashes, 31, dih, method="flat")
    approx = copy_pairs(hashes, 31, dih, method="lsh")
    want = dict(zip(zip(exact.i.tolist(), exact.j.tolist()), exact.distance.tolist()))
    got = dict(zip(zip(approx.i.tolist(), approx.j.tolist()), approx.distance.tolist()))
    assert len(want) >= 300 and set(got) <= set(want)  # never a pair beyond D
    assert all(got[p] >= want[p] for p in got)  # a table may miss the best variant, never invent one
    assert len(got) >= 0.95 * len(want)  # planned: <= 1% missed at distance D, fewer closer


def test_cross_copy_pairs_match_brute_force():
    hashes, dih = planted(600, 32, 31, seed=3)
    q, b = slice(0, 250), slice(250, 600)
    bits_q, bits_b = _bits(dih[q]), _bits(hashes[b])
    ref = np.full((250, 350), 10**6)
    for g in range(8):
        v = bits_q[:, g]
        ref = np.minimum(ref, v @ (1 - bits_b).T + (1 - v) @ bits_b.T)
    ii, jj = np.nonzero(ref <= 31)
    for method in ("flat", "multihash"):
        got = cross_copy_pairs(hashes[q], hashes[b], 31, query_dihedral=dih[q], method=method)
        assert got.as_set() == set(zip(ii.tolist(), jj.tolist()))
        assert all(ref[i, j] == d for i, j, d in zip(got.i, got.j, got.distance))


def brute_base_distances(q_rows: np.ndarray, base: np.ndarray) -> np.ndarray:
    """(M, N) min over every row of query m against every row of base n (reference)."""
    qb, bb = _bits(q_rows), _bits(base)  # (M, K, nbits), (N, KB, nbits)
    d = np.full((len(qb), len(bb)), 10**6, dtype=np.int64)
    for g in range(qb.shape[1]):
        v = qb[:, g]
        for r in range(bb.shape[1]):
            w = bb[:, r]
            d = np.minimum(d, v @ (1 - w).T + (1 - v) @ w.T)
    return d


def test_cross_copy_pairs_switch_to_lsh_above_exact_max(monkeypatch):
    """``--against`` between large stores: ``method="auto"`` goes to LSH above EXACT_MAX base hashes
    (as copy_pairs does); its pairs are the brute-force ones less a few misses, never one beyond D."""
    from pixdex.dedup import hamming

    _, dih = planted(1400, 32, 31, seed=4)
    q_rows, base = dih[:600].copy(), np.ascontiguousarray(dih[600:, 0])
    rng = np.random.default_rng(2)
    for k in range(0, 600, 3):  # a row of query k within 0..33 bits of base k's hash
        bits = np.unpackbits(base[k])
        bits[rng.choice(256, int(rng.integers(0, 34)), replace=False)] ^= 1
        q_rows[k, int(rng.integers(0, 8))] = np.packbits(bits)
    ref = brute_base_distances(q_rows, base[:, None])
    ii, jj = np.nonzero(ref <= 31)
    expected = {(int(i), int(j)): int(ref[i, j]) for i, j in zip(ii, jj)}
    assert len(expected) >= 150
    exact = cross_copy_pairs(q_rows[:, 0], base, 31, query_dihedral=q_rows, method="auto")
    assert dict(zip(zip(exact.i.tolist(), exact.j.tolist()), exact.distance.tolist())) == expected
    picked = []
    real = hamming.lsh_range_pairs

    def spy(*args, **kwargs):
        picked.append("lsh")
        return real(*args, **kwargs)

    monkeypatch.setattr(hamming, "lsh_range_pairs", spy)
    monkeypatch.setattr(hamming, "EXACT_MAX", len(base) - 1)
    approx = cross_copy_pairs(q_rows[:, 0], base, 31, query_dihedral=q_rows, method="auto")
    assert picked == ["lsh"]
    got = dict(zip(zip(approx.i.tolist(), approx.j.tolist()), approx.distance.tolist()))
    assert set(got) <= set(expected) and len(got) >= 0.95 * len(expected)
    assert all(got[p] >= expected[p] for p in got)


@pytest.mark.parametrize("kept", ["mirror", "flip_vertical"])
def test_crop_of_the_original_joins_the_kept_mirrored_copy(kept):
    """When a mirrored copy is the kept item (``--keep largest`` keeps a q95 mirror of a JPEG
    original), crops of the original must be linked to it directly (star rule): copy_within's
    two-hop links meet the mirror's windows with the crop's mirror row."""
    from pixdex.dedup import find
    from pixdex.dedup.groups import group_pairs

    orig = synthetic_photo(5, size=(320, 240))
    names = [kept, "crop_corner_05", "crop_center_10", "crop_corner_10"]
    images = [orig] + [make_copy(orig, t) for t in names]
    hashed = [perceptual.copy_hash_array(im) for im in images]
    rows = np.stack([h.rows for h in hashed])
    # reference: crop vs kept copy, every stored row of one against every dihedral row of the other
    ref = brute_base_distances(rows, rows[:, : len(perceptual.DIHEDRAL)])
    ref = np.minimum(ref, ref.T)
    assert all(ref[1, c] <= D for c in (2, 3, 4))
    searched = copy_pairs(rows[:, 0], D, rows).as_set()  # the search alone misses some of them
    assert {(0, c) for c in (1, 2, 3, 4)} <= searched and not {(1, c) for c in (2, 3, 4)} <= searched
    n = len(images)
    pixels = np.array([im.width * im.height for im in images], np.int64)
    items = find.ItemSet(
        np.arange(n, dtype=np.int64), np.array([None] * n, dtype=object), np.arange(n), rows,
        np.zeros(0, np.int64), np.zeros((0, 0), np.float32), pixels, np.array([h.quality for h in hashed]),
    )  # fmt: skip
    pairs = find.copy_within(items, D)
    got = {(int(i), int(j)): s for i, j, s in zip(pairs.i, pairs.j, pairs.score)}
    assert all(got[(1, c)] == ref[1, c] for c in (2, 3, 4))
    rank = np.array([1, 0, 2, 3, 4])  # the mirrored copy is kept
    (group,) = group_pairs([("copy", pairs)], rank)
    assert group.keep == 1 and sorted(m.index for m in group.members) == [0, 1, 2, 3, 4]


def test_two_hop_needs_a_smaller_crop():
    """A window of y matching x is a crop link only when x has fewer pixels than y: two unrelated
    images of the same size whose window matched by chance do not pull in each other's copies."""
    from pixdex.dedup import find

    rng = np.random.default_rng(3)
    rows = rng.integers(0, 256, (3, perceptual.COPY_ROWS, 32), dtype=np.uint8)
    rows[1, perceptual.FIRST_WINDOW + 4] = rows[0, 0]  # a window of 1 is item 0
    rows[2, 4] = rows[1, 0]  # item 2 is 1 mirrored ...
    rows[2, 0] = rows[1, 4]
    rows[2, perceptual.FIRST_WINDOW + 4] = rows[0, 4]  # ... and its (centre) window is 0 mirrored
    i, j = np.array([0, 1]), np.array([1, 2])
    x, z, d = find.two_hop_links(rows, i, j, D)
    assert (x.tolist(), z.tolist(), d.tolist()) == ([0], [2], [0])
    same = np.array([100, 100, 100])
    assert find.two_hop_links(rows, i, j, D, pixels=same)[0].size == 0
    assert find.two_hop_links(rows, i, j, D, pixels=np.array([80, 100, 100]))[0].tolist() == [0]


# ---------------------------------------------------------------------- transforms


def test_transforms_are_deterministic_rgb_and_crops_remove_the_stated_area():
    im = synthetic_photo(1, size=(200, 150))
    for name, t in TRANSFORMS.items():
        a, b = t(im), t(im)
        assert a.mode == "RGB" and a.tobytes() == b.tobytes(), name
        if name.startswith("crop_"):
            removed = int(name.rsplit("_", 1)[1]) / 100
            assert math.isclose(a.size[0] * a.size[1] / (200 * 150), 1 - removed, abs_tol=0.02), name
    assert set(GOAL_KINDS) <= {t.kind for t in TRANSFORMS.values()}


# ---------------------------------------------------------------------- quality on real photos


@pytest.fixture(scope="module")
def shared_hashes():
    """The stored hashes (dihedral + crop windows) of photos/ and exif/ as the indexer computes them,
    and of goal-class copies."""
    photos = sorted((SHARED_DATA / "photos").iterdir())
    exif = sorted((SHARED_DATA / "exif").iterdir())
    originals, scenes = [], []
    for p in photos + exif:
        originals.append(decode(read_file(str(p)), DRAFT)[0])
        scenes.append(p.name)
    dih = [perceptual.copy_hash_array(im).rows for im in originals]
    copies = {}  # kind -> list of (source index, dihedral)
    for k, p in enumerate(photos):
        full = decode(read_file(str(p)), None)[0]
        for kind in GOAL_KINDS:
            for name in names_of_kind(kind):
                c = make_copy(full, name, lambda b: decode(b, DRAFT)[0])
                copies.setdefault(kind, []).append((k, perceptual.copy_hash_array(c).rows))
    return np.stack(dih), scenes, copies


def _class_scores(shared_hashes, kind):
    dih, scenes, copies = shared_hashes
    src = [k for k, _ in copies[kind]]
    allh = np.concatenate([dih, np.stack([h for _, h in copies[kind]])])
    scene = scenes + [scenes[k] for k in src]
    d = brute_distances(allh)
    n0 = len(dih)
    recall = np.mean([d[k, n0 + c] <= D for c, k in enumerate(src)])
    found = [(i, j) for i in range(n0, len(allh)) for j in range(len(allh)) if j != i and d[i, j] <= D]
    precision = np.mean([scene[i] == scene[j] for i, j in found]) if found else 1.0
    return precision, recall


@needs_data
@pytest.mark.parametrize("kind", GOAL_KINDS)
def test_goal_classes_precision_and_recall_on_shared_photos(shared_hashes, kind):
    precision, recall = _class_scores(shared_hashes, kind)
    assert precision >= 0.95 and recall >= 0.90, (kind, precision, recall)


@needs_data
def test_no_pair_between_distinct_shared_photos(shared_hashes):
    dih, scenes, _ = shared_hashes
    d = brute_distances(dih)
    close = [
        (scenes[i], scenes[j], int(d[i, j]))
        for i in range(len(d))
        for j in range(i + 1, len(d))
        if d[i, j] <= D
    ]
    assert close == []
    assert len(copy_pairs(dih[:, 0], D, dih)) == 0


def _crop(im: Image.Image, window) -> Image.Image:
    f, ax, ay = window
    w, h = im.size
    kw, kh = round(w * f), round(h * f)
    x0, y0 = round((w - kw) * ax), round((h - kh) * ay)
    return im.crop((x0, y0, x0 + kw, y0 + kh))


def test_window_hashes_are_the_pdq_hashes_of_the_crops():
    """Row FIRST_WINDOW + w of the stored layout is (close to) PDQ of the image cropped to window w,
    and the whole-image window is PDQ itself: what lets a crop's hash meet its original's window."""
    assert perceptual.COPY_ROWS == perceptual.FIRST_WINDOW + len(perceptual.WINDOWS)
    for seed in range(3):
        im = synthetic_photo(seed, size=(300, 240))
        stored = perceptual.copy_hash_array(im).rows
        assert (stored[: perceptual.FIRST_WINDOW] == perceptual.dihedral_array(im)).all()
        whole = np.packbits(perceptual.window_bits(im, ((1.0, 0.0, 0.0),)), axis=1)[0]
        assert perceptual.hamming(whole.tobytes(), stored[0].tobytes()) <= D // 2
        for w, window in enumerate(perceptual.WINDOWS):
            crop_hash = perceptual.hash_image(_crop(im, window))
            row = stored[perceptual.FIRST_WINDOW + w].tobytes()
            assert perceptual.hamming(row, crop_hash) <= D, (seed, window)  # the crop is found


def test_bytes_roundtrip_through_to_array():
    ims = [synthetic_photo(s) for s in range(3)]
    hs = [perceptual.hash_image(im) for im in ims]
    arr = perceptual.to_array(hs)
    assert arr.shape == (3, perceptual.NBYTES[ALG]) and [r.tobytes() for r in arr] == hs
    assert perceptual.to_array([perceptual.dihedral_hashes(im) for im in ims]).shape == (3, 8, arr.shape[1])


# ---------------------------------------------------------------------- PDQ quality gate


def reference_quality(img: Image.Image) -> int:
    """PDQ's quality from its definition (ThreatExchange's ``computePDQImageDomainQualityMetric``) on
    the 64 x 64 luma grid the hash is computed on: the sum of truncated |differences| of neighbours
    (in percent of 255) over 90, at most 100."""
    a = np.asarray(perceptual._grid(img.convert("RGB"), 64, "RGB", 2.0), dtype=np.float32)
    luma = 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]
    diff = lambda x: np.abs(np.trunc(x * 100 / 255)).sum()  # noqa: E731
    return min(int((diff(luma[1:] - luma[:-1]) + diff(luma[:, 1:] - luma[:, :-1])) // 90), 100)


@pytest.fixture(scope="module")
def demo_images(tmp_path_factory):
    """demo-data images (synthetic shapes on flat backgrounds, every one a different scene), decoded
    as the indexer decodes them for the hashes."""
    import json

    from pixdex.training.demo_data import generate

    gen = tmp_path_factory.mktemp("demo")
    generate(gen, n=120, seed=7)
    meta = json.loads((gen / "objects.json").read_text())["images"]
    images = [decode(read_file(str(gen / r["image"])), DRAFT)[0] for r in meta]
    return images, [json.dumps(r["objects"], sort_keys=True) for r in meta]


def test_quality_is_pdqs_quality_metric(demo_images):
    images, _ = demo_images
    for im in images[:40] + [synthetic_photo(s) for s in range(3)]:
        assert perceptual.copy_hash_array(im).quality == reference_quality(im)


def test_different_flat_images_close_in_pdq_are_not_linked(demo_images):
    """Different near-flat images can be within D in PDQ (the search links them when every item is
    trusted); their quality is under MIN_QUALITY, and the copy tier (within and cross) links none."""
    from pixdex.dedup import find

    images, scenes = demo_images
    hashed = [perceptual.copy_hash_array(im) for im in images]
    rows = np.stack([h.rows for h in hashed])
    quality = np.array([h.quality for h in hashed])
    n = len(images)

    def items(pos, q):
        return find.ItemSet(
            np.arange(n, dtype=np.int64), np.array([None] * n, dtype=object), pos, rows[pos],
            np.zeros(0, np.int64), np.zeros((0, 0), np.float32), copy_quality=q,
        )  # fmt: skip

    every = np.arange(n)
    ungated = find.copy_within(items(every, np.full(n, 100)), D)
    false = [(i, j) for i, j in zip(ungated.i.tolist(), ungated.j.tolist()) if scenes[i] != scenes[j]]
    assert len(false) >= 3  # the failure the gate is for does occur on these images
    assert all(min(quality[i], quality[j]) < perceptual.MIN_QUALITY for i, j in false)
    got = find.copy_within(items(every, quality), D)
    assert not [(i, j) for i, j in zip(got.i.tolist(), got.j.tolist()) if scenes[i] != scenes[j]]
    half = n // 2
    a, b = items(every[:half], quality[:half]), items(every[half:], quality[half:])
    cross = find.copy_cross(a, b, D)
    assert not [(i, j) for i, j in zip(cross.i.tolist(), cross.j.tolist()) if scenes[i] != scenes[j]]
    with pytest.raises(ValueError, match="quality"):
        find.copy_within(items(every, None), D)


@needs_data
def test_real_photo_is_trusted_and_its_copies_still_link():
    from pixdex.dedup import find

    path = SHARED_DATA / "neardup" / "bridge" / "aaa-orig.jpg"
    orig = decode(read_file(str(path)), DRAFT)[0]
    full = decode(read_file(str(path)), None)[0]
    images = [orig] + [make_copy(full, t, lambda b: decode(b, DRAFT)[0]) for t in ("mirror", "jpeg_q30")]
    hashed = [perceptual.copy_hash_array(im) for im in images]
    assert all(h.quality >= perceptual.MIN_QUALITY for h in hashed)
    assert hashed[0].quality == reference_quality(orig)
    n = len(images)
    items = find.ItemSet(
        np.arange(n, dtype=np.int64), np.array([None] * n, dtype=object), np.arange(n),
        np.stack([h.rows for h in hashed]), np.zeros(0, np.int64), np.zeros((0, 0), np.float32),
        copy_quality=np.array([h.quality for h in hashed]),
    )  # fmt: skip
    got = find.copy_within(items, D)
    assert {(0, 1), (0, 2)} <= set(zip(got.i.tolist(), got.j.tolist()))

"""Semantic pairs against brute-force numpy all-pairs (an independent reference), both ways forced."""

from __future__ import annotations

import numpy as np
import pytest

from pixdex.dedup import semantic
from pixdex.dedup.pairs import Pairs
from pixdex.errors import PixdexError

T = 0.9
TOL = 1e-5  # float32 products in another order may differ in the last bits


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _planted(n: int, d: int, seed: int) -> np.ndarray:
    """Vectors around 40 centres, 3% with a noisy copy (cosine ~0.86-0.99) and a few bursts."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((40, d)))
    x = _unit(centres[rng.integers(0, 40, n)] + 0.9 * _unit(rng.standard_normal((n, d))))
    src = rng.choice(n, size=n * 3 // 100, replace=False)
    dst = rng.choice(np.setdiff1d(np.arange(n), src), size=src.size, replace=False)
    eps = rng.uniform(0.14, 0.6, src.size)[:, None]
    x[dst] = _unit(x[src] + eps * _unit(rng.standard_normal((src.size, d))))
    for s in rng.choice(n, size=n // 300, replace=False):  # bursts of 4 around one shot
        rows = rng.choice(n, size=3, replace=False)
        x[rows] = _unit(x[s] + 0.3 * _unit(rng.standard_normal((3, d))))
    return x


def _reference_self(x: np.ndarray, t: float) -> dict[tuple[int, int], float]:
    s = x.astype(np.float64) @ x.astype(np.float64).T
    i, j = np.nonzero(np.triu(s >= t, k=1))
    return {(int(a), int(b)): float(s[a, b]) for a, b in zip(i, j)}


def _reference_cross(q: np.ndarray, b: np.ndarray, t: float) -> dict[tuple[int, int], float]:
    s = q.astype(np.float64) @ b.astype(np.float64).T
    i, j = np.nonzero(s >= t)
    return {(int(a), int(c)): float(s[a, c]) for a, c in zip(i, j)}


def _as_dict(p: Pairs) -> dict[tuple[int, int], float]:
    return {(int(a), int(b)): float(s) for a, b, s in zip(p.i, p.j, p.score)}


def _check_against(p: Pairs, ref: dict, min_recall: float, t: float = T) -> None:
    got = _as_dict(p)
    borderline = {k for k, v in ref.items() if abs(v - t) < TOL}
    # every reported pair is a true pair (or within float error of the threshold) with the true score
    for k, v in got.items():
        assert v >= t
        assert k in ref or k in borderline or abs(v - t) < TOL, k
        if k in ref:
            assert abs(ref[k] - v) < TOL
    missed = set(ref) - set(got) - borderline
    assert 1 - len(missed) / max(1, len(ref)) >= min_recall, (len(missed), len(ref))


def _check_shape(p: Pairs, same: bool) -> None:
    assert p.i.dtype == np.int64 and p.j.dtype == np.int64 and p.score.dtype == np.float32
    key = p.i * 10**7 + p.j
    assert np.all(np.diff(key) > 0)  # sorted by (i, j), each pair once
    if same:
        assert np.all(p.i < p.j)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return _planted(3000, 64, seed=0)


@pytest.fixture(scope="module")
def reference(data) -> dict:
    ref = _reference_self(data, T)
    assert len(ref) > 100  # the planted pairs are there
    return ref


def test_exact_matches_brute_force(data, reference, monkeypatch):
    monkeypatch.setattr(semantic, "BLOCK", 512)  # several blocks, diagonal and off-diagonal
    p = semantic.similar_pairs(data, T, exact=True)
    _check_shape(p, same=True)
    _check_against(p, reference, min_recall=1.0)


def test_clustered_recall_against_brute_force(data, reference, monkeypatch):
    monkeypatch.setattr(semantic, "BLOCK", 64)  # lists larger than a block: blocked home x home too
    p = semantic.similar_pairs(data, T, exact=False)
    _check_shape(p, same=True)
    _check_against(p, reference, min_recall=0.99)


def test_lower_threshold_many_pairs(data):
    x = data[:1500]
    ref = _reference_self(x, 0.6)
    p = semantic.similar_pairs(x, 0.6, exact=False)
    _check_shape(p, same=True)
    _check_against(p, ref, min_recall=0.97, t=0.6)


def test_deterministic_and_progress(data):
    x = data[:1500]
    seen: list[tuple[int, int]] = []
    p1 = semantic.similar_pairs(x, T, exact=False, progress=lambda d, t: seen.append((d, t)))
    p2 = semantic.similar_pairs(x, T, exact=False)
    assert len(p1) > 20
    for a, b in ((p1.i, p2.i), (p1.j, p2.j), (p1.score, p2.score)):
        assert np.array_equal(a, b)
    assert seen and seen[-1][0] == seen[-1][1]
    assert all(b[0] >= a[0] for a, b in zip(seen, seen[1:]))


def test_auto_picks_exact_for_small_inputs(data, reference, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("clustered way used for a small input")

    monkeypatch.setattr(semantic, "_clustered_candidates", boom)
    _check_against(semantic.similar_pairs(data[:500], T), _reference_self(data[:500], T), 1.0)


@pytest.mark.parametrize("exact", [True, False])
def test_cross_pairs_against_brute_force(data, exact):
    q = _planted(800, 64, seed=1)
    q[:50] = _unit(data[:50] + 0.2 * _unit(np.random.default_rng(2).standard_normal((50, 64))))
    ref = _reference_cross(q, data, T)
    assert len(ref) >= 50
    p = semantic.cross_pairs(q, data, T, exact=exact)
    _check_shape(p, same=False)
    _check_against(p, ref, min_recall=1.0 if exact else 0.99)


def test_one_query_against_a_set(data):
    p = semantic.cross_pairs(data[7:8], data, 0.999)
    assert 7 in p.j.tolist() and np.all(p.i == 0)


def test_empty_and_tiny():
    x = _unit(np.random.default_rng(0).standard_normal((1, 8)))
    assert len(semantic.similar_pairs(x, 0.5)) == 0
    assert len(semantic.cross_pairs(np.zeros((0, 8), np.float32), x, 0.5)) == 0


@pytest.mark.parametrize(
    "args",
    [
        (np.ones(8, np.float32), 0.9),  # 1-D
        (np.ones((4, 8), np.float32), 0.9),  # not normalised
        (np.full((4, 8), np.nan, np.float32), 0.9),
        (np.eye(4, dtype=np.float32), 1.5),  # threshold out of range
        (np.eye(4, dtype=np.int64), 0.9),
    ],
)
def test_bad_input_is_a_pixdex_error(args):
    with pytest.raises(PixdexError):
        semantic.similar_pairs(*args)


def test_cross_dimension_mismatch():
    with pytest.raises(PixdexError):
        semantic.cross_pairs(np.eye(3, dtype=np.float32), np.eye(4, dtype=np.float32), 0.9)


@pytest.mark.parametrize("exact", [True, False])
def test_cross_pairs_with_one_threshold_per_query_equals_brute_force(exact):
    """Each query at its own bound (dataset dedup's swap search) against float64 brute force; a bound
    over 1 asks for nothing; the same bound for every query gives what one number gives."""
    q = _planted(3000, 48, seed=21)
    b = _planted(2500, 48, seed=22)
    b[:300] = _unit(q[:300] + 0.2 * _unit(np.random.default_rng(5).standard_normal((300, 48))))
    bounds = np.random.default_rng(6).uniform(0.8, 0.98, len(q)).astype(np.float32)
    bounds[::7] = 1.5
    s = q.astype(np.float64) @ b.astype(np.float64).T
    ri, rj = np.nonzero(s >= bounds[:, None] + TOL)  # clear of the bound: must be found
    must = set(zip(ri.tolist(), rj.tolist()))
    ai, aj = np.nonzero(s >= bounds[:, None] - TOL)  # may be found (float32 rounding at the bound)
    may = set(zip(ai.tolist(), aj.tolist()))
    assert len(must) > 200
    got = semantic.cross_pairs(q, b, bounds, exact=exact)
    found = set(zip(got.i.tolist(), got.j.tolist()))
    assert found <= may
    assert np.all(got.score >= bounds[got.i])
    recall = len(found & must) / len(must)
    assert recall == 1.0 if exact else recall >= 0.99
    one = semantic.cross_pairs(q, b, 0.9, exact=exact)
    same = semantic.cross_pairs(q, b, np.full(len(q), 0.9, np.float32), exact=exact)
    assert np.array_equal(one.i, same.i) and np.array_equal(one.j, same.j)


def test_per_query_thresholds_are_checked():
    q = _planted(10, 16, seed=1)
    with pytest.raises(PixdexError, match="thresholds for"):
        semantic.cross_pairs(q, q, np.full(9, 0.5))
    with pytest.raises(PixdexError, match="finite"):
        semantic.cross_pairs(q, q, np.full(10, np.nan))

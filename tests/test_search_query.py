"""Query parsing and combination (weighted sum of normalised embeddings, renormalised)."""

import numpy as np
import pytest

from pixdex.errors import PixdexError
from pixdex.search.filters import make_filters, normalize_glob, parse_date
from pixdex.search.query import QueryPart, build_parts, combine, encode_parts, parse_weighted


@pytest.mark.parametrize(
    "spec,want",
    [
        ("2:sunset", (2.0, "sunset")),
        ("0.5: red car", (0.5, "red car")),
        ("-1.5:fog", (-1.5, "fog")),
        ("sunset", (1.0, "sunset")),
        ("a dog: on a beach", (1.0, "a dog: on a beach")),
        ("1:10:30 meeting", (1.0, "10:30 meeting")),
        ("/photos/x:y.jpg", (1.0, "/photos/x:y.jpg")),
        ("3:", (1.0, "3:")),
    ],
)
def test_parse_weighted(spec, want):
    assert parse_weighted(spec) == want


def test_build_parts_kinds_weights_and_errors():
    parts = build_parts("dog", texts=["2:beach"], images=["0.5:/a.jpg"], like=[7], minus=["3:people", "rain"])
    assert parts == [
        QueryPart("text", "dog", 1.0),
        QueryPart("text", "beach", 2.0),
        QueryPart("image", "/a.jpg", 0.5),
        QueryPart("like", 7, 1.0),
        QueryPart("text", "people", -3.0),
        QueryPart("text", "rain", -1.0),
    ]
    for kwargs in ({}, {"query": "  "}, {"minus": ["rain"]}, {"texts": ["0:dog"]}):
        with pytest.raises(PixdexError):
            build_parts(**kwargs)


def test_combine_is_renormalised_weighted_sum_of_unit_vectors():
    rng = np.random.default_rng(0)
    a, b, c = (rng.normal(size=16).astype(np.float32) * s for s in (1.0, 5.0, 0.1))
    got = combine([2.0, -1.0, 0.5], np.stack([a, b, c]))
    ref = 2 * a / np.linalg.norm(a) - b / np.linalg.norm(b) + 0.5 * c / np.linalg.norm(c)
    np.testing.assert_allclose(got, ref / np.linalg.norm(ref), atol=1e-6)
    assert got.dtype == np.float32
    # a single part is just its own direction, whatever its weight or norm
    np.testing.assert_allclose(combine([3.0], b[None]), b / np.linalg.norm(b), atol=1e-6)
    with pytest.raises(PixdexError, match="cancel"):
        combine([1.0, -1.0], np.stack([a, 2 * a]))


def test_encode_parts_batches_each_kind_once_and_keeps_order():
    calls = []
    table = {"dog": [1, 0, 0], "beach": [0, 1, 0], "/x.jpg": [0, 0, 1], 5: [1, 1, 0]}

    def fn(kind):
        def f(values):
            calls.append((kind, list(values)))
            return np.array([table[v] for v in values], np.float32)

        return f

    parts = build_parts("dog", texts=["beach"], images=["/x.jpg"], like=[5], minus=["2:beach"])
    q = encode_parts(parts, fn("text"), fn("image"), fn("like"))
    assert calls == [("text", ["dog", "beach", "beach"]), ("image", ["/x.jpg"]), ("like", [5])]
    ref = (
        np.array([1, 0, 0])
        + np.array([0, 1, 0])
        + np.array([0, 0, 1])
        + np.array([1, 1, 0]) / np.sqrt(2)
        - 2 * np.array([0, 1, 0])
    )
    np.testing.assert_allclose(q, ref / np.linalg.norm(ref), atol=1e-6)
    calls.clear()
    encode_parts(build_parts("dog"), fn("text"), fn("image"), fn("like"))
    assert calls == [("text", ["dog"])]  # no image encoder touched for a text query


def test_filters_parse_and_match():
    f = make_filters(path_glob="Beach/*.JPG", after="2023-05", before="2024")
    assert f.path_ok("/home/me/photos/beach/IMG_1.jpg")
    assert not f.path_ok("/home/me/photos/mountain/IMG_1.jpg")
    assert f.date_ok(parse_date("2023-05-01", "x")) and f.date_ok(parse_date("2023-12-31T23:59:59", "x"))
    assert not f.date_ok(parse_date("2024-01-01", "x")) and not f.date_ok(parse_date("2023-04-30", "x"))
    assert not f.date_ok(None)
    assert make_filters().restricts_rows is False
    assert normalize_glob("*.png") == "*.png" and normalize_glob("IMG_*") == "*/img_*"
    for bad in (
        {"after": "yesterday"},
        {"after": "2024-01-01", "before": "2023-01-01"},
        {"before": "2023-13-01"},
        {"path_glob": "  "},
    ):
        with pytest.raises(PixdexError):
            make_filters(**bad)

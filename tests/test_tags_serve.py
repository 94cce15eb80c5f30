"""Tags in `pixdex serve`: /api/tags, ?tag= on /api/search (with and without a query), tags in every
result, and the gallery's tag list that filters the grid (headless Chromium, the conftest `browser`)."""

from __future__ import annotations

import http.client
import json
import sqlite3

import pytest

pytest.importorskip("faiss")

from pixdex.storage.contract import DB_FILE  # noqa: E402

# tags written as `pixdex tag` writes them: red images (index % 3 == 0) "warm", green ones "leafy";
# every fourth image also "Bright Scene" (a label with a space and capitals)
COLOUR_TAG = {0: "warm", 1: "leafy"}


def _tag_rows(names, status):
    rows = []
    for i, st in enumerate(status):
        if st != "ok":
            continue
        if i % 3 in COLOUR_TAG:
            rows.append((i + 1, COLOUR_TAG[i % 3], round(0.5 + i / 100, 4), "test"))
        if i % 4 == 0:
            rows.append((i + 1, "Bright Scene", 0.3, "test"))
    return rows


@pytest.fixture(scope="module")
def tagged(gallery):
    srv, store, names, status = gallery
    rows = _tag_rows(names, status)
    con = sqlite3.connect(store / DB_FILE)
    con.executemany("INSERT INTO tags (image_id, label, prob, label_set) VALUES (?, ?, ?, ?)", rows)
    con.commit()
    con.close()
    return srv, rows


def get(srv, path):
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_api_tags_and_tag_filter(tagged):
    srv, rows = tagged
    s, body = get(srv, "/api/tags")
    want = {}
    for _, label, _, _ in rows:
        want[label] = want.get(label, 0) + 1
    assert s == 200 and {t["label"]: t["count"] for t in body["tags"]} == want
    assert [t["count"] for t in body["tags"]] == sorted(want.values(), reverse=True)

    warm = {i: p for i, label, p, _ in rows if label == "warm"}
    s, body = get(srv, "/api/search?tag=warm&k=100")  # no query: by probability
    assert s == 200 and [r["id"] for r in body["results"]] == sorted(warm, key=lambda i: -warm[i])
    assert all({"label": "warm", "prob": warm[r["id"]]} in r["tags"] for r in body["results"])
    s, body = get(srv, "/api/search?q=blue&tag=bright%20scene&k=100")  # with a query, case-insensitive
    bright = {i for i, label, _, _ in rows if label == "Bright Scene"}
    assert s == 200 and {r["id"] for r in body["results"]} == bright
    assert [r["score"] for r in body["results"]] == sorted(
        (r["score"] for r in body["results"]), reverse=True
    )
    s, body = get(srv, "/api/search?tag=warm&tag=Bright%20Scene&k=100")  # both tags
    assert {r["id"] for r in body["results"]} == set(warm) & bright
    s, body = get(srv, "/api/search?q=red&k=3")  # every result carries its tags
    assert all(isinstance(r["tags"], list) for r in body["results"])
    assert get(srv, "/api/search?k=3")[0] == 400


def test_gallery_tag_list_filters(tagged, browser):
    srv, rows = tagged
    pg = browser.new_page()
    pg.set_default_timeout(15_000)
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    try:
        pg.goto(f"http://127.0.0.1:{srv.server_address[1]}/")
        pg.wait_for_selector("#tags:not([hidden]) button")
        labels = pg.eval_on_selector_all("#tags button", "bs => bs.map(b => b.dataset.tag)")
        assert set(labels) == {"warm", "leafy", "Bright Scene"}
        pg.click("#tags button[data-tag='leafy']")
        pg.wait_for_function("() => location.hash.includes('tag=leafy')")
        pg.wait_for_selector("#grid .card")
        pg.wait_for_function("() => document.querySelector('#status').textContent.includes('leafy')")
        ids = {int(x) for x in pg.eval_on_selector_all("#grid .card", "cs => cs.map(c => c.dataset.id)")}
        assert ids == {i for i, label, _, _ in rows if label == "leafy"}
        assert pg.get_attribute("#tags button[data-tag='leafy']", "aria-pressed") == "true"
        # a text query keeps the tag; clicking the tag again drops the filter
        pg.fill("#q", "red")
        pg.press("#q", "Enter")
        pg.wait_for_function("() => location.hash.includes('q=red') && location.hash.includes('tag=leafy')")
        pg.click("#tags button[data-tag='leafy']")
        pg.wait_for_function("() => !location.hash.includes('tag=')")
        pg.wait_for_function("() => document.querySelectorAll('#grid .card').length === 23")
        assert not errors
    finally:
        pg.close()

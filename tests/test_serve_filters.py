"""`pixdex serve`: the search routes honour every filter of `pixdex search` and agree with it on the same
store; bad filter values are one-line JSON 400s; image search by upload (decoded in memory, never
stored); the favicon.

The library (conftest.build_dated_library) is indexed with the tiny random-init model, so text and image
queries run the real text tower and image encoder; expected sets come from how the library was made.
"""

import http.client
import io
import json
import os
from datetime import datetime
from fnmatch import fnmatchcase
from urllib.parse import urlencode

import pytest

pytest.importorskip("faiss")
pytest.importorskip("torch")

from pixdex.search.cli_search import run_search

N = 12


def call(srv, path, body=None, headers=None, method=None):
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(
            method or ("POST" if body is not None else "GET"), path, body=body, headers=headers or {}
        )
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def api(srv, route, **params):
    return call(srv, route + "?" + urlencode(params, doseq=True))


# (API parameters, the same filters as run_search keyword arguments, the path glob as fnmatch sees it)
CASES = [
    ({}, {}, None),
    ({"after": "2021", "before": "2023"}, {"after": "2021", "before": "2023"}, None),
    ({"after": "2020-03-15T10:30"}, {"after": "2020-03-15T10:30"}, None),
    ({"path": "*.png"}, {"path_glob": "*.png"}, "*.png"),
    ({"path": "camera/*", "before": "2022"}, {"path_glob": "camera/*", "before": "2022"}, "*/camera/*"),
    ({"min_score": "0.5"}, {"min_score": 0.5}, None),
    (
        {"path": "screenshot_*", "after": "2020", "min_score": "-1"},
        {"path_glob": "screenshot_*", "after": "2020", "min_score": -1.0},
        "*/screenshot_*",
    ),
]


def _in_range(d, after, before):
    lo = datetime.fromisoformat(after if len(after) > 4 else after + "-01-01") if after else None
    hi = datetime.fromisoformat(before if len(before) > 4 else before + "-01-01") if before else None
    return (lo is None or d >= lo) and (hi is None or d < hi)


@pytest.mark.parametrize("params,kwargs,glob", CASES)
def test_api_filters_equal_the_cli_on_the_same_store(dated_server, params, kwargs, glob):
    srv, store, truth = dated_server
    for route, query, cli in (
        ("/api/search", {"q": "a photo of a cat"}, {"query": "a photo of a cat"}),
        ("/api/similar/3", {}, {"like": [3]}),
    ):
        s, _, body = api(srv, route, k=N, **query, **params)
        assert s == 200, body
        got = json.loads(body)["results"]
        want = run_search(store, k=N + 1 if "like" in cli else N, **cli, **kwargs)
        if "like" in cli:
            want = [h for h in want if h["id"] != 3]  # "more like this" leaves the image itself out
        assert [(h["id"], h["score"]) for h in got] == [(h["id"], h["score"]) for h in want]
        assert [(g["date"], g["date_source"]) for g in got] == [(w["date"], w["date_source"]) for w in want]
        if "min_score" not in params and "like" not in cli:  # the filtered set, from the library's making
            ok = {
                p
                for p, (d, _) in truth.items()
                if _in_range(d, params.get("after"), params.get("before"))
                and (glob is None or fnmatchcase(p.lower(), glob))
            }
            assert {h["path"] for h in got} == ok


def test_min_score_cuts_the_ranked_list(dated_server):
    srv, store, _ = dated_server
    full = json.loads(api(srv, "/api/search", q="a photo", k=N)[2])["results"]
    cut = (full[3]["score"] + full[4]["score"]) / 2
    got = json.loads(api(srv, "/api/search", q="a photo", k=N, min_score=repr(cut))[2])["results"]
    assert [h["id"] for h in got] == [h["id"] for h in full[:4]]


@pytest.mark.parametrize(
    "params,word",
    [
        ({"q": "x", "after": "yesterday"}, "after: not a date"),
        ({"q": "x", "before": "2023-13-01"}, "before: not a date"),
        ({"q": "x", "after": "2024", "before": "2023"}, "after (2024) must be earlier than before (2023)"),
        ({"q": "x", "min_score": "high"}, "min_score must be a number"),
        ({"q": "x", "min_score": "nan"}, "min_score must be a number"),
        ({"q": "x", "path": "p" * 1001}, "path too long"),
        ({"after": "2020"}, "missing query"),
        ({"q": "x", "k": "0"}, "k must be between"),
    ],
)
def test_bad_filter_values_are_one_line_json_400(dated_server, params, word):
    srv = dated_server[0]
    s, h, body = api(srv, "/api/search", **params)
    err = json.loads(body)["error"]
    assert s == 400 and h["Content-Type"] == "application/json"
    assert word in err and "\n" not in err and "--" not in err  # named as the API spells it
    s, _, body = api(srv, "/api/similar/1", **{k: v for k, v in params.items() if k not in ("q", "k")})
    if "q" in params and "k" not in params and "tag" not in params:
        assert s == 400 and word in json.loads(body)["error"]


# ----------------------------------------------------------------------------- image upload


def _store_files(store):
    return sorted(
        (os.path.relpath(os.path.join(d, f), store), os.path.getsize(os.path.join(d, f)))
        for d, _, files in os.walk(store)
        for f in files
        if not f.startswith("pixdex.db-")  # SQLite's WAL files change size when read
    )


def test_upload_ranks_by_the_uploaded_image_and_stores_nothing(dated_server, tmp_path):
    srv, store, truth = dated_server
    target = sorted(truth)[2]
    data = open(target, "rb").read()
    before = _store_files(store)
    s, h, body = call(srv, "/api/search/image?k=5", data, {"Content-Type": "image/jpeg"})
    assert s == 200, body
    res = json.loads(body)["results"]
    assert res[0]["path"] == target and res[0]["score"] > 0.999  # its own stored vector
    by_like = run_search(store, like=[res[0]["id"]], k=5)
    assert [r["id"] for r in res] == [r["id"] for r in by_like]
    # filters apply to uploads too
    s, _, body = call(
        srv,
        "/api/search/image?k=12&path=*.png&after=2021",
        data,
        {"Content-Type": "application/octet-stream"},
    )
    got = {r["path"] for r in json.loads(body)["results"]}
    assert s == 200 and got == {p for p, (d, src) in truth.items() if p.endswith(".png") and d.year >= 2021}
    assert _store_files(store) == before  # nothing written to the store (no thumbnail, no row, no file)
    assert h["Connection"] == "close"


def test_upload_of_a_format_browsers_send_as_png(dated_server):
    from PIL import Image

    srv, store, truth = dated_server
    target = [p for p in sorted(truth) if p.endswith(".png")][0]
    buf = io.BytesIO()
    Image.open(target).save(buf, "PNG")
    s, _, body = call(srv, "/api/search/image?k=1", buf.getvalue(), {"Content-Type": "image/png"})
    assert s == 200 and json.loads(body)["results"][0]["path"] == target


@pytest.mark.parametrize(
    "body,headers,status,word",
    [
        (b"this is not an image at all", {"Content-Type": "image/jpeg"}, 400, "not an image"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 100, {"Content-Type": "image/jpeg"}, 400, "not an image"),
        (b"GIF89a", {"Content-Type": "text/plain"}, 415, "image/*"),
        (b"GIF89a", {"Content-Type": "multipart/form-data; boundary=x"}, 415, "image/*"),
        (b"", {"Content-Type": "image/png"}, 400, "empty upload"),
        (
            b"x" * 100,
            {"Content-Type": "image/png", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"},
            403,
            "other sites",
        ),
        (b"x" * 100, {"Content-Type": "image/png", "Host": "evil.example"}, 403, "own host name"),
        (b"x", {"Content-Type": "image/png"}, 400, "after: not a date"),
    ],
)
def test_bad_uploads_are_one_line_json_errors(dated_server, body, headers, status, word):
    srv = dated_server[0]
    path = "/api/search/image" + ("?after=soon" if word.startswith("after") else "")
    s, h, raw = call(srv, path, body, headers)
    err = json.loads(raw)["error"]
    assert s == status and word in err and "\n" not in err, (s, err)


def test_upload_size_limit(dated_server, monkeypatch):
    from pixdex.search import serve

    srv = dated_server[0]
    monkeypatch.setattr(serve, "MAX_UPLOAD_BYTES", 1000)
    s, _, raw = call(srv, "/api/search/image", b"\0" * 5000, {"Content-Type": "image/png"})
    assert s == 413 and "too large" in json.loads(raw)["error"]
    s, _, raw = call(srv, "/api/search", b"\0" * 10, {"Content-Type": "image/png"})
    assert s == 405  # uploads go to /api/search/image only
    s, _, raw = call(srv, "/api/search/image", None, {"Content-Type": "image/png"}, method="POST")
    assert s in (400, 411)  # no body, no length


def test_favicon(dated_server):
    from PIL import Image

    srv = dated_server[0]
    s, h, body = call(srv, "/favicon.ico")
    assert s == 200 and h["Content-Type"] == "image/x-icon"
    im = Image.open(io.BytesIO(body))
    assert im.format == "ICO" and {(16, 16), (32, 32)} <= set(im.info["sizes"])
    assert call(srv, "/favicon.ico", method="HEAD")[0] == 200


def test_the_readme_upload_example_is_accepted(dated_server):
    """The README's curl line for an image search (its header, route and parameters), sent as written."""
    import re
    import shlex
    from pathlib import Path
    from urllib.parse import urlsplit

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    line = next(x for x in readme.splitlines() if x.startswith("curl ") and "/api/search/image" in x)
    words = shlex.split(line)
    headers = dict(w.split(": ", 1) for i, w in enumerate(words) if i and words[i - 1] in ("-H", "--header"))
    url = urlsplit(next(w for w in words if w.startswith("http")))
    assert re.search(r"--data-binary @\S+", line)
    srv, _, truth = dated_server
    data = open(sorted(truth)[0], "rb").read()
    s, _, body = call(srv, f"{url.path}?{url.query}", data, headers)
    assert s == 200 and json.loads(body)["results"], body
    # without the header (curl's default form type) the answer says what to add
    s, _, body = call(
        srv, f"{url.path}?{url.query}", data, {"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert s == 415 and "Content-Type: image/jpeg" in json.loads(body)["error"]

"""`pixdex serve` JSON API on 127.0.0.1 (ephemeral port): results, files by id only, traversal, escaping."""

import http.client
import json
import os
import urllib.error
import urllib.request

import pytest

pytest.importorskip("faiss")
from PIL import Image


def get(srv, path, headers=None, method="GET"):
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def test_binds_loopback_and_serves_the_ui(gallery):
    srv = gallery[0]
    assert srv.server_address[0] == "127.0.0.1"
    status, headers, body = get(srv, "/")
    assert status == 200 and b'id="q"' in body and headers["Content-Type"].startswith("text/html")
    assert (
        headers["X-Content-Type-Options"] == "nosniff"
        and "script-src 'self'" in headers["Content-Security-Policy"]
    )
    for p in ("/static/app.js", "/static/style.css"):
        assert get(srv, p)[0] == 200


def test_search_api_ranks_by_query(gallery):
    srv, store, names, status = gallery
    s, h, body = get(srv, "/api/search?q=a+red+thing&k=5")
    assert s == 200 and h["Content-Type"] == "application/json"
    res = json.loads(body)["results"]
    assert len(res) == 5 and all("red" in r["path"] for r in res)
    assert [r["rank"] for r in res] == [1, 2, 3, 4, 5]
    assert res == sorted(res, key=lambda r: -r["score"])
    assert 4 not in [r["id"] for r in res]  # id 4 (index 3) failed to decode
    url = f"http://127.0.0.1:{srv.server_address[1]}/api/search?q=blue"
    with urllib.request.urlopen(url, timeout=10) as r:
        res = json.loads(r.read())["results"]
    assert len(res) == 20 and all("blue" in r["path"] for r in res[:8])  # 8 blue images, then the rest
    assert not any("blue" in r["path"] for r in res[8:])
    assert len(json.loads(get(srv, "/api/search?q=green&k=500")[2])["results"]) == 23  # all live images


def test_markup_file_name_is_data_not_markup(gallery):
    srv, store, names, status = gallery
    res = json.loads(get(srv, "/api/search?q=red&k=20")[2])["results"]
    odd = [r for r in res if r["id"] == 1]
    assert odd and odd[0]["path"] == str(names[0]) and "<img " in odd[0]["path"]  # the name round-trips
    raw = get(srv, "/api/search?q=red&k=20")[2]
    assert b"<" not in raw and b">" not in raw  # escaped as \u003c / \u003e: inert even if sniffed as HTML


def test_files_only_by_id(gallery):
    srv, store, names, status = gallery
    s, h, body = get(srv, "/api/image/2")
    assert s == 200 and body == names[1].read_bytes() and h["Content-Type"] == "image/jpeg"
    s, h, body = get(srv, "/api/image/1")
    assert s == 200 and body == names[0].read_bytes()
    for bad in (
        "/api/image/../../etc/passwd",
        "/api/image/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/api/image/-1",
        "/api/image/1.0",
        "/api/image/4",
        "/api/image/999",
        "/static/../../../etc/passwd",
        "/static/%2e%2e/serve.py",
        "/../pixdex.db",
        "/pixdex.db",
        "/api/image/" + str(names[1]),
        "/api/thumb/0x1",
        "/api/similar/abc",
        "//etc/passwd",
        "/api/image/2/../../../etc/passwd",
    ):
        s, h, body = get(srv, bad)
        assert s in (400, 404), bad
        assert b"root:" not in body and b"SQLite" not in body
        assert h["Content-Type"] == "application/json"


def test_thumbnails_cached_in_store_and_refreshed(gallery):
    srv, store, names, status = gallery
    s, h, body = get(srv, "/api/thumb/5")
    assert s == 200 and h["Content-Type"] == "image/jpeg"
    import io

    im = Image.open(io.BytesIO(body))
    assert im.format == "JPEG" and max(im.size) <= 320
    cached = list((store / "thumbs").rglob("5-*"))
    assert len(cached) == 1
    assert get(srv, "/api/thumb/5")[2] == body
    stamp = cached[0].read_bytes().partition(b"\n")[0]
    st = names[4].stat()
    os.utime(names[4], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same bytes, new mtime
    assert get(srv, "/api/thumb/5")[2] == body
    assert cached[0].read_bytes().partition(b"\n")[0] not in (stamp, b"")  # rebuilt for the new mtime
    assert get(srv, "/api/thumb/4")[0] == 404
    # other content: not the file that was indexed any more (410 until `pixdex index` records it)
    Image.new("RGB", (64, 64), (0, 0, 0)).save(names[4], quality=90)
    for route in ("/api/thumb/5", "/api/image/5"):
        s, h, body2 = get(srv, route)
        assert s == 410 and h["Content-Type"] == "application/json" and b"pixdex index" in body2


def test_similar_and_bad_requests(gallery):
    srv, store, names, status = gallery
    s, _, body = get(srv, "/api/similar/2?k=5")
    d = json.loads(body)
    assert s == 200 and d["source"]["id"] == 2 and 2 not in [r["id"] for r in d["results"]]
    assert all("green" in r["path"] for r in d["results"])
    assert get(srv, "/api/similar/4")[0] == 404
    assert get(srv, "/api/search?q=")[0] == 400
    assert get(srv, "/api/search?q=red&k=0")[0] == 400
    assert get(srv, "/api/search?q=red&k=ten")[0] == 400
    assert get(srv, "/api/search", method="POST")[0] == 405
    assert get(srv, "/api/search?q=red", headers={"Host": "evil.example:80"})[0] == 403
    assert get(srv, "/api/search?q=red", headers={"Host": "localhost:1234"})[0] == 200
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{srv.server_address[1]}/nope", timeout=10)
    assert e.value.code == 404


def test_media_converts_and_refuses_clearly(tmp_path):
    import io

    from pixdex.errors import PixdexError
    from pixdex.search.media import Media
    from pixdex.search.store_view import Row

    tif = tmp_path / "scan.tif"
    Image.new("RGB", (900, 500), (10, 200, 30)).save(tif)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    m = Media(tmp_path / "store")
    body, ctype = m.original(Row(1, str(tif), 900, 500, None))
    assert ctype == "image/jpeg" and Image.open(io.BytesIO(body)).size == (900, 500)
    body, _ = m.thumbnail(Row(1, str(tif), 900, 500, None))
    assert Image.open(io.BytesIO(body)).size == (320, 178)
    with pytest.raises(PixdexError, match="bad.jpg"):
        m.thumbnail(Row(2, str(bad), None, None, None))
    with pytest.raises(PixdexError, match="missing"):
        m.thumbnail(Row(3, str(tmp_path / "gone.jpg"), None, None, None))


def test_dropped_connections_print_no_traceback(gallery, capfd):
    """A browser resetting a half-sent request (closed tab) is routine: nothing on stderr, the server
    keeps answering."""
    import socket
    import struct
    import time

    srv = gallery[0]
    for _ in range(3):
        s = socket.create_connection(srv.server_address[:2], timeout=5)
        s.sendall(b"GET /api/search?q=red HTTP/1.1\r\nHost: 127.0.0.1")  # no end of headers
        time.sleep(0.05)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
        s.close()
    time.sleep(0.3)
    status, _, _ = get(srv, "/api/search?q=red&k=2")
    assert status == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Connection reset" not in err

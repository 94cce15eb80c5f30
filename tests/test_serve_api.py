"""`pixdex serve` JSON API on 127.0.0.1 (ephemeral port): results, files by id only, traversal, escaping."""

import contextlib
import http.client
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

pytest.importorskip("faiss")
from PIL import Image
from search_support import DELETED, make_store

from pixdex.search.serve import make_server, start_in_thread
from pixdex.storage.contract import STATUS_OK

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


class ColourText:
    """A stand-in text tower for HTTP tests: a colour word maps to that colour's direction."""

    dim = 3

    def encode_texts(self, texts):
        out = []
        for t in texts:
            v = np.array([1.0 if c in t else 0.0 for c in COLOURS], np.float32) + 1e-3
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


def build_gallery(root):
    """Images of three colours (vectors = their normalised colour), one deleted, odd file names."""
    photos = root / "photos"
    photos.mkdir(parents=True)
    names, vecs, status = [], [], []
    rng = np.random.default_rng(0)
    for i in range(24):
        colour = list(COLOURS)[i % 3]
        name = f"{colour}_{i:02d}.jpg"
        if i == 0:
            name = "<script>alert(1)<.script> red & 'x'.jpg"
        names.append(photos / name)
        rgb = np.array(COLOURS[colour]) + rng.integers(-20, 20, 3)
        Image.new("RGB", (200 + i, 120), tuple(int(c) for c in rgb)).save(names[-1], quality=90)
        v = np.eye(3)[i % 3] + 0.05 * rng.normal(size=3)
        vecs.append(v / np.linalg.norm(v))
        status.append(DELETED if i == 3 else STATUS_OK)
    store = make_store(
        root / "store",
        np.array(vecs, np.float32),
        [str(p) for p in names],
        status,
        sizes=[(200 + i, 120) for i in range(24)],
    )
    return store, names, status


@contextlib.contextmanager
def gallery_server(root):
    """The gallery served on 127.0.0.1 (ephemeral port) in a thread; stopped on exit."""
    store, names, status = build_gallery(root)
    srv = make_server(store, "127.0.0.1", 0)
    srv.engine._text = ColourText()
    start_in_thread(srv)
    try:
        yield srv, store, names, status
    finally:
        srv.shutdown()
        srv.server_close()
        srv.engine.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with gallery_server(tmp_path_factory.mktemp("serve")) as s:
        yield s


def get(srv, path, headers=None, method="GET"):
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def test_binds_loopback_and_serves_the_ui(server):
    srv = server[0]
    assert srv.server_address[0] == "127.0.0.1"
    status, headers, body = get(srv, "/")
    assert status == 200 and b'id="q"' in body and headers["Content-Type"].startswith("text/html")
    assert (
        headers["X-Content-Type-Options"] == "nosniff"
        and "script-src 'self'" in headers["Content-Security-Policy"]
    )
    for p in ("/static/app.js", "/static/style.css"):
        assert get(srv, p)[0] == 200


def test_search_api_ranks_by_query(server):
    srv, store, names, status = server
    s, h, body = get(srv, "/api/search?q=a+red+thing&k=5")
    assert s == 200 and h["Content-Type"] == "application/json"
    res = json.loads(body)["results"]
    assert len(res) == 5 and all("red" in r["path"] for r in res)
    assert [r["rank"] for r in res] == [1, 2, 3, 4, 5]
    assert res == sorted(res, key=lambda r: -r["score"])
    assert 4 not in [r["id"] for r in res]  # id 4 (index 3) is deleted
    url = f"http://127.0.0.1:{srv.server_address[1]}/api/search?q=blue"
    with urllib.request.urlopen(url, timeout=10) as r:
        res = json.loads(r.read())["results"]
    assert len(res) == 20 and all("blue" in r["path"] for r in res[:8])  # 8 blue images, then the rest
    assert not any("blue" in r["path"] for r in res[8:])
    assert len(json.loads(get(srv, "/api/search?q=green&k=500")[2])["results"]) == 23  # all live images


def test_script_file_name_is_data_not_markup(server):
    srv = server[0]
    res = json.loads(get(srv, "/api/search?q=red&k=20")[2])["results"]
    odd = [r for r in res if "<script>" in r["path"]]
    assert odd and odd[0]["id"] == 1
    raw = get(srv, "/api/search?q=red&k=20")[2]
    assert b"<script>" not in raw  # JSON escapes < and > as \u003c ... (ensure_ascii keeps it literal data)


def test_files_only_by_id(server):
    srv, store, names, status = server
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


def test_thumbnails_cached_in_store_and_refreshed(server):
    srv, store, names, status = server
    s, h, body = get(srv, "/api/thumb/5")
    assert s == 200 and h["Content-Type"] == "image/jpeg"
    import io

    im = Image.open(io.BytesIO(body))
    assert im.format == "JPEG" and max(im.size) <= 320
    cached = list((store / "thumbs").rglob("5-*"))
    assert len(cached) == 1
    assert get(srv, "/api/thumb/5")[2] == body
    Image.new("RGB", (64, 64), (0, 0, 0)).save(names[4], quality=90)  # the file changed on disk
    body2 = get(srv, "/api/thumb/5")[2]
    im2 = Image.open(io.BytesIO(body2))
    assert im2.size == (64, 64) and body2 != body
    assert get(srv, "/api/thumb/4")[0] == 404


def test_similar_and_bad_requests(server):
    srv, store, names, status = server
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


def test_dropped_connections_print_no_traceback(server, capfd):
    """A browser resetting a half-sent request (closed tab) is routine: nothing on stderr, the server
    keeps answering."""
    import socket
    import struct
    import time

    srv = server[0]
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

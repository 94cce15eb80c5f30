"""`pixdex serve` against a hostile probe: DNS-rebinding Host names, files swapped after indexing
(symlinks, FIFOs, other content), many and idle connections, malformed requests, spoofing file names.
The threat model and which test covers which defence: docs/SECURITY.md."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("faiss")

SECURITY_HEADERS = ("X-Content-Type-Options", "Content-Security-Policy", "X-Frame-Options")


def get(addr, path, headers=None, method="GET", timeout=10):
    conn = http.client.HTTPConnection(*addr[:2], timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def raw(addr, data: bytes, timeout=10) -> tuple[int, dict, bytes]:
    """Send raw bytes; parse the one response that comes back (status, headers, body)."""
    with socket.create_connection(addr[:2], timeout=timeout) as s:
        s.sendall(data)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            head, sep, body = buf.partition(b"\r\n\r\n")
            if sep:
                hdrs = dict(
                    line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if ": " in line
                )
                if len(body) >= int(hdrs.get("Content-Length", "0")):
                    break
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    hdrs = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), hdrs, body


def assert_json_error(status, headers, body, code):
    assert status == code, (status, body[:200])
    assert headers["Content-Type"] == "application/json"
    assert "error" in json.loads(body)
    for h in SECURITY_HEADERS:
        assert h in headers, h


@pytest.fixture
def served(tmp_path):
    """A fresh gallery served for one test (the tests here change files under it): (addr, names, srv)."""
    from conftest import ColourText, build_gallery

    from pixdex.search.serve import make_server, start_in_thread

    store, names, _ = build_gallery(tmp_path)
    srv = make_server(store, "127.0.0.1", 0)
    srv.engine._text = ColourText()
    start_in_thread(srv)
    try:
        yield srv.server_address[:2], names, srv
    finally:
        srv.shutdown()
        srv.server_close()
        srv.engine.close()


# ----------------------------------------------------------------------------- 1. DNS rebinding


GOOD_HOSTS = [
    "localhost",
    "LOCALHOST:8765",
    "127.0.0.1",
    "127.0.0.1:1",
    "127.1.2.3:8765",
    "[::1]",
    "[::1]:80",
]
BAD_HOSTS = [
    "127.evil.com",
    "127.0.0.1.nip.io",
    "127.0.0.1.evil.com:8765",
    "localhost.evil.com",
    "localhost.",
    "evil.com",
    "[::1].evil.com",
    "[::1]evil",
    "127.0.0.1:80:80",
    "127.0.0.1:port",
    "127.0.0.1:123456",
    "127.1",
    "0x7f.0.0.1",
    "",
]


def test_host_check_admits_only_exact_loopback_names(gallery):
    srv = gallery[0]
    for host in GOOD_HOSTS:
        assert get(srv.server_address, "/api/search?q=red&k=1", {"Host": host})[0] == 200, host
    for host in BAD_HOSTS:
        s, h, body = get(srv.server_address, "/api/search?q=red&k=1", {"Host": host})
        assert_json_error(s, h, body, 403)
        assert b"results" not in body, host
        assert get(srv.server_address, "/api/thumb/2", {"Host": host})[0] == 403, host
    # two Host headers: no guessing which one a proxy or the browser meant
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=10)
    conn.putrequest("GET", "/api/search?q=red", skip_host=True)
    conn.putheader("Host", "127.0.0.1")
    conn.putheader("Host", "evil.com")
    conn.endheaders()
    assert conn.getresponse().status == 403
    conn.close()


def test_host_check_for_other_bind_addresses():
    from pixdex.search.serve import host_allowed

    assert host_allowed("192.168.1.5:8765", "192.168.1.5")
    assert host_allowed("localhost:8765", "192.168.1.5")
    assert not host_allowed("192.168.1.6:8765", "192.168.1.5")
    assert not host_allowed("evil.com", "192.168.1.5")
    assert host_allowed("photos.lan", "photos.lan") and host_allowed("Photos.LAN:8765", "photos.lan")
    assert not host_allowed("photos.lan.evil.com", "photos.lan")
    # a wildcard bind is reached by any of the machine's addresses: IP literals cannot be rebound
    assert host_allowed("10.0.0.7:8765", "0.0.0.0") and host_allowed("[fe80::1]:8765", "::")
    assert not host_allowed("evil.com:8765", "0.0.0.0") and not host_allowed("127.evil.com", "::")
    me = socket.gethostname().lower()
    assert host_allowed(me + ":8765", "0.0.0.0") and host_allowed(me + ".local", "::")
    assert not host_allowed(me + ".evil.com", "0.0.0.0")


def test_cross_site_requests_refused(gallery):
    """A page on another site may embed /api/image/ID in an <img>: the browser says Sec-Fetch-Site:
    cross-site and the server refuses; the answers also carry Cross-Origin-Resource-Policy."""
    srv = gallery[0]
    s, h, body = get(srv.server_address, "/api/image/2", {"Sec-Fetch-Site": "cross-site"})
    assert_json_error(s, h, body, 403)
    assert get(srv.server_address, "/api/search?q=red", {"Sec-Fetch-Site": "same-site"})[0] == 403
    for ok in ("same-origin", "none"):
        s, h, _ = get(srv.server_address, "/api/image/2", {"Sec-Fetch-Site": ok})
        assert s == 200 and h["Cross-Origin-Resource-Policy"] == "same-origin"
    # following a link from elsewhere to the gallery is the user's own navigation: answered
    nav = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    assert get(srv.server_address, "/", nav)[0] == 200


# ----------------------------------------------------------------------------- 3. files swapped after indexing


def test_symlink_swapped_in_after_indexing_is_not_served(served, tmp_path):
    addr, names, _ = served
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0:secret-line\n" * 10)
    assert get(addr, "/api/image/2")[0] == 200
    names[1].unlink()
    names[1].symlink_to(secret)
    for route in ("/api/image/2", "/api/thumb/2"):
        s, h, body = get(addr, route)
        assert_json_error(s, h, body, 410)
        assert b"secret-line" not in body
    names[2].unlink()
    names[2].symlink_to("/etc/passwd")
    s, h, body = get(addr, "/api/image/3")
    assert_json_error(s, h, body, 410)
    assert b"root:" not in body


def test_changed_content_of_the_same_size_is_not_served(served):
    """Same size, other bytes: the content hash recorded at indexing decides."""
    addr, names, _ = served
    data = names[5].read_bytes()
    names[5].write_bytes(b"X" * len(data))
    s, h, body = get(addr, "/api/image/6")
    assert_json_error(s, h, body, 410)
    assert b"XXXX" not in body
    assert_json_error(*get(addr, "/api/thumb/6"), 410)


@pytest.mark.timeout(60)
def test_fifo_swapped_in_does_not_hang_the_server(served):
    addr, names, _ = served
    names[6].unlink()
    os.mkfifo(names[6])
    try:
        for route in ("/api/image/7", "/api/thumb/7"):
            s, h, body = get(addr, route, timeout=5)  # a handler blocked on the FIFO: TimeoutError
            assert_json_error(s, h, body, 410)
        assert get(addr, "/api/search?q=red&k=2", timeout=5)[0] == 200
    finally:
        _unblock(names[6])


def _unblock(fifo: Path) -> None:
    """Release a reader stuck on ``fifo`` (the behaviour before the fix) so that the test can end."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


@pytest.mark.timeout(60)
def test_read_file_refuses_a_fifo_without_blocking(tmp_path):
    from pixdex.images import DecodeError, read_file

    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    result: list = []

    def reader():
        try:
            read_file(str(fifo))
            result.append("read")
        except DecodeError as e:
            result.append(str(e))

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():
        _unblock(fifo)
        t.join(5)
        pytest.fail("read_file blocked on a FIFO")
    assert result and "not a regular file" in result[0]
    with pytest.raises(DecodeError, match="not a regular file"):
        read_file("/dev/null")  # a device, not an empty photo


# ----------------------------------------------------------------------------- 4. connections


def test_backlog_holds_a_burst_of_pending_connections(tmp_path):
    """100 connections arriving before the server accepts any are all queued by the kernel (a backlog
    of 5 drops the 7th SYN on Linux: its connect times out) and all get their answer."""
    from conftest import ColourText, build_gallery

    from pixdex.search.serve import make_server, start_in_thread

    store, _, _ = build_gallery(tmp_path)
    srv = make_server(store, "127.0.0.1", 0)
    srv.engine._text = ColourText()
    socks = []
    started = False
    try:
        for i in range(100):
            try:
                socks.append(socket.create_connection(srv.server_address[:2], timeout=2))
            except OSError as e:
                pytest.fail(f"connection {i + 1} of 100 not queued: {e!r}")
        for s in socks:
            s.sendall(b"GET /api/search?q=red&k=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        start_in_thread(srv)
        started = True
        for s in socks:
            s.settimeout(20)
            assert s.recv(12).startswith(b"HTTP/1.1 200")
    finally:
        for s in socks:
            s.close()
        if started:  # shutdown() waits for serve_forever to end
            srv.shutdown()
        srv.server_close()
        srv.engine.close()


def test_fifty_concurrent_requests_all_answered(gallery):
    addr = gallery[0].server_address
    results: list = []
    go = threading.Barrier(50)

    def one():
        go.wait()
        try:
            results.append(get(addr, "/api/search?q=red&k=3", timeout=30)[0])
        except OSError as e:
            results.append(repr(e))

    ts = [threading.Thread(target=one) for _ in range(50)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert results == [200] * 50


@pytest.fixture
def quick(tmp_path):
    """A gallery served with a 0.5 s per-connection timeout and at most 3 handler threads."""
    from conftest import ColourText, build_gallery

    from pixdex.search.serve import make_server, start_in_thread

    store, _, _ = build_gallery(tmp_path)
    srv = make_server(store, "127.0.0.1", 0, conn_timeout=0.5, max_threads=3)
    srv.engine._text = ColourText()
    start_in_thread(srv)
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        srv.engine.close()


def test_idle_connections_are_dropped(quick):
    addr = quick.server_address[:2]
    idle = socket.create_connection(addr, timeout=10)
    half = socket.create_connection(addr, timeout=10)
    half.sendall(b"GET /api/search?q=red HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never end
    kept = socket.create_connection(addr, timeout=10)  # keep-alive after one answer, then silent
    kept.sendall(b"GET /api/search?q=red&k=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert kept.recv(12).startswith(b"HTTP/1.1 200")
    t0 = time.monotonic()
    for s in (idle, half, kept):
        try:
            while s.recv(65536):  # the rest of an answer, then the end of the stream
                pass
        except TimeoutError:
            pytest.fail("the server kept an idle connection open for 10 s")
        s.close()
    assert time.monotonic() - t0 < 10


def _handler_threads() -> int:
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def test_thread_cap_queues_connections_instead_of_piling_up_threads(quick):
    """At most 3 handler threads however many sockets are open; the others wait in the backlog and are
    answered once the idle ones are dropped."""
    addr = quick.server_address[:2]
    base = _handler_threads()
    idle = [socket.create_connection(addr, timeout=10) for _ in range(12)]
    time.sleep(0.3)
    assert _handler_threads() - base == 3
    s, _, body = get(addr, "/api/search?q=red&k=1", timeout=10)  # waits for a slot, then is answered
    assert s == 200 and json.loads(body)["results"]
    for c in idle:
        c.close()


def test_too_many_query_parameters_is_400_json(gallery, capfd):
    addr = gallery[0].server_address
    s, h, body = get(addr, "/api/search?q=red&" + "&".join(f"p{i}=1" for i in range(20)))
    assert_json_error(s, h, body, 400)
    assert "parameters" in json.loads(body)["error"]
    assert get(addr, "/api/search?q=red&" + "&".join(f"p{i}=1" for i in range(19)))[0] == 200
    assert "Traceback" not in capfd.readouterr().err


def test_protocol_errors_are_json_with_security_headers(gallery):
    addr = gallery[0].server_address
    h127 = b"Host: 127.0.0.1\r\n"
    cases = [
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n" + h127 + b"\r\n", 414),
        (b"FOO / HTTP/1.1\r\n" + h127 + b"\r\n", 501),
        (b"GET / HTTP/1.1\r\n" + h127 + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + h127 + b"X-Long: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/9.9\r\n" + h127 + b"\r\n", 505),
        (b"GET / NOT-HTTP\r\n" + h127 + b"\r\n", 400),
        (b"GET\r\n\r\n", 400),
        (b"GET /\r\n\r\n", 400),  # HTTP/0.9: no status line, no headers; refused
    ]
    for req, code in cases:
        s, h, body = raw(addr, req)
        assert_json_error(s, h, body, code)
        assert h.get("Connection") == "close"
    assert get(addr, "/")[0] == 200  # and the server still answers


# ----------------------------------------------------------------------------- 8. spoofing names

RLO = "\u202e"


def test_display_names_make_bidi_and_control_characters_visible():
    from pixdex.search.display import visible

    assert visible("cat.jpg") == "cat.jpg"
    assert visible("photo_" + RLO + "gnp.exe.jpg") == "photo_\\u202egnp.exe.jpg"
    assert visible("a\u2066b\u2069c\u200ed\u200f\u061c") == "a\\u2066b\\u2069c\\u200ed\\u200f\\u061c"
    assert visible("tab\there\nnl\x1b[31m\x7f\x85") == "tab\\u0009here\\u000anl\\u001b[31m\\u007f\\u0085"
    assert visible("line\u2028sep") == "line\\u2028sep"
    # ordinary non-Latin scripts, right-to-left letters and emoji stay as they are
    for s in ("日本語.jpg", "שלום.jpg", "مرحبا.png", "👨\u200d👩\u200d👧.jpg", "café.jpg"):
        assert visible(s) == s


def test_api_gives_display_names_the_ui_shows(gallery):
    """The gallery's id 7 is named with a right-to-left override (SPOOF_NAME): the API's ``name`` and
    ``display_path`` (what the UI shows) carry it as the visible text \\u202e; ``path`` stays exact."""
    from conftest import SPOOF_NAME

    srv, store, names, status = gallery
    assert names[6].name == SPOOF_NAME and RLO in SPOOF_NAME
    res = json.loads(get(srv.server_address, "/api/search?q=red&k=20")[2])["results"]
    spoof = [r for r in res if r["id"] == 7]
    assert spoof and spoof[0]["path"] == str(names[6])
    assert spoof[0]["name"] == SPOOF_NAME.replace(RLO, "\\u202e")
    assert spoof[0]["display_path"] == str(names[6]).replace(RLO, "\\u202e")
    for r in res:
        assert r["name"] == Path(r["path"]).name.replace(RLO, "\\u202e")
    d = json.loads(get(srv.server_address, "/api/similar/7?k=3")[2])
    assert d["source"]["name"] == spoof[0]["name"] and all(RLO not in r["name"] for r in d["results"])

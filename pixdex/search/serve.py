"""`pixdex serve`: a JSON API and a single-page gallery over a store, on the standard library's HTTP server.

Routes (GET and HEAD, and one POST)::

    /                       the UI (pixdex/search/static/index.html)
    /static/app.js|style.css
    /favicon.ico            the icon (pixdex/search/favicon.py)
    /api/search?q=TEXT&k=N  {"query", "results": [hit, ...]}  (each hit with its "tags", "date", "date_source")
    /api/search?tag=L&q=..  only images tagged L (repeatable); without q: those images by probability
    /api/tags               {"tags": [{"label", "count"}, ...]}  (from `pixdex tag`, most frequent first)
    /api/similar/ID?k=N     {"source": row, "results": [...]}  (the stored vector, no model needed)
    /api/image/ID           the original file (converted to JPEG when browsers cannot show its format)
    /api/thumb/ID           a JPEG thumbnail, cached under STORE/thumbs/
    POST /api/search/image?k=N   body: an image's bytes (Content-Type image/* or application/octet-stream,
                            at most MAX_UPLOAD_BYTES): {"results": [...]} ranked by that image; decoded and
                            encoded in memory, never written to disk or the store

The search routes take the filters of `pixdex search` as parameters, built by the same
:func:`pixdex.search.filters.make_filters`: ``after``, ``before``, ``path``, ``min_score`` and ``tag``
(repeatable); a bad value is a 400 with a one-line JSON ``error``.

Security (the threat model and what each defence covers: docs/SECURITY.md): binds to 127.0.0.1 unless
told otherwise; files are served only by the integer id of an indexed, live row (never from a path
taken from the request), and only while the file is still the one indexed (``Media.read``); the Host
header must be an exact loopback name or IP literal, or the address bound to (:func:`host_allowed`,
against DNS rebinding); cross-site subresource requests are refused (``Sec-Fetch-Site``, plus
``Cross-Origin-Resource-Policy``), and so is every cross-site POST; an upload must say a Content-Type
that no HTML form can send (so another site's page needs a CORS preflight, which is never granted); every response, error pages included, is JSON or a static file and
says nosniff with a strict Content-Security-Policy; the UI puts file names in the page with textContent,
as the API's display names (bidi and control characters made visible, :mod:`pixdex.search.display`).
Connections: a listen backlog of 128, a per-connection socket timeout, at most ``max_threads`` handler
threads (further connections wait in the backlog).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, urlsplit

from pixdex.errors import ExitCode, PixdexError
from pixdex.search.display import visible
from pixdex.search.media import Unavailable

log = logging.getLogger(__name__)

MAX_K = 500
MAX_PARAMS = 20  # query parameters per request
BACKLOG = 128  # pending connections the kernel queues while every handler is busy
CONN_TIMEOUT = 30.0  # seconds a connection may stay silent (idle keep-alive, half-sent request)
MAX_THREADS = 256  # handler threads; further connections wait in the backlog for a free one
MAX_UPLOAD_BYTES = 32 * 1024 * 1024  # an image uploaded to /api/search/image
MAX_PARAM_CHARS = 1000  # a query text or a path pattern
MAX_DISCARD_BYTES = 256 * 1024 * 1024  # a refused upload is read and dropped up to this size, so that the
# browser sees the error instead of a reset connection; larger ones are cut off
_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
_UPLOAD_ROUTE = "/api/search/image"
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", _CSP),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)
_ID_ROUTE = re.compile(r"^/api/(image|thumb|similar)/(\d{1,18})$")
# Host: a bracketed IPv6 literal or a name / IPv4 literal, then an optional port
_HOST = re.compile(r"^(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9.-]+))(?::(?P<port>[0-9]{0,5}))?$")


def _ip(text: str):
    try:
        return ipaddress.ip_address(text)  # strict: no "127.1", "0x7f.0.0.1" or leading zeros
    except ValueError:
        return None


def _is_loopback(host: str) -> bool:
    """A loopback bind address: localhost or a loopback IP literal."""
    h = host.strip().lower().strip("[]")
    ip = _ip(h)
    return h == "localhost" or (ip is not None and ip.is_loopback)


def host_allowed(header: str, bound: str) -> bool:
    """Whether a request's Host header may be answered by a server bound to ``bound``.

    Admitted: ``localhost``, a loopback IP literal (any ``127.x.y.z``, ``[::1]``), the exact host bound
    to, and, when bound to a wildcard address (``0.0.0.0``, ``::``), any IP literal and this machine's
    host name (also with ``.local``, its mDNS name); each with an optional ``:port``. DNS rebinding needs a name the attacker's DNS answers
    for, so exact names and IP literals cannot be rebound; ``127.evil.com`` or ``127.0.0.1.nip.io`` are
    just names and are refused.
    """
    m = _HOST.fullmatch(header.strip().lower())
    if not m or (m["port"] and int(m["port"]) > 65535):
        return False
    name = m["name"]
    ip = _ip(m["v6"]) if m["v6"] is not None else _ip(name)
    if m["v6"] is not None and (ip is None or ip.version != 6):
        return False
    if name == "localhost" or (ip is not None and ip.is_loopback):
        return True
    b = bound.strip().lower().strip("[]")
    bound_ip = _ip(b)
    if bound_ip is not None and bound_ip.is_unspecified:
        me = socket.gethostname().lower()
        return ip is not None or name in (me, me + ".local")
    if ip is not None:
        return ip == bound_ip
    return name == b


def _static_bytes(name: str) -> bytes:
    return resources.files("pixdex.search").joinpath("static", name).read_bytes()


class _ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _int_param(params: dict, name: str, default: int, lo: int, hi: int) -> int:
    vals = params.get(name)
    if not vals:
        return default
    try:
        v = int(vals[-1])
    except ValueError:
        raise _ApiError(400, f"{name} must be an integer") from None
    if not lo <= v <= hi:
        raise _ApiError(400, f"{name} must be between {lo} and {hi}")
    return v


def _param(params: dict, name: str) -> Optional[str]:
    """The last value of a text parameter, stripped; None when absent or blank."""
    v = (params.get(name) or [""])[-1].strip()
    if len(v) > MAX_PARAM_CHARS:
        raise _ApiError(400, f"{name} too long (at most {MAX_PARAM_CHARS} characters)")
    return v or None


def _filters(params: dict):
    """The `pixdex search` filters given as parameters (``after``, ``before``, ``path``, ``min_score``,
    ``tag``...), validated by the one :func:`make_filters`; a bad value is a :class:`PixdexError` (400)."""
    from pixdex.search.filters import API_NAMES, make_filters

    tags = [t for t in params.get("tag", []) if t.strip()]
    if any(len(t) > 200 for t in tags):
        raise _ApiError(400, "tag too long")
    return make_filters(
        path_glob=_param(params, "path"),
        after=_param(params, "after"),
        before=_param(params, "before"),
        min_score=_param(params, "min_score"),
        tags=tags,
        names=API_NAMES,
    )


def _shown(d: dict) -> dict:
    """A result for the UI: its ``path`` as is, plus the ``name`` and ``display_path`` to show."""
    path = d["path"]
    return {**d, "name": visible(os.path.basename(path)), "display_path": visible(path)}


class _Handler(BaseHTTPRequestHandler):
    server_version = "pixdex"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = CONN_TIMEOUT  # socket timeout: a silent connection is closed (StreamRequestHandler.setup)

    # set on the subclass made by make_server
    engine = None
    media = None
    bound_host = "127.0.0.1"

    def log_message(self, fmt, *args):  # route the stdlib's access log to logging
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, body: bytes, ctype: str, extra: Optional[dict] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in _SECURITY_HEADERS:
            self.send_header(k, v)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if self.command == "POST":
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj, extra: Optional[dict] = None) -> None:
        # <, > and & only occur inside JSON strings: escaping them keeps file names inert even if a
        # browser were ever to sniff the response as HTML.
        text = json.dumps(obj, ensure_ascii=True)
        body = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode("ascii")
        self._send(status, body, "application/json", {"Cache-Control": "no-store", **(extra or {})})

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """The standard library's protocol errors (400, 414, 431, 501, 505...) as JSON with the same
        headers as every other answer, instead of its HTML page; the connection is closed."""
        self.log_error("code %d, message %s", code, message)
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # a request line it could not parse: answer HTTP/1.1
            self.request_version = "HTTP/1.1"
        reason = self.responses.get(code, ("error",))[0]
        self._json(code, {"error": visible(message or reason)}, {"Connection": "close"})

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.request_version == "HTTP/0.9":  # no status line nor headers: not spoken here
            self.send_error(400, "HTTP/0.9 is not supported")
            return False
        return True

    def _refusal(self) -> Optional[str]:
        """Why this request is refused before routing (None: it is not)."""
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1 or not host_allowed(hosts[0], self.bound_host):
            return "this server only answers requests addressed to its own host name (loopback)"
        site = (self.headers.get("Sec-Fetch-Site") or "").strip().lower()
        mode = (self.headers.get("Sec-Fetch-Mode") or "").strip().lower()
        if site in ("cross-site", "same-site") and (mode != "navigate" or self.command == "POST"):
            return "requests from other sites are not answered"
        return None

    def _url(self) -> tuple[str, dict]:
        """(route, query parameters) of the request, after the pre-routing checks."""
        why = self._refusal()
        if why:
            raise _ApiError(403, why)
        try:
            url = urlsplit(self.path)
            params = parse_qs(url.query, keep_blank_values=True, max_num_fields=MAX_PARAMS)
        except ValueError:
            raise _ApiError(400, f"bad request URL (at most {MAX_PARAMS} query parameters)") from None
        return url.path, params

    def _results(self, hits, **extra) -> None:
        self._json(200, {**extra, "results": [_shown(h.to_dict()) for h in hits]})

    def do_HEAD(self):  # noqa: N802 (stdlib naming)
        self.do_GET()

    def do_GET(self):  # noqa: N802
        self._answer(self._get)

    def do_POST(self):  # noqa: N802
        self.close_connection = True  # an unread or partly read body must never be parsed as a request
        self._body_left = True
        self._answer(self._post)

    def _discard_body(self) -> None:
        """Read and drop the body of a refused POST (up to MAX_DISCARD_BYTES), so that the client reads
        the error answer rather than a connection reset by unread data."""
        if not getattr(self, "_body_left", False):
            return
        self._body_left = False
        try:
            left = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return
        if not 0 < left <= MAX_DISCARD_BYTES:
            return
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                return
            left -= len(chunk)

    def _get(self) -> None:
        route, params = self._url()
        if route in _STATIC:
            name, ctype = _STATIC[route]
            self._send(200, _static_bytes(name), ctype, {"Cache-Control": "no-cache"})
            return
        if route == "/favicon.ico":
            from pixdex.search.favicon import favicon_ico

            self._send(200, favicon_ico(), "image/x-icon", {"Cache-Control": "max-age=86400"})
            return
        if route == "/api/search":
            q = _param(params, "q")
            filters = _filters(params)
            if not q and not filters.tags:
                raise _ApiError(400, "missing query: /api/search?q=TEXT (or ?tag=LABEL)")
            k = _int_param(params, "k", 20, 1, MAX_K)
            from pixdex.search.query import build_parts

            hits = self.engine.find(build_parts(q) if q else None, k, filters)
            self._results(hits, query=q or "", tags=list(filters.tags))
            return
        if route == "/api/tags":
            counts = self.engine.view.tag_counts()
            self._json(200, {"tags": [{"label": label, "count": n} for label, n in counts]})
            return
        m = _ID_ROUTE.match(route)
        if not m:
            raise _ApiError(404, "not found")
        kind, image_id = m.group(1), int(m.group(2))
        if kind == "similar":
            k = _int_param(params, "k", 20, 1, MAX_K)
            source, hits = self.engine.similar(image_id, k, _filters(params))
            if source is None:
                raise _ApiError(404, f"no indexed image with id {image_id}")
            self._results(hits, source=_shown(source.to_dict()))
            return
        row = self.engine.row(image_id)
        if row is None:
            raise _ApiError(404, f"no indexed image with id {image_id}")
        if kind == "thumb":
            body, ctype = self.media.thumbnail(row)
        else:
            body, ctype = self.media.original(row)
        self._send(200, body, ctype, {"Cache-Control": "private, max-age=300"})

    def _post(self) -> None:
        """``POST /api/search/image``: the body is an image; it is decoded and encoded in memory."""
        route, params = self._url()
        if route != _UPLOAD_ROUTE:
            raise _ApiError(405, "method not allowed")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if not (ctype.startswith("image/") or ctype == "application/octet-stream"):
            raise _ApiError(
                415,
                "send the image's bytes as the body, as image/* or application/octet-stream "
                "(curl: -H 'Content-Type: image/jpeg' --data-binary @FILE)",
            )
        if self.headers.get("Transfer-Encoding"):
            raise _ApiError(411, "send the image with a Content-Length (no chunked upload)")
        try:
            size = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise _ApiError(411, "send the image with a Content-Length") from None
        if size > MAX_UPLOAD_BYTES:
            raise _ApiError(413, f"image too large (over {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB)")
        if size <= 0:
            raise _ApiError(400, "empty upload: send an image file")
        k = _int_param(params, "k", 20, 1, MAX_K)
        filters = _filters(params)  # checked before reading the body
        data = self.rfile.read(size)
        self._body_left = False
        if len(data) != size:
            raise ConnectionResetError("upload cut short")
        vector = self.engine.encode_image_bytes(data)
        del data
        self._results(self.engine.search(vector, k, filters), query="", tags=list(filters.tags))

    def _answer(self, handle) -> None:
        """Run ``handle`` and turn every failure into a JSON error (never a traceback to the client)."""
        try:
            try:
                handle()
            except (_ApiError, Unavailable, PixdexError) as e:
                self._discard_body()
                self._json(getattr(e, "status", 400), {"error": visible(str(e))})
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            log.debug("client went away")
            self.close_connection = True
        except Exception:  # noqa: BLE001 - one bad request must not stop the server
            log.exception("error answering %s", self.path)
            self._json(500, {"error": "internal error"})

    def _method_not_allowed(self):
        self._json(405, {"error": "method not allowed"})

    do_PUT = do_DELETE = do_PATCH = _method_not_allowed  # noqa: N815


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with a listen backlog of BACKLOG and at most ``max_threads`` handler threads:
    when all are busy the accept loop waits for one to finish, and new connections queue in the
    kernel's backlog (never an unbounded pile of threads; idle ones end after the socket timeout)."""

    daemon_threads = True
    request_queue_size = BACKLOG

    def __init__(self, address, handler, max_threads: int = MAX_THREADS):
        self.max_threads = int(max_threads)
        self._slots = threading.BoundedSemaphore(self.max_threads)
        self._closing = threading.Event()
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        while not self._slots.acquire(timeout=0.2):
            if self._closing.is_set():
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)  # starts process_request_thread
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def shutdown(self) -> None:
        self._closing.set()
        super().shutdown()

    def handle_error(self, request, client_address) -> None:
        """A browser that drops a connection (tab closed, keep-alive reset) is routine: no traceback on
        stderr; anything else is logged."""
        err = sys.exc_info()[1]
        if isinstance(err, (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)):
            log.debug("client %s went away: %s", client_address, err)
        else:
            log.error("error serving %s", client_address, exc_info=True)


def make_server(
    store_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8765,
    engine=None,
    conn_timeout: Optional[float] = CONN_TIMEOUT,
    max_threads: int = MAX_THREADS,
) -> ThreadingHTTPServer:
    """Build (not start) the server; ``port=0`` picks a free port (``server.server_address``).
    ``conn_timeout``: seconds a connection may stay silent; ``max_threads``: handler threads at most."""
    from pixdex.search.engine import SearchEngine
    from pixdex.search.media import Media

    engine = engine or SearchEngine(Path(store_dir))
    handler = type(
        "PixdexHandler",
        (_Handler,),
        {
            "engine": engine,
            "media": Media(Path(store_dir)),
            "bound_host": host,
            "timeout": conn_timeout,
        },
    )
    try:
        server = _Server((host, port), handler, max_threads=max_threads)
    except OSError as e:
        raise PixdexError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    server.engine = engine
    return server


def start_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    """Serve in a daemon thread (tests, notebooks); stop with ``server.shutdown(); server.server_close()``."""
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    return t


def serve(store_dir: Path, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Run the server until Ctrl-C."""
    from pixdex.threads import single_thread_blas

    single_thread_blas()
    if not _is_loopback(host):
        log.warning("serving on %s: anyone who can reach this address can browse the indexed photos", host)
    server = make_server(store_dir, host, port)
    h, p = server.server_address[:2]
    shown = f"[{h}]" if ":" in h else h
    sys.stdout.write(
        f"pixdex: serving {server.engine.count()} images at http://{shown}:{p}/ (Ctrl-C stops)\n"
    )
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.stdout.write("pixdex: stopped\n")
        raise SystemExit(int(ExitCode.INTERRUPTED)) from None  # the exit-code table's Ctrl-C, as watch
    finally:
        server.server_close()
        server.engine.close()

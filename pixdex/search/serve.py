"""`pixdex serve`: a JSON API and a single-page gallery over a store, on the standard library's HTTP server.

Routes (GET and HEAD only)::

    /                       the UI (pixdex/search/static/index.html)
    /static/app.js|style.css
    /api/search?q=TEXT&k=N  {"query", "results": [hit, ...]}
    /api/similar/ID?k=N     {"source": row, "results": [...]}  (the stored vector, no model needed)
    /api/image/ID           the original file (converted to JPEG when browsers cannot show its format)
    /api/thumb/ID           a JPEG thumbnail, cached under STORE/thumbs/

Security: binds to 127.0.0.1 unless told otherwise; files are served only by the integer id of an indexed,
live row (never from a path taken from the request); the Host header must name the loopback when bound
there (DNS rebinding); every response says nosniff and carries a strict Content-Security-Policy; the UI
puts file names in the page with textContent, and error pages are JSON.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, urlsplit

from pixdex.errors import PixdexError

log = logging.getLogger(__name__)

MAX_K = 500
_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
_ID_ROUTE = re.compile(r"^/api/(image|thumb|similar)/(\d{1,18})$")


def _is_loopback(host: str) -> bool:
    return host in _LOOPBACK_NAMES or host.startswith("127.")


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


class _Handler(BaseHTTPRequestHandler):
    server_version = "pixdex"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    # set on the subclass made by make_server
    engine = None
    media = None
    check_host = True

    def log_message(self, fmt, *args):  # route the stdlib's access log to logging
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, body: bytes, ctype: str, extra: Optional[dict] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", _CSP)
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        # <, > and & only occur inside JSON strings: escaping them keeps file names inert even if a
        # browser were ever to sniff the response as HTML.
        text = json.dumps(obj, ensure_ascii=True)
        body = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode("ascii")
        self._send(status, body, "application/json", {"Cache-Control": "no-store"})

    def _host_ok(self) -> bool:
        if not self.check_host:
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        if host.startswith("["):
            name = host.split("]")[0] + "]"
        else:
            name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        return _is_loopback(name)

    def do_HEAD(self):  # noqa: N802 (stdlib naming)
        self.do_GET()

    def do_GET(self):  # noqa: N802
        try:
            if not self._host_ok():
                raise _ApiError(403, "this server only answers requests addressed to the loopback host")
            url = urlsplit(self.path)
            route = url.path
            if route in _STATIC:
                name, ctype = _STATIC[route]
                self._send(200, _static_bytes(name), ctype, {"Cache-Control": "no-cache"})
                return
            params = parse_qs(url.query, keep_blank_values=True, max_num_fields=20)
            if route == "/api/search":
                q = (params.get("q") or [""])[-1].strip()
                if not q:
                    raise _ApiError(400, "missing query: /api/search?q=TEXT")
                if len(q) > 1000:
                    raise _ApiError(400, "query too long")
                k = _int_param(params, "k", 20, 1, MAX_K)
                hits = self.engine.search_text(q, k)
                self._json(200, {"query": q, "results": [h.to_dict() for h in hits]})
                return
            m = _ID_ROUTE.match(route)
            if not m:
                raise _ApiError(404, "not found")
            kind, image_id = m.group(1), int(m.group(2))
            if kind == "similar":
                k = _int_param(params, "k", 20, 1, MAX_K)
                source, hits = self.engine.similar(image_id, k)
                if source is None:
                    raise _ApiError(404, f"no indexed image with id {image_id}")
                self._json(200, {"source": source.to_dict(), "results": [h.to_dict() for h in hits]})
                return
            row = self.engine.row(image_id)
            if row is None:
                raise _ApiError(404, f"no indexed image with id {image_id}")
            if kind == "thumb":
                body, ctype = self.media.thumbnail(row)
            else:
                body, ctype = self.media.original(row)
            self._send(200, body, ctype, {"Cache-Control": "private, max-age=300"})
        except _ApiError as e:
            self._json(e.status, {"error": str(e)})
        except PixdexError as e:
            self._json(400, {"error": str(e)})
        except (BrokenPipeError, ConnectionResetError):
            log.debug("client went away")
        except Exception:  # noqa: BLE001 - one bad request must not stop the server
            log.exception("error answering %s", self.path)
            self._json(500, {"error": "internal error"})

    def _method_not_allowed(self):
        self._json(405, {"error": "method not allowed"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _method_not_allowed  # noqa: N815


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A browser that drops a connection (tab closed, keep-alive reset) is routine: no traceback on
        stderr; anything else is logged."""
        err = sys.exc_info()[1]
        if isinstance(err, (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)):
            log.debug("client %s went away: %s", client_address, err)
        else:
            log.error("error serving %s", client_address, exc_info=True)


def make_server(
    store_dir: Path, host: str = "127.0.0.1", port: int = 8765, engine=None
) -> ThreadingHTTPServer:
    """Build (not start) the server; ``port=0`` picks a free port (``server.server_address``)."""
    from pixdex.search.engine import SearchEngine
    from pixdex.search.media import Media

    engine = engine or SearchEngine(Path(store_dir))
    handler = type(
        "PixdexHandler",
        (_Handler,),
        {
            "engine": engine,
            "media": Media(Path(store_dir)),
            "check_host": _is_loopback(host),
        },
    )
    try:
        server = _Server((host, port), handler)
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
    finally:
        server.server_close()
        server.engine.close()

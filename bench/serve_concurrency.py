"""`pixdex serve` under concurrent connections: bursts of simultaneous requests, and idle sockets.

    python bench/serve_concurrency.py [--bursts 50,200] [--idle 300] [--timeout 10]

Serves a small synthetic store (24 tiny photos, a stand-in text tower: the server, not the model, is
measured) on 127.0.0.1 in this process, then for each burst size opens that many connections at once
(one thread each, released together) and sends ``/api/search?q=red``. Prints per burst: the wall time
until the last answer, the slowest single request, and how many failed (timeout, reset, non-200).
Then opens ``--idle`` connections that send nothing, and prints how many server threads they hold right
away and after the server's per-connection timeout, and how long a normal request sent meanwhile takes
(beyond the thread cap it waits in the backlog until idle connections time out).
"""

from __future__ import annotations

import argparse
import http.client
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's store builder (real storage writer)


def burst(addr, n: int, timeout: float) -> tuple[float, float, int]:
    start = threading.Barrier(n + 1)
    lat: list[float] = []
    fails: list[str] = []
    lock = threading.Lock()

    def one():
        start.wait()
        t0 = time.perf_counter()
        try:
            c = http.client.HTTPConnection(*addr, timeout=timeout)
            c.request("GET", "/api/search?q=red&k=5")
            r = c.getresponse()
            r.read()
            c.close()
            ok = r.status == 200
            err = f"HTTP {r.status}"
        except OSError as e:
            ok, err = False, type(e).__name__
        with lock:
            lat.append(time.perf_counter() - t0)
            if not ok:
                fails.append(err)

    ts = [threading.Thread(target=one) for _ in range(n)]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    return time.perf_counter() - t0, max(lat), len(fails)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bursts", default="50,200")
    ap.add_argument("--idle", type=int, default=300)
    ap.add_argument("--timeout", type=float, default=10.0, help="client timeout per request (s)")
    args = ap.parse_args()

    from conftest import ColourText, build_gallery

    from pixdex.search.serve import make_server, start_in_thread

    with tempfile.TemporaryDirectory() as tmp:
        store, _, _ = build_gallery(Path(tmp))
        srv = make_server(store, "127.0.0.1", 0)
        srv.engine._text = ColourText()
        start_in_thread(srv)
        addr = srv.server_address[:2]
        print(
            f"backlog {srv.request_queue_size}, per-connection timeout "
            f"{getattr(srv.RequestHandlerClass, 'timeout', None)}, "
            f"thread cap {getattr(srv, 'max_threads', None)}"
        )
        burst(addr, 5, args.timeout)  # warm up (FAISS, rows)
        for n in (int(x) for x in args.bursts.split(",")):
            wall, worst, failed = burst(addr, n, args.timeout)
            print(
                f"{n:4d} concurrent: all answered in {wall:6.2f} s, slowest {worst:6.2f} s, {failed} failed"
            )
            time.sleep(0.5)
        if args.idle:
            base = threading.active_count()
            socks = []
            for _ in range(args.idle):
                try:
                    socks.append(socket.create_connection(addr, timeout=2))
                except OSError:
                    break
            time.sleep(1.0)
            held = threading.active_count() - base
            tmo = getattr(srv.RequestHandlerClass, "timeout", None)
            t0 = time.perf_counter()
            _, worst, failed = burst(addr, 1, max(args.timeout, (tmo or 0) + 10))
            print(
                f"{len(socks)} idle sockets: {held} server threads held; a request meanwhile: "
                f"{'failed' if failed else 'ok'} in {time.perf_counter() - t0:.2f} s"
            )
            if tmo:
                time.sleep(tmo + 2)
                print(f"after {tmo + 2:.0f} s: {threading.active_count() - base} server threads held")
            for s in socks:
                s.close()
        srv.shutdown()
        srv.server_close()
        srv.engine.close()


if __name__ == "__main__":
    main()

"""Fixtures shared by several test modules: a headless browser, and a small gallery served over HTTP.

Plain helpers with no fixtures live in ``*_support.py`` modules next to this file; no test module
imports another test module.
"""

from __future__ import annotations

import os
import shutil

import pytest

# ----------------------------------------------------------------------------- browser


def _browser_unavailable(reason: str):
    """Skip a browser test whose browser is missing; under CI=true fail it instead, so that a CI machine
    without Chromium or playwright cannot pass by silently skipping the web UI."""
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: the browser tests must run; see .ci/run)", pytrace=False)
    pytest.skip(reason)


def chromium_path() -> str | None:
    """The Chromium binary the browser tests drive: $PIXDEX_CHROMIUM, else the system's chromium."""
    return os.environ.get("PIXDEX_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium driven by playwright (the system's binary: playwright downloads nothing)."""
    try:
        from playwright import sync_api
    except ImportError:
        _browser_unavailable("playwright is not installed (pip install -e '.[dev]')")
    path = chromium_path()
    if not path:
        _browser_unavailable("no chromium binary (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        except sync_api.Error as e:
            _browser_unavailable(f"chromium does not start: {str(e).splitlines()[0]}")
        try:
            yield b
        finally:
            b.close()


# ----------------------------------------------------------------------------- served gallery

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}

# A file name that runs script wherever it is parsed as HTML without a Content-Security-Policy: the
# <img> fails to load "x" and its onerror handler sets window.__pwned. (A <script> element would not do:
# scripts inserted through innerHTML never run.) It holds "red" so that red searches find it.
HOSTILE_NAME = "<img src=x onerror=\"window.__pwned=1\"> red & 'x'.jpg"
# A name spoofed with a right-to-left override: shown raw, it reads "red_06_gpj.exe.png" (everything
# after the override reversed); the UI must show the override as visible text. It holds "red".
SPOOF_NAME = "red_06_\u202egnp.exe.jpg"


class ColourText:
    """A stand-in text tower for HTTP tests: a colour word maps to that colour's direction."""

    dim = 3

    def encode_texts(self, texts):
        import numpy as np

        out = []
        for t in texts:
            v = np.array([1.0 if c in t else 0.0 for c in COLOURS], np.float32) + 1e-3
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


def build_gallery(root):
    """24 images of three colours (vectors = their normalised colour); id 4 failed to decode; id 1 has
    HOSTILE_NAME as its file name, id 7 SPOOF_NAME."""
    import numpy as np
    from PIL import Image
    from search_support import make_store

    photos = root / "photos"
    photos.mkdir(parents=True)
    names, vecs, status = [], [], []
    rng = np.random.default_rng(0)
    for i in range(24):
        colour = list(COLOURS)[i % 3]
        name = {0: HOSTILE_NAME, 6: SPOOF_NAME}.get(i, f"{colour}_{i:02d}.jpg")
        names.append(photos / name)
        rgb = np.array(COLOURS[colour]) + rng.integers(-20, 20, 3)
        Image.new("RGB", (200 + i, 120), tuple(int(c) for c in rgb)).save(names[-1], quality=90)
        v = np.eye(3)[i % 3] + 0.05 * rng.normal(size=3)
        vecs.append(v / np.linalg.norm(v))
        status.append("failed" if i == 3 else "ok")
    store = make_store(
        root / "store",
        np.array(vecs, np.float32),
        [str(p) for p in names],
        status,
        sizes=[(200 + i, 120) for i in range(24)],
    )
    return store, names, status


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """(server, store dir, image paths, statuses): build_gallery served on 127.0.0.1 (ephemeral port) in
    a thread for one test module, with ColourText as its text tower."""
    pytest.importorskip("faiss")
    from pixdex.search.serve import make_server, start_in_thread

    store, names, status = build_gallery(tmp_path_factory.mktemp("gallery"))
    srv = make_server(store, "127.0.0.1", 0)
    srv.engine._text = ColourText()
    start_in_thread(srv)
    try:
        yield srv, store, names, status
    finally:
        srv.shutdown()
        srv.server_close()
        srv.engine.close()


# ----------------------------------------------------------------------------- a dated library


def build_dated_library(root):
    """12 distinct small photos indexed with the tiny random-init model ``tiny-vit``: ``camera/`` holds 6
    JPEGs with an EXIF date (their files modified later, in 2025), ``screens/`` 6 PNGs without EXIF whose
    files were modified on known dates. Returns (store, {path: (date, source)}) with each image's date
    as the search should report it: the EXIF date, else the mtime in local time."""
    from datetime import datetime

    import numpy as np
    from PIL import Image

    from pixdex.indexer.run import index_paths

    root = root.resolve()
    rng = np.random.default_rng(13)
    truth = {}
    late = datetime(2025, 1, 2, 3, 4, 5).timestamp()
    for i in range(12):
        folder = root / "photos" / ("camera" if i < 6 else "screens")
        folder.mkdir(parents=True, exist_ok=True)
        block = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
        im = Image.fromarray(block).resize((80, 64), Image.Resampling.NEAREST)
        year = 2019 + i % 6
        if i < 6:
            path = folder / f"IMG_{i:02d}.jpg"
            exif = Image.Exif()
            exif[306] = f"{year}:06:01 12:00:00"  # DateTime
            im.save(path, quality=95, exif=exif)
            os.utime(path, (late, late))
            truth[str(path)] = (datetime(year, 6, 1, 12), "exif")
        else:
            path = folder / f"Screenshot_{i:02d}.png"
            im.save(path)
            when = datetime(year, 3, 15, 10, 30)
            os.utime(path, (when.timestamp(), when.timestamp()))
            truth[str(path)] = (when, "mtime")
    store = root / "store"
    index_paths([root / "photos"], store, model="tiny-vit", device="cpu", workers=1, json_mode=True)
    return store, truth


@pytest.fixture(scope="session")
def dated_library(tmp_path_factory):
    """(store, {path: (date, "exif"|"mtime")}): :func:`build_dated_library`, built once per session."""
    pytest.importorskip("torch")
    pytest.importorskip("faiss")
    return build_dated_library(tmp_path_factory.mktemp("dated"))


@pytest.fixture(scope="module")
def dated_server(dated_library):
    """(server, store, truth): the dated library served on 127.0.0.1 (ephemeral port) in a thread."""
    from pixdex.search.serve import make_server, start_in_thread

    store, truth = dated_library
    srv = make_server(store, "127.0.0.1", 0)
    start_in_thread(srv)
    try:
        yield srv, store, truth
    finally:
        srv.shutdown()
        srv.server_close()
        srv.engine.close()

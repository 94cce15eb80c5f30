"""Helpers for the indexing and storage tests: small image folders and store consistency checks."""

from __future__ import annotations

import sqlite3
import struct
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

# real path: the store names files by their real path, and ../shared may be a symbolic link
SHARED_DATA = (Path(__file__).resolve().parents[2] / "shared" / "data").resolve()


def make_images(
    folder: Path, n: int, seed: int = 0, size=(40, 32), ext: str = "png", start: int = 0
) -> list[Path]:
    """``n`` distinct small images (random blocks of colour), deterministic for a seed."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(start, start + n):
        a = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
        im = Image.fromarray(a).resize(size, Image.Resampling.NEAREST)
        p = folder / f"img_{i:05d}.{ext}"
        im.save(p, quality=95) if ext in ("jpg", "jpeg") else im.save(p)
        out.append(p)
    return out


def png_header(w: int, h: int) -> bytes:
    """A PNG that declares ``w`` x ``h`` pixels but holds almost no data (decompression-bomb probes)."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def db_rows(store: Path) -> dict[str, dict]:
    """path -> row dict (with ``has_vector``), read with stdlib sqlite3 like search does."""
    con = sqlite3.connect(f"{(store / 'pixdex.db').resolve().as_uri()}?mode=ro", uri=True)
    try:
        con.row_factory = sqlite3.Row
        rows = con.execute(
            "SELECT images.*, vectors.image_id IS NOT NULL AS has_vector FROM images "
            "LEFT JOIN vectors ON vectors.image_id = images.id"
        ).fetchall()
        return {r["path"]: dict(r) for r in rows}
    finally:
        con.close()


def db_vector(store: Path, image_id: int) -> Optional[np.ndarray]:
    con = sqlite3.connect(f"{(store / 'pixdex.db').resolve().as_uri()}?mode=ro", uri=True)
    try:
        r = con.execute("SELECT vector FROM vectors WHERE image_id = ?", (image_id,)).fetchone()
    finally:
        con.close()
    return None if r is None else np.frombuffer(r[0], dtype="<f4")


def faiss_ids(store: Path) -> np.ndarray:
    from pixdex.storage.faiss_index import VectorIndex

    vi = VectorIndex.load(store / "index.faiss")
    assert vi is not None, "no readable FAISS file"
    return np.sort(vi.ids())


def assert_consistent(store: Path, expected_paths) -> dict[str, dict]:
    """Every expected path present exactly once, nothing else; FAISS ids == ids of the 'ok' rows."""
    rows = db_rows(store)
    expected = sorted(str(p) for p in expected_paths)
    assert sorted(rows) == expected
    live = sorted(r["id"] for r in rows.values() if r["status"] == "ok")
    assert all(r["has_vector"] for r in rows.values() if r["status"] == "ok")
    assert not any(r["has_vector"] for r in rows.values() if r["status"] != "ok")
    ids = faiss_ids(store)
    assert ids.tolist() == live, "FAISS ids differ from the database ids"
    return rows

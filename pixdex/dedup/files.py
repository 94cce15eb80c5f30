"""Files outside the store (``--image FILE...``, ``--calibrate``'s copies) seen exactly as ``pixdex index``
sees them: read and content-hashed by :mod:`pixdex.images`, decoded and hashed for the copy tier by the
indexer's :func:`pixdex.indexer.pipeline.decode_pixels` (same drafts, same perceptual hash), and encoded
by the store's model through the indexer's :class:`pixdex.indexer.binding.LazyEncoder` (same spec and
checkpoint, same int8 speed-up on CPU), so a file already indexed gets the stored hash and vector.
The model loads only when the semantic tier is on; without it the file is decoded at the hash's draft.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

from pixdex.dedup import perceptual
from pixdex.dedup.find import ItemSet, Progress, empty_rows
from pixdex.errors import PixdexError
from pixdex.images import DecodeError, ImageInfo, content_hash, decode_many, read_file
from pixdex.paths import pixdex_command

log = logging.getLogger(__name__)

ENCODE_BATCH = 32


@dataclass
class FileInfo:
    path: str
    bytes: int
    info: Optional[ImageInfo]
    mtime_ns: Optional[int] = None


def store_encoder(store, device: str = "auto"):
    """The store's model, loaded as ``pixdex index`` loads it for this store (read-only: no binding)."""
    from pixdex.indexer.binding import LazyEncoder, model_choice

    if store.identity is None:
        raise PixdexError(
            f"the store at {store.dir} has no model yet "
            f"(run: {pixdex_command('index', 'FOLDER', store_dir=store.dir)})"
        )
    spec, ckpt, _ = model_choice(store, None, None)
    return LazyEncoder(store, spec, ckpt, device)


def load_files(
    paths: Sequence[str],
    store,
    tiers: tuple[str, ...],
    *,
    device: str = "auto",
    what: str = "--image",
    progress: Optional[Progress] = None,
) -> tuple[ItemSet, list[FileInfo]]:
    """An :class:`ItemSet` (ids -1) of ``paths`` with what ``tiers`` need, and each file's description.
    A file that cannot be read or decoded is a one-line :class:`PixdexError` naming ``what``."""
    from pixdex.indexer.pipeline import copy_hash_of, decode_pixels

    semantic = "semantic" in tiers
    decode = semantic or "copy" in tiers
    enc = store_encoder(store, device) if semantic else None
    pre = enc.preprocessor() if enc is not None else None
    content, infos, copy_rows, pixels = [], [], [], []
    for k, p in enumerate(paths):
        path = os.path.abspath(os.path.expanduser(os.fspath(p)))
        if progress:
            progress("reading files", k, len(paths))
        try:
            data = read_file(path)
            st = os.stat(path)
        except (DecodeError, OSError) as e:
            raise PixdexError(f"{what}: cannot read {p}: {getattr(e, 'strerror', None) or e}") from e
        h = content_hash(data)
        info = None
        if pre is not None:
            loaded = decode_pixels(data, h, path, pre)
            if not loaded.ok:
                raise PixdexError(f"{what}: cannot decode {p}: {loaded.error}")
            info, hashes = loaded.info, loaded.copy_hash
            pixels.append(loaded.pixels)
        elif decode:
            try:
                images, info = decode_many(data, (perceptual.HASH_DRAFT,), name=path)
            except DecodeError as e:
                raise PixdexError(f"{what}: cannot decode {p}: {e}") from e
            hashes = copy_hash_of(images[0])
        else:
            hashes = None
        content.append(h)
        infos.append(FileInfo(path, len(data), info, st.st_mtime_ns))
        copy_rows.append(hashes)
    n = len(infos)
    cpos = np.array([k for k, r in enumerate(copy_rows) if r is not None], dtype=np.int64)
    rows = np.stack([copy_rows[k].rows for k in cpos]) if cpos.size else empty_rows()
    quality = np.array([copy_rows[k].quality for k in cpos], dtype=np.int16)
    vpos = np.arange(n, dtype=np.int64) if pixels else np.zeros(0, np.int64)
    vectors = encode_pixels(enc, pixels, progress) if pixels else np.zeros((0, 0), np.float32)
    contents = np.empty(n, dtype=object)
    contents[:] = content
    items = ItemSet(np.full(n, -1, np.int64), contents, cpos, rows, vpos, vectors, copy_quality=quality)
    return items, infos


def encode_pixels(enc, pixels: list[np.ndarray], progress: Optional[Progress] = None) -> np.ndarray:
    model = enc.get()
    out = []
    for s in range(0, len(pixels), ENCODE_BATCH):
        if progress:
            progress("encoding", s, len(pixels))
        out.append(np.asarray(model.encode_images(np.stack(pixels[s : s + ENCODE_BATCH])), dtype=np.float32))
    if progress:
        progress("encoding", len(pixels), len(pixels))
    return np.concatenate(out)

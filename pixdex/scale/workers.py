"""What runs in Ray's workers: read + hash + decode tasks, and the embedding actors that write shards.

Nothing here imports Ray: Ray Data calls :func:`decode_batch` in CPU tasks and :class:`Embedder` in
actors (:mod:`pixdex.scale.index`, :mod:`pixdex.scale.dataset` build the pipelines). The per-file work is
the plain run's own: :func:`pixdex.indexer.pipeline.load_candidate` / ``decode_pixels`` (``pixdex.images``'
reader and decoder, the copy-tier hashes at ``perceptual.HASH_DRAFT``), so a file gives the same row
and the same pixels on a cluster as on one machine.

Batches are dicts of numpy columns. :func:`decode_batch` takes ``item`` (an id the driver knows the
item by), ``path`` (a file to read, or ``""``), ``data`` (the encoded image when there is no path),
``extra`` (JSON carried through: the file's size and mtime as scanned, a dataset row's caption) and
returns ``item``, ``meta`` (JSON: :func:`meta_of`), ``pixels`` ((n, S, S, 3) uint8 resized pixels, zeros where a
file was not decoded) and ``has_pixels``.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Optional

import numpy as np

from pixdex.dedup.perceptual import COPY_NBYTES, COPY_ROWS, CopyHash
from pixdex.images import ImageInfo

log = logging.getLogger(__name__)

_PRE: dict[str, object] = {}  # per worker process: preprocessing by its config


def _preprocessor(config: dict):
    key = json.dumps(config, sort_keys=True)
    if key not in _PRE:
        from pixdex.encoders.config import PreprocessConfig
        from pixdex.encoders.preprocess import Preprocessor

        _PRE[key] = Preprocessor(PreprocessConfig(**config))
    return _PRE[key]


def meta_of(res) -> dict:
    """A :class:`pixdex.indexer.pipeline.Loaded` (less its pixels) as JSON-safe values."""
    m: dict = {"content_hash": res.content_hash, "error": res.error, "known": bool(res.known)}
    if res.info is not None:
        i = res.info
        m["info"] = [
            i.width,
            i.height,
            i.format,
            i.taken_at.isoformat(sep=" ") if i.taken_at else None,
            i.camera_make,
            i.camera_model,
        ]
    if res.copy_hash is not None:
        m["copy"] = [np.asarray(res.copy_hash.rows, np.uint8).tobytes().hex(), int(res.copy_hash.quality)]
    return m


def loaded_of(m: dict, vector: Optional[np.ndarray]):
    """The :class:`~pixdex.indexer.pipeline.Loaded` a shard row stands for, with its vector."""
    from pixdex.indexer.pipeline import Loaded

    info = None
    if m.get("info"):
        w, h, fmt, taken, make, model = m["info"]
        info = ImageInfo(w, h, fmt, datetime.fromisoformat(taken) if taken else None, make, model)
    copy = None
    if m.get("copy"):
        rows = np.frombuffer(bytes.fromhex(m["copy"][0]), np.uint8).reshape(COPY_ROWS, COPY_NBYTES)
        copy = CopyHash(rows, int(m["copy"][1]))
    ok = vector is not None
    return Loaded(
        content_hash=m.get("content_hash"),
        info=info,
        error=None if ok else m.get("error"),
        known=bool(m.get("known")),
        copy_hash=copy,
        vector=vector,
    )


def decode_batch(batch: dict, preprocess: dict, known, vectors_known=frozenset()) -> dict:
    """Read, hash and (unless the hash is in ``known``) decode + preprocess each item of ``batch``.
    Content in ``vectors_known`` is decoded for its copy-tier hashes only (its pixels are not sent on
    to the encoder): a dataset store made before copy hashes."""
    from pixdex.images import content_hash
    from pixdex.indexer.pipeline import Loaded, decode_pixels, load_candidate

    pre = _preprocessor(preprocess)
    side = int(preprocess.get("image_size", 224))
    n = len(batch["item"])
    # the plain path's model input: uint8 (S, S, 3) resized pixels, normalised on the encoder's device
    pixels = np.zeros((n, side, side, 3), np.uint8)
    has = np.zeros(n, bool)
    metas = []
    datas = batch.get("data")
    for k in range(n):
        path = str(batch["path"][k] or "")
        if path:
            res = load_candidate(path, pre, known)
        else:
            data = bytes(datas[k])
            h = content_hash(data)
            res = Loaded(content_hash=h, known=True) if h in known else decode_pixels(data, h, "", pre)
        if res.pixels is not None and res.content_hash not in vectors_known:
            pixels[k], has[k] = res.pixels, True
        metas.append(json.dumps({**json.loads(batch["extra"][k]), **meta_of(res)}))
    return {"item": batch["item"], "meta": np.array(metas, dtype=object), "pixels": pixels, "has_pixels": has}


class Embedder:
    """A Ray actor: loads the model once, embeds each batch's decoded images (and, for datasets, the
    captions the store lacks) and writes the batch as one shard into ``staging``; returns the shard's
    name, rows and number of vectors computed. A model whose identity is not the store's fails here."""

    def __init__(self, spec: str, checkpoint, device: str, identity: dict, staging: str, text: bool = False):
        from pixdex.encoders.encoder import load_encoder
        from pixdex.errors import PixdexError
        from pixdex.indexer.binding import maybe_speed_up
        from pixdex.storage.contract import same_model

        towers = ("image", "text") if text else ("image",)
        self.enc = load_encoder(spec, checkpoint=checkpoint, device=device, towers=towers)
        maybe_speed_up(self.enc)
        self.identity = self.enc.identity()
        if not same_model(self.identity, identity):
            raise PixdexError(f"the worker's model {spec!r} is not the store's {identity.get('model')!r}")
        self.staging, self.text = Path(staging), text

    def __call__(self, batch: dict) -> dict:
        from pixdex.scale.shards import write_shard

        n = len(batch["item"])
        metas = [json.loads(m) for m in batch["meta"]]
        vecs: list[Optional[np.ndarray]] = [None] * n
        idx = np.flatnonzero(batch["has_pixels"])
        if len(idx):
            for k, v in zip(idx, self.enc.encode_images(np.ascontiguousarray(batch["pixels"][idx]))):
                vecs[k] = v
        encoded = len(idx)
        texts = None
        if self.text:
            texts = [None] * n
            todo = [k for k, m in enumerate(metas) if m.get("caption") is not None]
            if todo:
                for k, v in zip(todo, self.enc.encode_texts([metas[k]["caption"] for k in todo])):
                    texts[k] = v
            encoded += len(todo)
        items = [str(i) for i in batch["item"]]
        path = write_shard(self.staging, items, metas, vecs, self.identity, encoded, texts)
        return {
            "shard": np.array([str(path)], dtype=object),
            "rows": np.array([n]),
            "encoded": np.array([encoded]),
        }

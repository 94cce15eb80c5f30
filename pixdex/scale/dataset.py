"""``pixdex dataset dedup --ray ADDRESS``: the embedding pass of a dataset on a Ray cluster.

:func:`embed_rows_ray` returns what :func:`pixdex.dataset.embed.embed_rows` returns, computed by the
pipeline of :mod:`pixdex.scale.pipeline`: decode tasks read and hash every row's image (a file, or the
bytes of a webdataset member / parquet cell) and decode only content the embedding store has not
settled; the actors embed new images and the captions the store lacks (each caption text is sent
once) and write shards; the driver adds each shard to the embedding store (one transaction) and
deletes it, then reads the vectors back per row as the plain pass does (``gather_embedded``).

Resume: the store is keyed by content, so a rerun first adds the shards a killed run left, then reads
and hashes every row again and encodes only what the store still lacks. Unlike the plain pass, two
rows with the same new image bytes in one run may both be encoded (the driver learns hashes from the
workers); the store keeps one vector.

Memory: the driver holds each row's key, caption and hashes (as the plain pass does); image bytes of
a webdataset or parquet dataset are handed to Ray's object store up front.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

from pixdex.errors import PixdexError
from pixdex.scale import connect
from pixdex.scale.pipeline import run_pipeline
from pixdex.scale.shards import Shard, iter_shards, read_shard, staging_dir
from pixdex.scale.workers import loaded_of

log = logging.getLogger(__name__)


def _add(store, shard: Shard) -> list[tuple[int, str | None, str | None]]:
    """Add a shard's vectors, decode errors and copy hashes to the embedding store (one transaction);
    return ``(row index, content hash or None, read error or None)`` per row."""
    images, captions, copies, out = [], [], [], []
    for k, item in enumerate(shard.items):
        m = shard.metas[k]
        res = loaded_of(m, shard.vector(k))
        h = res.content_hash
        if h is not None:
            if res.vector is not None:
                images.append((h, res.vector, None))
            elif m.get("error"):
                images.append((h, None, m["error"]))
            if res.copy_hash is not None or (m.get("info") and not m.get("error")):
                copies.append((h, res.copy_hash))
        tv = shard.text_vector(k)
        if tv is not None:
            captions.append((m["text_hash"], tv))
        out.append((int(item), h, None if h is not None else (m.get("error") or "cannot be read")))
    store.add(images=images, captions=captions, copies=copies)
    return out


def embed_rows_ray(rows: Iterable, store, model, address: str, progress=None):
    """The :class:`pixdex.dataset.embed.Embedded` of ``rows`` (see the module doc)."""
    from pixdex.dataset.embed import gather_embedded
    from pixdex.dataset.store import caption_hash
    from pixdex.indexer.pipeline import copy_hashes_enabled

    ray = connect(address)
    if store.identity is None:
        model.get()  # a new store is bound by loading the model
    identity = store.identity
    staging = staging_dir(store.dir)
    counts = {"images_encoded": 0, "captions_encoded": 0, "copy_hashed": 0, "ray_resumed_shards": 0}
    for path, shard in iter_shards(staging, identity):
        _add(store, shard)
        path.unlink(missing_ok=True)
        counts["ray_resumed_shards"] += 1
    known_images = store.known_images()
    settled = store.settled_images() if copy_hashes_enabled() else known_images
    queued = store.known_captions()
    keys, captions, names, text_hashes, items = [], [], [], [], []
    for row in rows:
        th = caption_hash(row.caption)
        extra = {"text_hash": th, "caption": None}
        if th not in queued:  # each caption text the store lacks is encoded once
            queued.add(th)
            extra["caption"] = row.caption
        is_path = isinstance(row.image, Path)
        items.append(
            {
                "item": str(len(keys)),
                "path": str(row.image) if is_path else "",
                "data": None if is_path else bytes(row.image),
                "extra": json.dumps(extra),
            }
        )
        keys.append(row.key)
        captions.append(row.caption)
        names.append(row.image_name or (str(row.image) if is_path else ""))
        text_hashes.append(th)
    image_hashes: list[str | None] = [None] * len(keys)
    errors: dict[int, str] = {}
    seen = 0
    if items:
        shards = run_pipeline(
            ray,
            items,
            identity,
            model.spec,
            model.checkpoint,
            model.device,
            staging,
            settled,
            vectors_known=known_images,
            text=True,
            summary=counts,
        )
        for path in shards:
            shard = read_shard(path, identity)
            with model.timings("commit"):
                results = _add(store, shard)
            path.unlink(missing_ok=True)
            for k, m in enumerate(shard.metas):
                if shard.vector(k) is not None:
                    counts["images_encoded"] += 1
                elif m.get("copy") and m.get("content_hash") in known_images:
                    counts["copy_hashed"] += 1
                if shard.text_vector(k) is not None:
                    counts["captions_encoded"] += 1
            for i, h, error in results:
                image_hashes[i] = h
                if error is not None:
                    errors[i] = error
            seen += len(results)
            if progress is not None:
                progress.advance(len(results))
    if seen < len(keys):
        raise PixdexError(f"Ray returned no result for {len(keys) - seen} rows; run the command again")
    return gather_embedded(store, model, keys, captions, names, image_hashes, text_hashes, errors, counts)

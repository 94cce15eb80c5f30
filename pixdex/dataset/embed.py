"""Image and caption vectors of a dataset's rows, through the embedding store (computed once, ever).

One streaming pass over the rows (:meth:`pixdex.dataset.readers.Dataset.rows`), the way ``pixdex index``
reads files: worker threads (:func:`pixdex.indexer.pipeline.ordered_map`, bounded look-ahead) read each
image (a path relative to the manifest, or the bytes of a webdataset member / parquet cell), hash it,
and decode + preprocess it only when its hash is not settled in the store (``decode_pixels``, the
indexer's decode path, at the model's draft size, which also gives the copy tier's perceptual hashes at
``perceptual.HASH_DRAFT`` when ``copy_hashes_enabled()``). The main thread encodes the new images in batches of
``batch_size`` and the new caption texts in batches of ``max(batch_size, CAPTION_BATCH)``, and commits
each batch to the store before going on, so a killed run loses at most one batch. Each distinct image content and each distinct caption text is encoded once.
An image's copy hashes are committed with its vector; an image already in the store without them (a
store made before them) is decoded for them and not re-encoded (``counts["copy_hashed"]``).

The encoder is loaded only when something must be encoded (or the store is new): a run whose images
and captions are all in the store loads no model, and its workers only read and hash.

Memory: per row its key, caption and two hashes, then the ``(n, d)`` float32 image and caption vectors,
read back from the store at the end (one vector per distinct content, gathered per row), and the copy
hashes once per distinct image content (``COPY_ROWS`` x 32 bytes each).

An image that cannot be read or decoded makes its row *unreadable*: ``Embedded.errors[row]`` says why
(and the decode error of its bytes is kept in the store); such rows get a zero image vector.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pixdex.dataset.readers import DatasetRow
from pixdex.dataset.store import EmbeddingStore, caption_hash
from pixdex.dedup import perceptual
from pixdex.errors import PixdexError
from pixdex.images import content_hash
from pixdex.indexer.binding import LazyPreprocess
from pixdex.indexer.pipeline import (
    DecodeGate,
    Loaded,
    copy_hashes_enabled,
    decode_pixels,
    default_workers,
    load_candidate,
    ordered_map,
)
from pixdex.indexer.report import Progress, Timings

log = logging.getLogger(__name__)

CAPTION_BATCH = 128  # captions are encoded in batches of max(batch_size, this): text batches are cheap
COPY_COMMIT = 256  # copy hashes of images already encoded (a store made before them): rows per commit


class LazyModel:
    """The encoder of a run, loaded on first use and checked against (or bound to) the store's model.

    Model choice, as ``pixdex index`` does it: a new store takes ``model`` (default the registry's
    ``DEFAULT_MODEL``) and loads it at once, so an unknown model fails before any work; a bound store
    with no ``model`` (or the same spec) and no ``checkpoint`` reuses its model and loads it only when
    something must be encoded; another model on a bound store loads now and fails with one line when
    its identity differs.
    ``loader(spec, checkpoint, device, towers) -> Encoder`` replaces ``load_encoder`` (tests).
    """

    def __init__(
        self,
        store: EmbeddingStore,
        model: str | None,
        checkpoint: str | Path | None,
        device: str = "auto",
        loader: Callable | None = None,
        timings: Timings | None = None,
    ):
        from pixdex.encoders.registry import DEFAULT_MODEL

        self.store, self.device, self._loader = store, device, loader
        self.timings = timings or Timings()
        self._enc = None
        self._pre = None
        bound = store.identity
        self.checkpoint = str(Path(checkpoint).expanduser()) if checkpoint is not None else None
        if bound is None:
            self.spec, load_now = model or DEFAULT_MODEL, True
        elif (model is None or model == bound.get("model")) and checkpoint is None:
            self.spec, self.checkpoint, load_now = bound["model"], bound.get("checkpoint"), False
        else:
            self.spec, load_now = model or bound["model"], True
        self.bound = bound
        if load_now:
            self.get()

    @property
    def loaded(self) -> bool:
        return self._enc is not None

    def get(self):
        if self._enc is None:
            with self.timings("load_model"):
                if self._loader is not None:
                    enc = self._loader(self.spec, self.checkpoint, self.device, ("image", "text"))
                else:
                    from pixdex.encoders.encoder import load_encoder

                    enc = load_encoder(self.spec, checkpoint=self.checkpoint, device=self.device)
                from pixdex.indexer.binding import maybe_speed_up

                maybe_speed_up(enc)
                self.store.bind(enc.identity())
                self._enc = enc
        return self._enc

    @property
    def dim(self) -> int:
        ident = self.store.identity
        return int(ident["dim"]) if ident else int(self.get().dim)

    def preprocessor(self):
        """The preprocessing; on a bound store rebuilt from its identity, without loading the model."""
        if self._pre is None:
            if self._enc is not None:
                self._pre = self._enc.preprocess
            else:
                from pixdex.indexer.binding import preprocessor_of

                self._pre = preprocessor_of(self.store) or self.get().preprocess
        return self._pre


@dataclass
class Embedded:
    """The rows of one pass, in reading order, with their vectors."""

    keys: list[str]
    captions: list[str]
    image_names: list[str]  # the image as written in the row (or the shard member), for reports
    image_hashes: list[str | None]  # None: the image could not be read
    image_vectors: np.ndarray  # (n, d); zero rows for unreadable images
    caption_vectors: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)  # row -> why its image is unreadable
    counts: dict = field(default_factory=dict)
    # the copy tier: perceptual hashes per distinct image content that has them (store.copy_hashes)
    copy_hashes: dict[str, perceptual.CopyHash] = field(default_factory=dict)  # (rows, quality)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def readable(self) -> np.ndarray:
        ok = np.ones(len(self.keys), bool)
        ok[list(self.errors)] = False
        return ok


def embed_rows(
    rows: Iterable[DatasetRow],
    store: EmbeddingStore,
    model: LazyModel,
    batch_size: int = 32,
    workers: int = 0,
    progress: Progress | None = None,
) -> Embedded:
    """Vectors for every row of ``rows`` (see the module doc); encodes only what the store lacks."""
    from pixdex.threads import cpu_threads, uses_all_cores

    if batch_size < 1:
        raise PixdexError("--batch-size must be at least 1")
    nworkers = workers if workers and workers > 0 else default_workers()
    timings = model.timings
    progress = progress or Progress(0, quiet=True)
    known_images = store.known_images()
    hashing = copy_hashes_enabled()
    # what the workers need not decode: with copy hashing, images with a vector but no hashes are decoded
    settled = store.settled_images() if hashing else known_images
    known_captions = store.known_captions()
    pre = LazyPreprocess(model)
    gate = DecodeGate()
    gating = os.environ.get("PIXDEX_DECODE_GATE", "auto") != "0"

    def work(row: DatasetRow) -> Loaded:
        if isinstance(row.image, Path):
            return load_candidate(str(row.image), pre, settled, gate=gate)
        h = content_hash(row.image)
        if h in settled:
            return Loaded(content_hash=h, known=True)
        gate.wait()
        return decode_pixels(row.image, h, row.image_name, pre)

    keys: list[str] = []
    captions: list[str] = []
    names: list[str] = []
    image_hashes: list[str | None] = []
    text_hashes: list[str] = []
    errors: dict[int, str] = {}
    pending_images: dict[str, np.ndarray] = {}
    pending_failed: dict[str, str] = {}
    pending_captions: dict[str, str] = {}
    pending_copies: dict[str, perceptual.CopyHash | None] = {}  # None: hashing failed (a marker)
    counts = {"images_encoded": 0, "captions_encoded": 0, "copy_hashed": 0}

    def flush_images() -> None:
        if not pending_images and not pending_failed and not pending_copies:
            return
        rows_out = [(h, None, e) for h, e in pending_failed.items()]
        if pending_images:
            enc = model.get()
            batch = np.stack(list(pending_images.values()))
            with (
                cpu_threads(enc) as nthreads,
                gate.closed(gating and uses_all_cores(enc, nthreads)),
                timings("encode_images"),
            ):
                vecs = enc.encode_images(batch)
            rows_out += [(h, v, None) for h, v in zip(pending_images, vecs)]
            counts["images_encoded"] += len(pending_images)
        counts["copy_hashed"] += sum(1 for h in pending_copies if h in known_images)
        with timings("commit"):
            store.add(images=rows_out, copies=pending_copies.items())
        known_images.update(h for h, _, _ in rows_out)
        if settled is not known_images:
            settled.update(pending_copies)
            settled.update(pending_failed)
        pending_images.clear()
        pending_failed.clear()
        pending_copies.clear()

    def flush_captions() -> None:
        if not pending_captions:
            return
        enc = model.get()
        with gate.closed(gating and uses_all_cores(enc, None)), timings("encode_captions"):
            vecs = enc.encode_texts(list(pending_captions.values()))
        with timings("commit"):
            store.add(captions=zip(pending_captions, vecs))
        counts["captions_encoded"] += len(pending_captions)
        known_captions.update(pending_captions)
        pending_captions.clear()

    lookahead = 2 * batch_size + 2 * nworkers
    for row, res in timings.waiting(ordered_map(work, rows, nworkers, lookahead), "read_decode"):
        i = len(keys)
        keys.append(row.key)
        captions.append(row.caption)
        names.append(row.image_name or (str(row.image) if isinstance(row.image, Path) else ""))
        th = caption_hash(row.caption)
        text_hashes.append(th)
        if th not in known_captions and th not in pending_captions:
            pending_captions[th] = row.caption
        h = res.content_hash
        image_hashes.append(h)
        if h is not None and hashing and res.ok and h not in pending_copies and h not in settled:
            pending_copies[h] = res.copy_hash
        if h is None:
            errors[i] = res.error or "cannot be read"
        elif h not in known_images and h not in pending_images and h not in pending_failed:
            if res.ok:
                pending_images[h] = res.pixels
            elif res.known:  # known when the worker looked; cannot happen otherwise
                pass
            else:
                pending_failed[h] = res.error or "cannot be decoded"
        if len(pending_images) >= batch_size or len(pending_copies) >= COPY_COMMIT:
            flush_images()
        if len(pending_captions) >= max(batch_size, CAPTION_BATCH):
            flush_captions()
        progress.advance()
    flush_images()
    flush_captions()

    return gather_embedded(store, model, keys, captions, names, image_hashes, text_hashes, errors, counts)


def gather_embedded(
    store: EmbeddingStore,
    model: LazyModel,
    keys: list[str],
    captions: list[str],
    names: list[str],
    image_hashes: list[str | None],
    text_hashes: list[str],
    errors: dict[int, str],
    counts: dict,
) -> Embedded:
    """The :class:`Embedded` of rows whose vectors are all in the store (read back per distinct hash);
    also used by the Ray path (:mod:`pixdex.scale.dataset`)."""
    with model.timings("read_vectors"):
        dim = model.dim
        img_vecs, cap_vecs = _gather(store, image_hashes, text_hashes, dim, errors)
        copies = store.copy_hashes(sorted({h for r, h in enumerate(image_hashes) if h and r not in errors}))
    counts.update(
        rows=len(keys),
        images=len({h for h in image_hashes if h is not None}),
        captions=len(set(text_hashes)),
        unreadable=len(errors),
        images_with_copy_hashes=len(copies),
    )
    return Embedded(keys, captions, names, image_hashes, img_vecs, cap_vecs, errors, counts, copies)


def _gather(store: EmbeddingStore, image_hashes, text_hashes, dim: int, errors: dict[int, str]):
    """The per-row vectors from the store: one read per distinct hash, then gathered."""
    uniq: dict[str, int] = {}
    idx = np.array([uniq.setdefault(h, len(uniq)) if h is not None else -1 for h in image_hashes], np.int64)
    vecs, bad = store.image_vectors(list(uniq), dim)
    img = vecs[np.maximum(idx, 0)] if len(uniq) else np.zeros((len(idx), dim), np.float32)
    img[idx < 0] = 0.0
    if bad:
        bad_units = np.zeros(len(uniq), bool)
        bad_units[list(bad)] = True
        for r in np.flatnonzero((idx >= 0) & bad_units[np.maximum(idx, 0)]):
            errors[int(r)] = bad[int(idx[r])]
    tuniq: dict[str, int] = {}
    tidx = np.array([tuniq.setdefault(h, len(tuniq)) for h in text_hashes], np.int64)
    cap = store.caption_vectors(list(tuniq), dim)[tidx] if len(tidx) else np.zeros((0, dim), np.float32)
    return img, cap

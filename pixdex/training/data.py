"""Training data: manifest rows -> resized images + token ids, split, shuffled and batched.

Images are decoded by :mod:`pixdex.images` exactly as the indexer decodes them (same draft size, EXIF
orientation, alpha on white) and resized/cropped by the model's own numpy ``Preprocessor``; the resized uint8 pixels are kept in memory when they fit in ``cache_bytes`` (the demo
set easily does), otherwise decoded again per batch by a thread pool. Captions are tokenised once with
the model's tokenizer. Rows naming the same image are that image's alternative captions (COCO-style):
the image is one training item, split as a whole (nothing of a held-out image is trained on), and each
epoch uses one of its captions, drawn at random; held-out recall uses each image's first caption. The
split, every epoch's order and its caption draws depend only on the seed (and the epoch), so a resumed
run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np

from pixdex.errors import PixdexError
from pixdex.training.manifest import Sample

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 2 << 30


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)`` row indices; deterministic in ``seed``. Validation gets ``round(n * fraction)``
    rows (at least 2 when the fraction is positive and the set allows it), training keeps at least 2."""
    if not 0.0 <= val_fraction < 1.0:
        raise PixdexError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if n < 2:
        raise PixdexError(f"need at least 2 training rows, the manifest has {n}")
    perm = np.random.default_rng([seed, 7919]).permutation(n)
    n_val = max(int(round(n * val_fraction)), 2) if val_fraction > 0 else 0
    n_val = min(n_val, n - 2)
    if n_val < 2:  # one held-out pair measures nothing
        n_val = 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def group_by_image(samples: Sequence[Sample]) -> tuple[list[Sample], list[np.ndarray]]:
    """``(one sample per distinct image, in first-row order; per image the indices of its rows)``."""
    first: dict = {}
    rows: list[list[int]] = []
    for i, s in enumerate(samples):
        k = first.setdefault(s.path, len(rows))
        if k == len(rows):
            rows.append([])
        rows[k].append(i)
    return [samples[r[0]] for r in rows], [np.asarray(r, dtype=np.int64) for r in rows]


def caption_draw(caption_rows: Sequence[np.ndarray], seed: int, epoch: int) -> np.ndarray:
    """The manifest row (caption) each image uses in ``epoch``: uniform among its rows, a pure function
    of seed and epoch."""
    counts = np.asarray([len(r) for r in caption_rows], dtype=np.int64)
    pick = np.minimum(
        (np.random.default_rng([seed, epoch, 15485863]).random(len(counts)) * counts).astype(np.int64),
        counts - 1,
    )
    return np.asarray([r[k] for r, k in zip(caption_rows, pick)], dtype=np.int64)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of ``n`` training rows in ``epoch`` (a pure function of seed and epoch)."""
    return np.random.default_rng([seed, epoch, 104729]).permutation(n)


class ImageSource:
    """Resized uint8 ``(S, S, 3)`` pixels of the manifest's images, cached or decoded on demand."""

    def __init__(
        self,
        samples: Sequence[Sample],
        preprocessor,
        workers: int = 2,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        progress: Optional[Callable[[int], None]] = None,
    ):
        self.samples = list(samples)
        self.pre = preprocessor
        self.size = int(preprocessor.image_size)
        self.workers = max(1, int(workers))
        self._pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None
        need = len(self.samples) * self.size * self.size * 3
        self.cached: Optional[np.ndarray] = None
        if need <= cache_bytes:
            self.cached = np.empty((len(self.samples), self.size, self.size, 3), dtype=np.uint8)
            step = 256
            for start in range(0, len(self.samples), step):
                idx = list(range(start, min(start + step, len(self.samples))))
                for i, arr in zip(idx, self._map(self._load, idx)):
                    self.cached[i] = arr
                if progress is not None:
                    progress(len(idx))
            log.info("cached %d images (%.1f MB)", len(self.samples), need / 1e6)
        else:
            log.info(
                "%d images need %.0f MB, more than the cache limit: decoding per batch",
                len(self.samples),
                need / 1e6,
            )

    def _map(self, fn, items):
        return list(self._pool.map(fn, items)) if self._pool is not None else [fn(i) for i in items]

    def _load(self, i: int) -> np.ndarray:
        from pixdex.images import DecodeError, load_for_model

        s = self.samples[i]
        try:
            arr = np.asarray(self.pre.resize(load_for_model(s.path, self.pre)), dtype=np.uint8)
        except (DecodeError, OSError, ValueError) as e:
            raise PixdexError(f"manifest row {s.row}: cannot decode image {s.path}: {e}") from e
        if arr.shape != (self.size, self.size, 3):
            raise PixdexError(f"manifest row {s.row}: image {s.path} gave pixels of shape {arr.shape}")
        return arr

    def pixels(self, indices: Sequence[int]) -> np.ndarray:
        if self.cached is not None:
            return self.cached[np.asarray(indices, dtype=np.int64)]
        return np.stack(self._map(self._load, list(indices)))

    def batch(self, indices: Sequence[int]) -> np.ndarray:
        """Normalised float32 ``(N, 3, S, S)`` through the Preprocessor's own normalisation."""
        return np.stack([self.pre.normalize(a) for a in self.pixels(indices)])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def tokenize_captions(tokenizer, captions: list[str], context_length: int) -> np.ndarray:
    """Token ids ``(N, ctx)`` int64; warns once about captions cut at the context length."""
    ids = np.asarray(tokenizer(captions), dtype=np.int64)
    if ids.shape != (len(captions), context_length):
        raise PixdexError(
            f"tokenizer gave ids of shape {ids.shape}, expected ({len(captions)}, {context_length})"
        )
    full = int((ids[:, -1] != 0).sum())
    if full:
        log.warning(
            "%d of %d captions fill the %d-token context (long ones are cut)",
            full,
            len(captions),
            context_length,
        )
    return ids


def micro_batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Full micro-batches of ``order`` (the remainder is dropped: contrastive losses want full batches)."""
    b = min(batch_size, len(order))
    return [order[i : i + b] for i in range(0, len(order) - b + 1, b)]

"""Read, hash, decode and preprocess files in worker threads, ahead of the encoder.

:func:`ordered_map` runs a function over items in a thread pool with a bounded look-ahead: at most
``lookahead`` items are in flight or finished-but-unconsumed, results come back in input order. Pillow,
hashlib and file reads release the GIL, so decoding the next batches overlaps with the encoder (which
runs torch in the consumer's thread). Bounded, so memory stays flat however large the folder.

:func:`load_candidate` is the per-file work: read the bytes once, hash them, and skip decoding when the
content is already known to the store (a moved or copied file reuses its vector). A decoded file also
gets its perceptual hashes for dedup's copy tier (:func:`copy_hash_of`), from the image decoded at
``perceptual.HASH_DRAFT`` whatever the model's size (one decode when both fall on the same JPEG scale).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, TypeVar

import numpy as np

from pixdex.dedup import perceptual
from pixdex.images import DecodeError, ImageInfo, content_hash, decode_many, draft_side, read_file, reason_of

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def copy_hashes_enabled() -> bool:
    """Whether indexing computes perceptual hashes (``PIXDEX_COPY_HASHES=0`` turns them off, and the
    backfill pass with them: tests use it to make a store as a pixdex without copy hashes did)."""
    return os.environ.get("PIXDEX_COPY_HASHES", "1") != "0"


def copy_hash_of(img) -> Optional[perceptual.CopyHash]:
    """``perceptual.copy_hash_array`` of an image decoded at ``perceptual.HASH_DRAFT``, or None (logged)
    if hashing fails: the file is still indexed and the backfill pass will try again."""
    try:
        return perceptual.copy_hash_array(img)
    except (ValueError, OSError, MemoryError) as e:
        log.warning("cannot compute the perceptual hash: %s", str(e).splitlines()[0][:160])
        return None


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask, e.g. a container's CPU set), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_workers() -> int:
    """Decode workers when not given: one per usable core (no cap: on a GPU machine decoding is the
    bottleneck, and 12 MP JPEGs need every core; on CPU the :class:`DecodeGate` keeps decoding out of
    the encoder's way)."""
    return usable_cpus()


class ThreadWorkers:
    """The default executor of :func:`ordered_map`: a thread pool."""

    def __init__(self, workers: int):
        self.pool = ThreadPoolExecutor(max_workers=max(1, int(workers)), thread_name_prefix="pixdex-decode")

    def submit(self, fn: Callable[[T], R], item: T) -> Future:
        return self.pool.submit(fn, item)

    def result(self, fut: Future, fn: Callable[[T], R], item: T) -> R:
        return fut.result()

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    lookahead: int,
    executor=None,
) -> Iterator[tuple[T, R]]:
    """Yield ``(item, fn(item))`` in input order, computing at most ``lookahead`` results ahead.

    ``fn`` must not raise (return errors as values). Stopping the iteration early cancels queued work.
    ``executor``: ``submit(fn, item) -> Future``, ``result(future, fn, item)`` and ``shutdown()``
    (default: :class:`ThreadWorkers` of ``workers`` threads; :class:`pixdex.indexer.procpool.ProcessDecoder`
    for worker processes). An item's result is yielded before the next item is submitted.
    """
    lookahead = max(max(1, int(workers)), int(lookahead))
    it = iter(items)
    pending: collections.deque[tuple[T, Future]] = collections.deque()
    pool = executor if executor is not None else ThreadWorkers(workers)
    try:
        for item in it:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= lookahead:
                first, fut = pending.popleft()
                yield first, pool.result(fut, fn, first)
        while pending:
            first, fut = pending.popleft()
            yield first, pool.result(fut, fn, first)
    finally:
        for _, fut in pending:
            fut.cancel()
        pool.shutdown()


@dataclass
class Loaded:
    """The outcome of loading one file."""

    content_hash: Optional[str] = None
    # uint8 (S, S, 3) resized pixels (Preprocessor.pixels), or float32 (3, S, S) from a preprocessing
    # without ``pixels``; Encoder.encode_images takes a stack of either
    pixels: Optional[np.ndarray] = None
    info: Optional[ImageInfo] = None
    error: Optional[str] = None  # why it failed (then pixels is None)
    known: bool = False  # content already in the store: not decoded
    copy_hash: Optional[perceptual.CopyHash] = None  # (rows, quality), when decoded
    slot: Optional[int] = None  # worker processes: the shared-memory slot holding the pixels
    vector: Optional[np.ndarray] = None  # the embedding, when encoded elsewhere (pixdex.scale's actors)

    @property
    def ok(self) -> bool:
        return self.pixels is not None or self.vector is not None


class DecodeGate:
    """Lets decoding run only while the encoder is not using every core.

    On a CPU whose cores all run torch's threads, decoding at the same time does not overlap for free:
    a busy core makes each of torch's parallel regions wait for its slowest thread. So the encoder
    closes the gate while it runs; workers still read and hash files meanwhile (I/O), and decode the
    next batch on all cores in between. With a GPU (or spare cores) the gate stays open.
    """

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()

    def wait(self) -> None:
        self._open.wait()

    @contextlib.contextmanager
    def closed(self, really: bool = True) -> Iterator[None]:
        if not really:
            yield
            return
        try:  # clear inside the try: a Ctrl-C between the two must not leave the workers waiting
            self._open.clear()
            yield
        finally:
            self._open.set()


def load_candidate(
    path: str,
    preprocess: Callable,
    known_hashes: Collection[str] = (),
    decode_known: bool = False,
    gate: Optional[DecodeGate] = None,
) -> Loaded:
    """Read + hash ``path``; unless its hash is in ``known_hashes``, decode and preprocess it.

    Never raises (a file's failure is that file's, never the run's): whatever goes wrong is the
    ``error`` of the result, one line, never empty.
    """
    try:
        data = read_file(path)
    except DecodeError as e:
        return Loaded(error=reason_of(e))
    except Exception as e:  # noqa: BLE001 - one file must not end the run, whatever it raises
        log.debug("reading %s failed", path, exc_info=True)
        return Loaded(error=f"cannot read the file: {reason_of(e)}")
    h = content_hash(data)
    if h in known_hashes and not decode_known:
        return Loaded(content_hash=h, known=True)
    if gate is not None:
        gate.wait()
    return decode_pixels(data, h, path, preprocess)


def model_pixels(preprocess: Callable, img) -> np.ndarray:
    """What the encoder is fed for ``img``: ``preprocess.pixels(img)`` (uint8, normalised on the
    encoder's device) when the preprocessing has it, else ``preprocess(img)`` as float32."""
    pixels = getattr(preprocess, "pixels", None)
    out = np.asarray(pixels(img) if pixels is not None else preprocess(img))
    return out if out.dtype == np.uint8 else out.astype(np.float32, copy=False)


def decode_pixels(data: bytes, h: str, path: str, preprocess: Callable) -> Loaded:
    """Decode and preprocess ``data``; never raises (see :func:`load_candidate`)."""
    hashing = copy_hashes_enabled()
    drafts = (draft_side(preprocess), perceptual.HASH_DRAFT) if hashing else (draft_side(preprocess),)
    try:
        images, info = decode_many(data, drafts, name=path)
    except DecodeError as e:
        return Loaded(content_hash=h, error=reason_of(e))
    except Exception as e:  # noqa: BLE001 - a decoder bug on a hostile file fails that file only
        log.debug("decoding %s failed", path, exc_info=True)
        return Loaded(content_hash=h, error=f"cannot decode: {reason_of(e)}")
    img = images[0]
    try:
        copy_hash = copy_hash_of(images[1]) if hashing else None
        pixels = model_pixels(preprocess, img)
    except DecodeError as e:
        return Loaded(content_hash=h, info=info, error=reason_of(e))
    except Exception as e:  # noqa: BLE001 - OverflowError, MemoryError (empty message), ...
        log.debug("preprocessing %s failed", path, exc_info=True)
        return Loaded(content_hash=h, info=info, error=f"preprocessing failed: {reason_of(e)}")
    return Loaded(content_hash=h, pixels=pixels, info=info, copy_hash=copy_hash)

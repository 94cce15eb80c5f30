"""The backfill pass of ``pixdex index``: perceptual hashes for rows that have none yet.

A store made before the ``copy_hashes`` table (or whose hashes are of an older
``perceptual.COPY_VERSION``) gets them on its next index run, without re-encoding anything and without
loading the model: after the files pass, every ``ok`` row lacking current hashes has its file read in
the worker threads, its bytes checked against the row's content hash, decoded at
``perceptual.HASH_DRAFT`` and hashed; hashes are committed every :data:`BACKFILL_COMMIT` rows in one
transaction each. A kill at any moment loses at most the batch in flight: the next run selects the rows
still lacking hashes and goes on. Only those rows' files are read (an up-to-date store reads none).

- A file whose bytes no longer match its row (changed or gone since it was indexed, e.g. under a root
  not scanned by this run) is skipped, not marked: it is re-indexed with its hashes when its root is.
- A file that matches but cannot be decoded (it was decoded once, so: a decoder change, a missing
  HEIC plugin) keeps its vector and gets a NULL marker row, so it is not retried on every run; a
  changed file gets a new row anyway. It is logged once per run (a warning with the count).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from pixdex.dedup import perceptual
from pixdex.images import DecodeError, content_hash, decode_many, read_file
from pixdex.indexer.pipeline import DecodeGate, copy_hash_of, ordered_map
from pixdex.storage.store import Store
from pixdex.storage.writes import missing_copy_hashes, write_copy_hashes

log = logging.getLogger(__name__)

BACKFILL_COMMIT = 256  # rows per transaction (PIXDEX_BACKFILL_COMMIT overrides it: tests)


@dataclass
class Hashed:
    hashes: Optional[perceptual.CopyHash] = None  # (rows (COPY_ROWS, 32) uint8, quality)
    error: Optional[str] = None  # could not be decoded or hashed: recorded as unhashable
    skipped: Optional[str] = None  # the file changed or vanished: left for a later run


def hash_file(path: str, expected_hash: Optional[str], gate: Optional[DecodeGate] = None) -> Hashed:
    """Read ``path``; if its bytes are still those of its row, decode at HASH_DRAFT and hash them."""
    try:
        data = read_file(path)
    except DecodeError as e:
        return Hashed(skipped=str(e))
    if expected_hash is not None and content_hash(data) != expected_hash:
        return Hashed(skipped="changed since it was indexed")
    if gate is not None:
        gate.wait()
    try:
        (img,), _ = decode_many(data, (perceptual.HASH_DRAFT,), name=path)
    except DecodeError as e:
        return Hashed(error=str(e))
    h = copy_hash_of(img)
    return Hashed(hashes=h) if h is not None else Hashed(error="perceptual hash failed")


def backfill_copy_hashes(
    store: Store,
    workers: int,
    progress_factory: Callable[[int], object],
    commit_every: Optional[int] = None,
) -> dict[str, int]:
    """Hash every ``ok`` row lacking current copy hashes; returns ``{"hashed_copy", "copy_unhashable",
    "copy_skipped"}`` counts. ``progress_factory(total)`` makes a progress bar (``advance``, ``close``)."""
    if commit_every is None:
        commit_every = int(os.environ.get("PIXDEX_BACKFILL_COMMIT", "0") or 0) or BACKFILL_COMMIT
    todo = missing_copy_hashes(store)
    counts = {"hashed_copy": 0, "copy_unhashable": 0, "copy_skipped": 0}
    if not todo:
        return counts
    log.info("computing perceptual hashes of %d indexed images that have none yet", len(todo))
    progress = progress_factory(len(todo))
    pending: list[tuple[int, Optional[perceptual.CopyHash]]] = []
    errors: list[tuple[str, str]] = []

    def flush() -> None:
        write_copy_hashes(store, pending)
        pending.clear()

    try:
        work = lambda row: hash_file(row[1], row[2])  # noqa: E731
        for (image_id, path, _), res in ordered_map(work, todo, workers, 4 * max(1, workers)):
            if res.skipped is not None:
                counts["copy_skipped"] += 1
                log.debug("not hashing %s: %s", path, res.skipped)
            else:
                pending.append((image_id, res.hashes))
                if res.hashes is None:
                    counts["copy_unhashable"] += 1
                    errors.append((path, res.error or "unknown error"))
                else:
                    counts["hashed_copy"] += 1
                if len(pending) >= commit_every:
                    flush()
            progress.advance()
        flush()
    finally:
        progress.close()
    if errors:
        log.warning(
            "%d indexed images could not be decoded for their perceptual hash (kept, not retried; "
            "the copy tier of pixdex dedup skips them), e.g. %s: %s",
            len(errors),
            *errors[0],
        )
    return counts

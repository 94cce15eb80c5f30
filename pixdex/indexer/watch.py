"""``pixdex watch``: keep a store current while its folders change, until stopped.

The watch adds no rule of its own. Each debounced batch of file-system events runs the ordinary
incremental index (:func:`pixdex.indexer.run.index_paths`) over the same roots, so scanning, exclusions,
failed files, moves (a renamed file keeps its row, id and vector: it is matched by content hash and not
re-encoded), deletes, the store lock and the FAISS index all follow the one code path of ``pixdex
index``. The events only say *when* to run; the index run decides *what* changed.

- The file watcher starts before the catch-up run (the index run over the roots at start), so nothing
  that changes while the catch-up runs is missed: its events wait for the first batch.
- Events are debounced by ``watchfiles``: a batch is taken after ``quiet_s`` without a new event, or
  at the latest ``max_wait_s`` after the first one (a long copy is indexed as it goes).
- The model is loaded at most once per session (:class:`ModelOnce`), and only when a batch has
  something to encode, as in ``pixdex index``.
- The store's lock is taken per run, as ``pixdex index`` takes it: another indexer running at start is
  the usual "locked" error (exit 3); one running when a batch is due delays that batch (retried every
  ``retry_s``), it does not end the watch. Other errors of a batch are reported and the batch is
  retried at the next event.
- Events inside the store folder (a store kept inside a watched root) are ignored: the watch's own
  writes must not wake it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pixdex.errors import ExitCode, PixdexError

log = logging.getLogger(__name__)

QUIET_S = 1.0  # a batch is taken after this long without a new event
MAX_WAIT_S = 10.0  # ... or this long after its first event, whatever comes first
RETRY_S = 5.0  # a batch that found the store locked by another indexer is tried again after this
COUNTED = ("new", "updated", "moved", "deleted", "failed", "encoded")


class ModelOnce:
    """An ``encoder_loader`` for :func:`~pixdex.indexer.run.index_paths` that loads the model at most
    once for a whole watch session: every run asking for the same model gets the same encoder.

    ``loader(spec, checkpoint, device, towers)`` loads it (default: ``load_encoder``); ``loads`` counts
    the real loads. A run that needs a tower the loaded encoder lacks (the text tower, to bind a new
    store or repair its export) loads the model again with both.
    """

    def __init__(self, loader: Optional[Callable] = None):
        self._loader = loader
        self._key: Optional[tuple] = None
        self._towers: frozenset[str] = frozenset()
        self._enc = None
        self.loads = 0

    def __call__(self, spec, checkpoint, device, towers):
        key = (spec, checkpoint, device)
        if self._enc is None or key != self._key or not set(towers) <= self._towers:
            want = tuple(sorted(set(towers) | (self._towers if key == self._key else set())))
            if self._loader is not None:
                self._enc = self._loader(spec, checkpoint, device, want)
            else:
                from pixdex.encoders.encoder import load_encoder

                self._enc = load_encoder(spec, checkpoint=checkpoint, device=device, towers=want)
            self._key, self._towers = key, frozenset(want)
            self.loads += 1
        return self._enc


@dataclass
class WatchTotals:
    """What a watch session did after its catch-up run: the index runs that completed (``batches``),
    the sums of their counts, and the runs that failed and were retried (``errors``)."""

    batches: int = 0
    events: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTED, 0))
    total: int = 0  # images in the store after the last run
    errors: int = 0  # runs that ended in an error (retried)
    interrupted: bool = False  # stopped by Ctrl-C
    started: float = field(default_factory=time.monotonic)

    def add(self, summary: dict) -> None:
        for k in COUNTED:
            self.counts[k] += int(summary.get(k) or 0)
        self.total = int(summary.get("total") or 0)

    def as_dict(self) -> dict:
        return {
            "batches": self.batches,
            "events": self.events,
            **self.counts,
            "total": self.total,
            "errors": self.errors,
            "interrupted": self.interrupted,
            "elapsed_s": round(time.monotonic() - self.started, 3),
        }


def changed(summary: dict) -> bool:
    """Whether an index run changed anything worth a line (a run over unchanged files did not)."""
    return any(int(summary.get(k) or 0) for k in COUNTED)


def store_filter(store_dir: Path) -> Callable[[object, str], bool]:
    """A ``watchfiles`` filter that drops the events of the store folder (and nothing else)."""
    prefixes = {os.path.abspath(store_dir), os.path.realpath(store_dir)}
    inside = tuple(p.rstrip(os.sep) + os.sep for p in prefixes)

    def keep(_change, path: str) -> bool:
        return path not in prefixes and not path.startswith(inside)

    return keep


def watch_paths(
    paths: Sequence[Path],
    store_dir: Path,
    model: Optional[str] = None,
    checkpoint: Optional[Path] = None,
    device: str = "auto",
    batch_size: int = 0,
    workers: int = 0,
    quiet_s: float = QUIET_S,
    max_wait_s: float = MAX_WAIT_S,
    retry_s: float = RETRY_S,
    stop_event: Optional[threading.Event] = None,
    max_batches: Optional[int] = None,
    on_run: Optional[Callable[[int, Optional[dict], Optional[PixdexError]], None]] = None,
    encoder_loader: Optional[Callable] = None,
    catch_up_quiet: bool = True,
) -> WatchTotals:
    """Index ``paths`` into the store at ``store_dir`` now, then again after each debounced batch of
    changes under them, until ``stop_event`` is set, ``max_batches`` runs (completed or failed) have
    followed the catch-up, or Ctrl-C.

    ``on_run(run, summary, error)`` is called after each index run: run 0 is the catch-up, then 1,
    2, ...; ``summary`` is ``index_paths``' summary with ``events`` (how many file-system events the
    batch gathered) added, or None when the run failed with ``error``. A failed catch-up raises (a
    locked store: exit code 3). ``catch_up_quiet=False`` lets the catch-up print ``pixdex index``'s
    progress and summary. Returns the session's totals; Ctrl-C ends it with ``interrupted`` set.
    """
    import watchfiles

    from pixdex.indexer.run import index_paths
    from pixdex.indexer.scan import normalise_roots

    if quiet_s <= 0 or max_wait_s <= 0:
        raise PixdexError("--debounce must be a positive number of seconds")
    roots = normalise_roots(paths)  # a missing root fails before anything is watched
    store_dir = Path(store_dir).expanduser()
    stop = stop_event or threading.Event()
    loader = ModelOnce(encoder_loader)
    totals = WatchTotals()

    def run(quiet: bool) -> dict:
        return index_paths(
            paths,
            store_dir,
            model=model,
            checkpoint=checkpoint,
            device=device,
            batch_size=batch_size,
            workers=workers,
            json_mode=quiet,
            encoder_loader=loader,
        )

    changes = watchfiles.watch(
        *roots,
        watch_filter=store_filter(store_dir),
        debounce=max(1, int(max(max_wait_s, quiet_s) * 1000)),
        step=max(1, int(quiet_s * 1000)),
        stop_event=stop,
        rust_timeout=max(1, int(min(retry_s, 1.0) * 1000)),
        yield_on_timeout=True,
        raise_interrupt=True,
    )
    try:
        with contextlib.closing(changes):
            next(changes, None)  # the watcher is running now: what changes during the catch-up waits
            summary = run(catch_up_quiet)
            totals.total = int(summary.get("total") or 0)
            if on_run is not None:
                on_run(0, {**summary, "events": 0}, None)
            events, retry_at = 0, None
            for batch_events in changes:
                if stop.is_set():
                    break
                events += len(batch_events)
                totals.events += len(batch_events)
                due = events > 0 and (retry_at is None or time.monotonic() >= retry_at)
                if not due:
                    continue
                runs = totals.batches + totals.errors + 1
                try:
                    summary = run(True)
                except PixdexError as e:
                    totals.errors += 1
                    locked = e.exit_code == ExitCode.LOCKED
                    retry_at = time.monotonic() + retry_s if locked else None
                    if on_run is not None:
                        on_run(runs, None, e)
                    if not locked:
                        events = 0  # tried again at the next event
                else:
                    retry_at = None
                    totals.batches += 1
                    totals.add(summary)
                    if on_run is not None:
                        on_run(runs, {**summary, "events": events}, None)
                    events = 0
                if max_batches is not None and runs >= max_batches:
                    break
    except KeyboardInterrupt:
        totals.interrupted = True
    return totals

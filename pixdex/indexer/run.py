"""``pixdex index``: scan roots, update the store incrementally, keep FAISS in line. Crash-safe.

One run:

1. open the store for writing (exclusive lock file; schema migrations), check or bind the model
   (:mod:`pixdex.indexer.binding`);
2. repair the FAISS index from the database (a crash may have left it behind);
3. scan the roots and compare with the store by size and mtime only (:mod:`pixdex.indexer.plan`);
4. for new and changed files, in worker threads with bounded look-ahead: read once, hash, and decode +
   preprocess unless the hash is already in the store; in the main thread resolve each file (touched:
   same hash; moved: takes over a vanished row and its id; copy: reuses another row's vector; else
   encode) and commit rows + vectors per batch in one transaction;
5. delete the rows of vanished files;
6. backfill: perceptual hashes (dedup's copy tier) for rows that have none yet, e.g. a store made
   before them (:mod:`pixdex.indexer.backfill`: reads only those rows' files, loads no model);
7. rebuild or retrain FAISS when due; save it atomically.

The encoder is loaded only when something must be encoded (or the store is new): a run over an
unchanged folder reads no file and loads no model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from pixdex.encoders.registry import DEFAULT_MODEL
from pixdex.errors import PixdexError
from pixdex.indexer.backfill import backfill_copy_hashes
from pixdex.indexer.binding import (
    LazyEncoder,
    check_spec,
    model_choice,
    recorded_model,
    store_is_bound,
    text_tower_needs_repair,
)
from pixdex.indexer.pipeline import (
    DecodeGate,
    Loaded,
    copy_hashes_enabled,
    default_workers,
    load_candidate,
    ordered_map,
)
from pixdex.indexer.plan import Candidate, make_plan
from pixdex.indexer.report import Progress, Tally, Timings, print_summary
from pixdex.indexer.scan import normalise_roots, scan
from pixdex.storage import faiss_index
from pixdex.storage.contract import (
    DB_FILE,
    LOCK_FILE,
    SIDECAR_FILE,
    STATUS_FAILED,
    STATUS_OK,
    db_problem,
    is_corrupt_db_error,
)
from pixdex.storage.store import DamagedStore, Store, StoreLock, set_aside_damaged_db
from pixdex.storage.writes import Batch, KnownFile, Move, NewRow, Touch, apply_batch, known_files
from pixdex.threads import cpu_threads, uses_all_cores

log = logging.getLogger(__name__)

FAISS_SAVE_EVERY_S = 120.0  # also saved at the end; FAISS is derived, so this only helps concurrent search
MAX_PENDING_OPS = 256  # commit non-encoding changes (moves, failures, ...) at least this often


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        log.warning("ignoring %s=%r (not a number)", name, os.environ.get(name))
        return default


def _remove_empty_store(store_dir: Path) -> None:
    """Undo the creation of a store that a failed first run never bound to a model."""
    for name in (DB_FILE, DB_FILE + "-wal", DB_FILE + "-shm", LOCK_FILE, SIDECAR_FILE):
        try:
            (store_dir / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.debug("cannot remove %s: %s", store_dir / name, e)
    try:
        store_dir.rmdir()  # only when nothing else is in it
    except OSError:
        pass


class _Run:
    """The state of one indexing run (see the module doc)."""

    def __init__(self, store: Store, enc: LazyEncoder, batch_size: int, tally: Tally, progress: Progress):
        self.store, self.enc, self.batch_size, self.tally, self.progress = (
            store,
            enc,
            max(1, batch_size),
            tally,
            progress,
        )
        self.timings = enc.timings
        self.batch = Batch()
        self.pending: list[tuple[Candidate, Loaded, bool]] = []  # decoded, waiting for the encoder
        self.index: Optional[faiss_index.VectorIndex] = None
        self.dim: Optional[int] = None
        self.live_by_hash: dict[str, int] = {}
        self.vanished_by_hash: dict[str, list[tuple[str, KnownFile]]] = {}
        self.claimed: set = set()
        self.last_save = time.monotonic()
        self.save_every = _env_float("PIXDEX_FAISS_SAVE_S", FAISS_SAVE_EVERY_S)
        self.gate = DecodeGate()
        self.gate_decoding = os.environ.get("PIXDEX_DECODE_GATE", "auto") != "0"

    # ------------------------------------------------------------------ FAISS

    def _vectors(self, ids: np.ndarray):
        return self.store.vectors(ids)

    def reconcile(self, threshold: int) -> dict[str, int]:
        ident = self.store.identity
        if ident is None:
            return {}
        self.dim = int(ident["dim"])
        if self.index is None:
            self.index = self.store.load_faiss(verify=True)  # garbled or another store's: rebuilt
        self.index, counts = faiss_index.reconcile(
            self.index, self.dim, self.store.live_ids(), self._vectors, threshold
        )
        return counts

    def save_faiss(self) -> dict:
        assert self.index is not None
        info = self.store.save_faiss(self.index)
        self.last_save = time.monotonic()
        return info

    # ------------------------------------------------------------------ resolving files

    def resolve(self, cand: Candidate, res: Loaded, count: bool = True) -> None:
        """Decide what ``cand`` becomes, given what the worker found. ``count``: False on a retry."""
        e, old = cand.entry, cand.old
        h = res.content_hash
        if h is not None and old is not None and old.content_hash == h:
            self.batch.touches.append(Touch(old.id, e.size, e.mtime_ns))  # touched, same bytes
            self.tally.add("unchanged")
            self.progress.advance()
            return
        if h is not None and self.vanished_by_hash.get(h):
            path, row = self.vanished_by_hash[h].pop()
            self.claimed.add(path)
            self._drop_old(old)
            self.batch.moves.append(Move(row.id, e.path, e.root, e.size, e.mtime_ns))
            self.tally.add("moved")
            self.progress.advance()
            return
        if h is not None and h in self.live_by_hash:
            self._insert(
                cand, NewRow(e.path, e.root, e.size, e.mtime_ns, h, copy_from=self.live_by_hash[h]), count
            )
            self.tally.add("reused_vectors")
            self.progress.advance()
            return
        if res.known:  # its source went away meanwhile: decode after all
            res = load_candidate(e.path, self.enc.preprocess, decode_known=True)
            if res.content_hash is not None and res.content_hash != h:
                return self.resolve(cand, res, count)
        if not res.ok:
            self._insert(
                cand,
                NewRow(e.path, e.root, e.size, e.mtime_ns, h, status=STATUS_FAILED, error=res.error),
                count,
            )
            self.tally.fail(res.error or "unknown error")
            self.progress.advance()
            return
        self.pending.append((cand, res, count))
        if len(self.pending) >= self.batch_size:
            self.encode_pending()

    def _drop_old(self, old: Optional[KnownFile]) -> None:
        if old is not None:
            self.batch.deletes.append(old.id)
            if old.content_hash and self.live_by_hash.get(old.content_hash) == old.id:
                del self.live_by_hash[old.content_hash]

    def _insert(self, cand: Candidate, row: NewRow, count: bool = True) -> None:
        self._drop_old(cand.old)
        if count:
            self.tally.add("updated" if cand.old is not None else "new")
        self.batch.inserts.append(row)
        if len(self.batch) >= MAX_PENDING_OPS and not self.pending:
            self.commit()

    def encode_pending(self) -> None:
        if not self.pending:
            return
        enc = self.enc.get()
        batch = np.stack([r.pixels for _, r, _ in self.pending])
        with (
            cpu_threads(enc) as nthreads,
            self.gate.closed(self.gate_decoding and uses_all_cores(enc, nthreads)),
            self.timings("encode"),
        ):
            vecs = enc.encode_images(batch)
        self.tally.add("encoded", len(self.pending))
        for (cand, res, count), v in zip(self.pending, vecs):
            e, info = cand.entry, res.info
            self._insert(
                cand,
                NewRow(
                    e.path,
                    e.root,
                    e.size,
                    e.mtime_ns,
                    res.content_hash,
                    width=info.width,
                    height=info.height,
                    format=info.format,
                    taken_at=info.taken_at,
                    camera_make=info.camera_make,
                    camera_model=info.camera_model,
                    vector=v,
                    copy_hash=res.copy_hash,
                ),
                count,
            )
        n = len(self.pending)
        self.pending = []
        self.commit()
        self.progress.advance(n)

    def commit(self) -> None:
        if not len(self.batch):
            return
        if self.dim is None:
            self.dim = int(self.store.identity["dim"])
        batch, self.batch = self.batch, Batch()
        with self.timings("commit"):
            applied = apply_batch(self.store, batch, self.dim)
        for k in applied.copies_missing:  # the copy source was deleted in the meantime: encode it
            r = batch.inserts[k]
            self.tally.add("reused_vectors", -1)
            res = load_candidate(r.path, self.enc.preprocess, decode_known=True)
            self.resolve(Candidate(_entry_of(r)), res, count=False)
        for row, new_id in zip(batch.inserts, applied.new_ids):
            if new_id is not None and row.status == STATUS_OK and row.content_hash:
                self.live_by_hash.setdefault(row.content_hash, new_id)
        with self.timings("faiss"):
            if self.index is None:
                self.index = faiss_index.VectorIndex.flat(self.dim)
            self.index.remove(applied.removed_ids)
            self.index.add(applied.added_ids, applied.added_vectors)
            if time.monotonic() - self.last_save > self.save_every:
                self.save_faiss()

    def finish_files(self) -> None:
        self.encode_pending()
        self.commit()


def _entry_of(r: NewRow):
    from pixdex.indexer.scan import FileEntry

    return FileEntry(r.path, r.root, r.size, r.mtime_ns)


def index_paths(
    paths: Sequence[Path],
    store_dir: Path,
    model: Optional[str] = None,
    checkpoint: Optional[Path] = None,
    device: str = "auto",
    batch_size: int = 32,
    workers: int = 0,
    json_mode: bool = False,
    ivf_threshold: Optional[int] = None,
    encoder_loader: Optional[Callable] = None,
    tag: bool = False,
    backend: str = "auto",
    exact: bool = False,
) -> dict:
    """Index ``paths`` into the store at ``store_dir``; return the summary dict (printed unless json_mode).

    ``encoder_loader(spec, checkpoint, device, towers) -> Encoder`` replaces ``load_encoder`` (tests).
    A damaged database is set aside (renamed, never deleted) and the store rebuilt from the photos with
    the model recorded in ``store.json``.
    ``tag``: then tag the images not tagged yet (:func:`pixdex.tags.tagger.tag_with_store`, the store's
    last label set or the default one); the summary's ``tags`` describes it.
    ``backend`` / ``exact``: what runs the encoder (:mod:`pixdex.encoders.backends`).
    """
    args = (paths, store_dir, model, checkpoint, device, batch_size, workers, json_mode, ivf_threshold)
    try:
        return _index_paths(*args, encoder_loader=encoder_loader, tag=tag, backend=backend, exact=exact)
    except DamagedStore as e:
        store_dir = Path(store_dir).expanduser()
        lock = StoreLock(store_dir)
        lock.acquire()  # another indexer may have started meanwhile: then it is its business
        try:
            aside = set_aside_damaged_db(store_dir)
        finally:
            lock.release()
        log.warning("%s; set it aside as %s and rebuilding the store", e, aside.name)
    return _index_paths(*args, encoder_loader=encoder_loader, tag=tag, backend=backend, exact=exact)


def _index_paths(
    paths: Sequence[Path],
    store_dir: Path,
    model: Optional[str] = None,
    checkpoint: Optional[Path] = None,
    device: str = "auto",
    batch_size: int = 32,
    workers: int = 0,
    json_mode: bool = False,
    ivf_threshold: Optional[int] = None,
    encoder_loader: Optional[Callable] = None,
    tag: bool = False,
    backend: str = "auto",
    exact: bool = False,
) -> dict:
    if not paths:
        raise PixdexError("give at least one folder or file to index")
    from pixdex.encoders.backends import check_backend

    backend = check_backend(backend, exact)
    if batch_size < 1:
        raise PixdexError("--batch-size must be at least 1")
    t0 = time.monotonic()
    threshold = faiss_index.ivf_threshold(ivf_threshold)
    nworkers = workers if workers and workers > 0 else default_workers()
    normalise_roots(paths)  # a missing root fails before anything is created or loaded
    store_dir = Path(store_dir).expanduser()
    new_store = not (store_dir / DB_FILE).exists()
    # the database gone but store.json kept: the model recorded there, not the default
    recorded = recorded_model(store_dir) if new_store and model is None and checkpoint is None else None
    if new_store and encoder_loader is None and recorded is None:
        check_spec(model or DEFAULT_MODEL, checkpoint)  # fail before creating anything
    store = Store.open_writer(store_dir)
    tally = Tally()
    timings = Timings()
    progress = Progress(0, quiet=True)
    ok = False
    tag_summary: Optional[dict] = None
    try:
        with warnings.catch_warnings():
            # Pillow warns for images over MAX_IMAGE_PIXELS; pixdex.images records those as failures.
            from PIL import Image

            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            spec, ckpt, load_now = model_choice(store, model, checkpoint)
            enc = LazyEncoder(
                store,
                spec,
                ckpt,
                device,
                loader=encoder_loader,
                timings=timings,
                backend=backend,
                exact=exact,
            )
            if not load_now and text_tower_needs_repair(store):
                enc.repair_text_tower = load_now = True
            if load_now:
                enc.get()
            run = _Run(store, enc, batch_size, tally, progress)
            with timings("faiss"):
                repaired = run.reconcile(threshold)
            with timings("scan"):
                sc = scan(paths, skip_dirs=[store.dir])
            for path, reason in sc.problems:
                log.info("skipped %s: %s", path, reason)
                tally.fail(reason)
            known = known_files(store)
            plan = make_plan(sc, known)
            for root, n in plan.protected.items():
                log.warning(
                    "%s holds no images but the store has %d from it: keeping them (an unmounted "
                    "drive?). Delete the store or re-index from another root to drop them.",
                    root,
                    n,
                )
            tally.add("unchanged", plan.unchanged)
            for path, k in plan.vanished.items():
                if k.content_hash:
                    run.vanished_by_hash.setdefault(k.content_hash, []).append((path, k))
            for k in known.values():
                if k.status == STATUS_OK and k.content_hash:
                    run.live_by_hash.setdefault(k.content_hash, k.id)
            known_hashes = frozenset(run.live_by_hash) | frozenset(run.vanished_by_hash)
            progress = run.progress = Progress(len(plan.candidates), quiet=json_mode)

            def work(c: Candidate) -> Loaded:
                return load_candidate(c.entry.path, enc.preprocess, known_hashes, gate=run.gate)

            lookahead = 2 * batch_size + 2 * nworkers
            # closing: on Ctrl-C the queued reads are cancelled now, not run to the end at exit
            with contextlib.closing(
                timings.waiting(ordered_map(work, plan.candidates, nworkers, lookahead), "wait_decode")
            ) as loaded:
                for cand, res in loaded:
                    tally.add("hashed", 1 if res.content_hash else 0)
                    run.resolve(cand, res)
            run.finish_files()
            gone = [k.id for p, k in plan.vanished.items() if p not in run.claimed]
            if gone:
                run.batch.deletes.extend(gone)
                run.commit()
            tally.add("deleted", len(gone))
            if copy_hashes_enabled():
                with timings("copy_hashes"):
                    for k, n in backfill_copy_hashes(
                        store, nworkers, lambda n: Progress(n, quiet=json_mode, description="hashing")
                    ).items():
                        tally.add(k, n)
            faiss_info = {}
            if store.identity is not None:
                with timings("faiss"):
                    run.reconcile(threshold)
                    faiss_info = run.save_faiss()
            if tag and store.identity is not None:
                from pixdex.tags.tagger import tag_with_store

                with timings("tag"):
                    tag_summary = tag_with_store(store)
        ok = True
    except SQLAlchemyError as e:  # disk full, I/O error, ...: committed batches stay, the next run goes on
        detail = str(getattr(e, "orig", e)).splitlines()[0]
        if is_corrupt_db_error(detail):
            raise DamagedStore(db_problem(store_dir, detail)) from e
        raise PixdexError(
            f"cannot write the store database {store_dir / DB_FILE}: "
            f"{str(getattr(e, 'orig', e)).splitlines()[0]} (what was indexed is kept; run again)"
        ) from e
    except OSError as e:  # e.g. no space left for the FAISS file
        raise PixdexError(
            f"cannot write the store at {store_dir}: {e.strerror or e} (what was indexed is kept; run again)"
        ) from e
    finally:
        progress.close()
        # Whether this first run bound the store: read without a transaction of the writer's engine (its
        # BEGIN IMMEDIATE would wait on a write lock that an interrupted batch may still hold, for
        # SQLite's whole busy timeout), and only when the answer matters.
        unbound = not ok and new_store and not store_is_bound(store)
        store.close()
        if unbound:
            _remove_empty_store(store_dir)
    elapsed = time.monotonic() - t0
    c = tally.counts
    summary = {
        "store": str(store.dir),
        "model": spec,
        "roots": sc.roots,
        "found": len(sc.files),
        "new": c["new"],
        "updated": c["updated"],
        "moved": c["moved"],
        "deleted": c["deleted"],
        "unchanged": c["unchanged"],
        "failed": c["failed"],
        "encoded": c["encoded"],
        "hashed": c["hashed"],
        "reused_vectors": c["reused_vectors"],
        "hashed_copy": c["hashed_copy"],  # rows given perceptual hashes by the backfill pass
        "copy_unhashable": c["copy_unhashable"],
        "failures": tally.top_reasons(),
        "kept_from_empty_roots": plan.protected,
        "links_outside_roots": [{"link": a, "target": b} for a, b in sc.outside_links],
        "faiss_repaired": repaired,
        "faiss": faiss_info,
        "total": faiss_info.get("ntotal", 0),
        "elapsed_s": round(elapsed, 3),
        "timings_s": timings.as_dict(),
        "images_per_s": round(c["encoded"] / elapsed, 2) if elapsed > 0 else 0.0,
    }
    if tag_summary is not None:
        summary["tags"] = tag_summary
    if not json_mode:
        print_summary(summary)
        if tag_summary is not None:
            from pixdex.tags.tagger import print_tag_summary

            print_tag_summary(tag_summary)
    return summary

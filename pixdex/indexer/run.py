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
import functools
import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from pixdex.encoders.device_input import CPU_BATCH
from pixdex.encoders.registry import DEFAULT_MODEL
from pixdex.errors import Interrupted, PartialRun, PixdexError
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
)
from pixdex.indexer.plan import Candidate, make_plan
from pixdex.indexer.procpool import decode_stream, expected_batch_size
from pixdex.indexer.report import Progress, RunProgress, Tally, Timings, print_summary
from pixdex.indexer.scan import compile_patterns, normalise_roots, scan
from pixdex.interrupts import ctrl_c_after_block
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
from pixdex.storage.roots import remember_excludes
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

    def __init__(
        self, store: Store, enc: LazyEncoder, batch_size: Optional[int], tally: Tally, progress: RunProgress
    ):
        self.store, self.enc, self.tally, self.progress = store, enc, tally, progress
        self.batch_size = max(1, batch_size) if batch_size else None  # None: the encoder's, once loaded
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
        self.ray_summary: Optional[dict] = None  # set by pixdex.scale.index.ray_results

    # ------------------------------------------------------------------ FAISS

    def reconcile(self, threshold: int) -> dict[str, int]:
        ident = self.store.identity
        if ident is None:
            return {}
        self.dim = int(ident["dim"])
        self.index, counts = self.store.reconcile_faiss(self.index, threshold)
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
        if h is not None and old is not None and old.content_hash == h and not cand.retry:
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
        if not res.ok:  # counted as failed, not as new or updated
            self._insert(
                cand,
                NewRow(e.path, e.root, e.size, e.mtime_ns, h, status=STATUS_FAILED, error=res.error),
                False,
            )
            self.tally.fail(res.error or "unknown error", e.path)
            self.progress.advance()
            return
        if not self.enc.loaded and self.enc.start():  # in the background: the next files decode meanwhile
            self.progress.loading(self.enc.spec)
        self.pending.append((cand, res, count))
        if count:
            self.progress.advance()
        if self.batch_size is None and self.enc.loaded:  # the encoder's batch size, once it is there
            enc = self.enc.get()
            self.batch_size = enc.batch_size() if hasattr(enc, "batch_size") else CPU_BATCH
        if len(self.pending) >= (self.batch_size or CPU_BATCH):
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
        vecs = [r.vector for _, r, _ in self.pending]  # encoded elsewhere (pixdex.scale), or None
        todo = [k for k, v in enumerate(vecs) if v is None]
        if todo:
            enc = self.enc.get()
            batch = np.stack([self.pending[k][1].pixels for k in todo])
            with (
                cpu_threads(enc) as nthreads,
                self.gate.closed(self.gate_decoding and uses_all_cores(enc, nthreads)),
                self.timings("encode"),
            ):
                for k, v in zip(todo, enc.encode_images(batch)):
                    vecs[k] = v
            self.tally.add("encoded", len(todo))
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
        self.progress.add_encoded(len(self.pending))
        self.pending = []
        self.commit()

    def commit(self) -> None:
        if not len(self.batch):
            return
        if self.enc.bind_before_writes:
            self.enc.get()  # the model is bound (or found not to fit) before anything is written
        if self.dim is None:
            self.dim = int(self.store.identity["dim"])
        batch, self.batch = self.batch, Batch()
        with self.timings("commit"), ctrl_c_after_block():
            applied = apply_batch(self.store, batch, self.dim)
            # what an interrupted run reports as kept: the files this run made searchable
            self.tally.add(
                "kept",
                len(batch.moves)
                + sum(
                    i is not None and r.status == STATUS_OK for r, i in zip(batch.inserts, applied.new_ids)
                ),
            )
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


def _path_of(c: Candidate) -> str:
    return c.entry.path


def _entry_of(r: NewRow):
    from pixdex.indexer.scan import FileEntry

    return FileEntry(r.path, r.root, r.size, r.mtime_ns)


def _rebuild_damaged_store(run: Callable[..., dict]) -> Callable[..., dict]:
    """``run(paths, store_dir, ...)``, once more after setting a damaged database aside (renamed, never
    deleted): the store is then rebuilt from the photos with the model recorded in ``store.json``."""

    @functools.wraps(run)
    def guarded(paths, store_dir, *args, **kwargs) -> dict:
        try:
            return run(paths, store_dir, *args, **kwargs)
        except DamagedStore as e:
            store_dir = Path(store_dir).expanduser()
            lock = StoreLock(store_dir)
            lock.acquire()  # another indexer may have started meanwhile: then it is its business
            try:
                aside = set_aside_damaged_db(store_dir)
            finally:
                lock.release()
            log.warning("%s; set it aside as %s and rebuilding the store", e, aside.name)
        return run(paths, store_dir, *args, **kwargs)

    return guarded


@_rebuild_damaged_store
def index_paths(
    paths: Sequence[Path],
    store_dir: Path,
    model: Optional[str] = None,
    checkpoint: Optional[Path] = None,
    device: str = "auto",
    batch_size: int = 0,
    workers: int = 0,
    json_mode: bool = False,
    ivf_threshold: Optional[int] = None,
    encoder_loader: Optional[Callable] = None,
    tag: bool = False,
    exclude: Sequence[str] = (),
    clear_excludes: bool = False,
    retry_failed: bool = False,
    ray: Optional[str] = None,
    backend: str = "auto",
    exact: bool = False,
) -> dict:
    """Index ``paths`` into the store at ``store_dir``; return the summary dict (printed unless json_mode).

    ``batch_size`` 0: the encoder's own (:meth:`Encoder.batch_size`: 32 on CPU, by free memory on CUDA).
    ``encoder_loader(spec, checkpoint, device, towers) -> Encoder`` replaces ``load_encoder`` (tests).
    A damaged database is set aside (renamed, never deleted) and the store rebuilt from the photos with
    the model recorded in ``store.json``.
    ``tag``: then tag the images not tagged yet (:func:`pixdex.tags.tagger.tag_with_store`, the store's
    last label set or the default one); the summary's ``tags`` describes it.
    ``exclude``: gitignore-style patterns added to those each root remembers in the store
    (``clear_excludes``: forget those first); files they exclude leave the store. ``retry_failed``:
    also try again the unchanged files that failed before.
    ``ray``: read, decode and encode on a Ray cluster at this address (``local``: a Ray started here;
    ``auto``: the running cluster), see :mod:`pixdex.scale.index`; the summary's ``ray`` describes it.
    ``backend`` / ``exact``: what runs the encoder (:mod:`pixdex.encoders.backends`).
    """
    if not paths:
        raise PixdexError("give at least one folder or file to index")
    from pixdex.encoders.backends import check_backend

    backend = check_backend(backend, exact)
    if batch_size < 0:
        raise PixdexError("--batch-size must be 0 (automatic) or more")
    if ray is not None:
        from pixdex.scale import require_ray

        require_ray()  # without the extra: one line, before anything is created
    t0 = time.monotonic()
    threshold = faiss_index.ivf_threshold(ivf_threshold)
    nworkers = workers if workers and workers > 0 else default_workers()
    roots = normalise_roots(paths)  # a missing root fails before anything is created or loaded
    compile_patterns(exclude)  # so does a bad pattern
    store_dir = Path(store_dir).expanduser()
    new_store = not (store_dir / DB_FILE).exists()
    # the database gone but store.json kept: the model recorded there, not the default
    recorded = recorded_model(store_dir) if new_store and model is None and checkpoint is None else None
    if new_store and encoder_loader is None and recorded is None:
        check_spec(model or DEFAULT_MODEL, checkpoint)  # fail before creating anything
    store = Store.open_writer(store_dir)
    tally = Tally()
    timings = Timings()
    progress = RunProgress(quiet=json_mode)
    enc: Optional[LazyEncoder] = None
    ok = False
    tag_summary: Optional[dict] = None
    run_ray: Optional[dict] = None
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
                on_ready=progress.model_ready,
                backend=backend,
                exact=exact,
            )
            enc.export_in_background = True  # finished below, before the run ends either way
            if not load_now and text_tower_needs_repair(store):
                enc.repair_text_tower = load_now = True
            if load_now:
                enc.bind_before_writes = True
                progress.loading(spec)
                if encoder_loader is None:  # in the background, while the files are scanned and decoded
                    enc.start()
                else:  # a test's loader may be asked for the preprocessing of a new store
                    enc.get()
            run = _Run(store, enc, batch_size, tally, progress)
            with timings("faiss"):
                repaired = run.reconcile(threshold)
            excludes = remember_excludes(store, roots, exclude, clear_excludes)
            with timings("scan"):
                sc = scan(paths, skip_dirs=[store.dir], excludes=excludes)
            for path, reason in sc.problems:
                log.info("skipped %s: %s", path, reason)
                tally.fail(reason, path)
            for path, note in sc.notes:
                log.info("%s: %s", path, note)
            known = known_files(store)
            plan = make_plan(sc, known, retry_failed)
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
            progress.files(len(plan.candidates))

            lookahead = 2 * (batch_size or expected_batch_size(device)) + 2 * nworkers
            if ray is None:
                results = decode_stream(
                    plan.candidates, _path_of, enc, device, nworkers, lookahead, known_hashes, run.gate
                )
            else:  # read, decode and encode on a Ray cluster; shards ingested here (pixdex.scale)
                from pixdex.scale.index import ray_results

                def work(c: Candidate) -> Loaded:
                    return load_candidate(c.entry.path, enc.preprocess, known_hashes, gate=run.gate)

                results = ray_results(ray, run, plan.candidates, known_hashes, work)
            # closing: on Ctrl-C the queued reads are cancelled now, not run to the end at exit
            with contextlib.closing(timings.waiting(results, "wait_decode")) as loaded:
                for cand, res in loaded:
                    tally.add("hashed", 1 if res.content_hash else 0)
                    run.resolve(cand, res)
            if enc.bind_before_writes:
                enc.get()  # a new store is bound even when there is nothing to encode
            run.finish_files()
            run_ray = run.ray_summary
            enc.finish()
            progress.close()  # the files are done: what follows has its own display
            gone = [k.id for p, k in plan.vanished.items() if p not in run.claimed]
            gone += [k.id for k in plan.excluded.values()]
            if gone:
                run.batch.deletes.extend(gone)
                run.commit()
            tally.add("deleted", len(gone) - len(plan.excluded))
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
    except KeyboardInterrupt as e:  # committed batches stay; the next run skips them
        raise Interrupted(
            f"interrupted: {tally.counts['kept']} files indexed and kept; run the same command to continue"
        ) from e
    except SQLAlchemyError as e:  # disk full, I/O error, ...: committed batches stay, the next run goes on
        detail = str(getattr(e, "orig", e)).splitlines()[0]
        if is_corrupt_db_error(detail):
            raise DamagedStore(db_problem(store_dir, detail)) from e
        raise PartialRun(
            f"cannot write the store database {store_dir / DB_FILE}: "
            f"{str(getattr(e, 'orig', e)).splitlines()[0]} (what was indexed is kept; run again)"
        ) from e
    except OSError as e:  # e.g. no space left for the FAISS file
        raise PartialRun(
            f"cannot write the store at {store_dir}: {e.strerror or e} (what was indexed is kept; run again)"
        ) from e
    finally:
        if enc is not None:
            enc.finish()  # a text tower being written is written whole
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
        "failed_paths": tally.failed_paths,  # the first few: pixdex status --failed lists them all
        "not_retried": plan.not_retried,  # unchanged files that failed before (--retry-failed)
        "excluded": len(plan.excluded),  # rows of files now excluded, removed from the store
        "notes": [{"path": p, "note": n} for p, n in sc.notes],
        "kept_from_empty_roots": plan.protected,
        "links_outside_roots": [{"link": a, "target": b} for a, b in sc.outside_links],
        "faiss_repaired": repaired,
        "faiss": faiss_info,
        "total": faiss_info.get("ntotal", 0),
        "elapsed_s": round(elapsed, 3),
        "timings_s": timings.as_dict(),
        # the model's loading is not in the rate: start-up is until the model was ready to encode
        "startup_s": round(progress.ready_at - t0, 3) if progress.ready_at is not None else None,
        "first_batch_at": progress.first_batch_at,  # unix time of the first batch encoded
        "images_per_s": progress.rate(),
    }
    if tag_summary is not None:
        summary["tags"] = tag_summary
    if run_ray is not None:
        summary["ray"] = run_ray
    if not json_mode:
        print_summary(summary)
        if tag_summary is not None:
            from pixdex.tags.tagger import print_tag_summary

            print_tag_summary(tag_summary)
    return summary

"""Decode workers as processes: read, hash, decode and resize in other interpreters, pixels back
through shared memory.

Threads share one GIL: Pillow's decode and resize release it, but the Python around them (EXIF, PDQ's
glue, numpy, hashing small files) does not, so on many cores threads stop scaling
(``bench/decode_scaling.py`` measures both). :class:`ProcessDecoder` is an executor for
:func:`pixdex.indexer.pipeline.ordered_map`: each task is one file, run by
:func:`pixdex.indexer.pipeline.load_candidate` in a worker process; the worker writes the uint8 pixels
into a slot of one shared-memory block and returns the rest (hash, metadata, perceptual hash: a few
hundred bytes) through the pool's pipe. The caller copies the pixels out of the slot when the result
is yielded, so a slot is free again before ``ordered_map`` submits the task that reuses it (slots =
look-ahead).

A worker that dies (a decoder crash on a hostile file) breaks the pool: the pool is replaced and each
task that was in flight is run again, alone, once; a file that kills a worker twice is that file's
failure, never the run's. Workers start with ``forkserver`` (``spawn`` where there is none): never a
fork of a process that runs torch's threads.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing as mp
import os
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import shared_memory
from typing import Optional, TypeVar

import numpy as np

from pixdex.indexer.pipeline import DecodeGate, Loaded, load_candidate, ordered_map

log = logging.getLogger(__name__)

T = TypeVar("T")
SHM_SHARE = 0.5  # at most this share of /dev/shm's free space for the slots
CRASHED = "the decoder crashed on this file (a worker process died)"

# in each worker process
_state: dict = {}


def _init(shm_name: str, slots: int, shape: tuple, preprocess, known: frozenset) -> None:
    shm = shared_memory.SharedMemory(name=shm_name)
    _state.update(
        shm=shm,
        view=np.ndarray((slots, *shape), dtype=np.uint8, buffer=shm.buf),
        preprocess=preprocess,
        known=known,
    )


def _load(task: tuple[int, str, bool]) -> Loaded:
    slot, path, decode_known = task
    res = load_candidate(path, _state["preprocess"], _state["known"], decode_known=decode_known)
    view = _state["view"]
    if res.pixels is not None and res.pixels.shape == view.shape[1:] and res.pixels.dtype == np.uint8:
        view[slot] = res.pixels
        res.pixels = None
        res.slot = slot  # the caller copies the pixels out of it
    return res


def shm_room() -> int:
    """Bytes of shared memory that may be used (``SHM_SHARE`` of /dev/shm's free space; 0 if unknown)."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return 0
    return int(st.f_bavail * st.f_frsize * SHM_SHARE)


class ProcessDecoder:
    """An :func:`~pixdex.indexer.pipeline.ordered_map` executor whose tasks are ``(slot, path,
    decode_known)``; ``slots`` is the look-ahead to give ``ordered_map``."""

    def __init__(
        self,
        workers: int,
        preprocess,
        known_hashes: Collection[str] = (),
        lookahead: int = 64,
    ):
        s = int(preprocess.image_size)
        self.shape = (s, s, 3)
        slot_bytes = int(np.prod(self.shape))
        room = shm_room()
        self.slots = max(1, min(int(lookahead), room // slot_bytes if room else int(lookahead)))
        self.workers = max(1, int(workers))
        self.shm = shared_memory.SharedMemory(create=True, size=self.slots * slot_bytes)
        self.view = np.ndarray((self.slots, *self.shape), dtype=np.uint8, buffer=self.shm.buf)
        methods = mp.get_all_start_methods()
        self.ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        self.initargs = (self.shm.name, self.slots, self.shape, preprocess, frozenset(known_hashes))
        self.pool: Optional[ProcessPoolExecutor] = None
        self.generation = 0
        self._start()

    def _start(self) -> None:
        self.pool = ProcessPoolExecutor(
            max_workers=self.workers, mp_context=self.ctx, initializer=_init, initargs=self.initargs
        )

    def submit(self, fn, task) -> Future:
        try:
            fut = self.pool.submit(fn, task)
        except BrokenProcessPool:
            self._restart()
            fut = self.pool.submit(fn, task)
        fut.pixdex_generation = self.generation
        return fut

    def _restart(self) -> None:
        log.warning("a decode worker process died; starting new ones")
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.generation += 1
        self._start()

    def result(self, fut: Future, fn, task) -> Loaded:
        try:
            res = fut.result()
        except BrokenProcessPool:
            if getattr(fut, "pixdex_generation", self.generation) == self.generation:
                self._restart()
            # run it again, alone in the new pool (the other tasks in flight are run again when their
            # turn comes): the file that killed a pool twice fails, the others were bystanders
            try:
                res = self.pool.submit(fn, task).result()
            except BrokenProcessPool:
                self._restart()
                return Loaded(error=CRASHED)
        if res.slot is not None:
            res.pixels = self.view[res.slot].copy()
            res.slot = None
        return res

    def shutdown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self.view = None
        self.shm.close()
        self.shm.unlink()


MIN_PROCESS_WORKERS = 4  # below this, threads measured as fast (bench/decode_scaling.py) and start at once


def gpu_likely(device: Optional[str]) -> bool:
    """Whether ``device`` will be a CUDA GPU, without importing torch: ``cuda*``, or ``auto`` on a
    machine with an NVIDIA device node."""
    d = (device or "auto").lower()
    return d.startswith("cuda") or (d == "auto" and os.path.exists("/dev/nvidia0"))


def use_processes(device: Optional[str], workers: int) -> bool:
    """Decode in worker processes? ``PIXDEX_DECODE_PROCS=1``/``0`` decides; by default yes when the
    encoder is on a GPU (decoding is then the bottleneck) and there are at least
    :data:`MIN_PROCESS_WORKERS` workers. On CPU threads stay: the encoder needs the cores, the
    :class:`~pixdex.indexer.pipeline.DecodeGate` (threads only) keeps decoding out of its way, and
    workers start at once."""
    setting = os.environ.get("PIXDEX_DECODE_PROCS", "auto").lower()
    if setting in ("0", "1"):
        return setting == "1"
    return workers >= MIN_PROCESS_WORKERS and gpu_likely(device)


def expected_batch_size(device: Optional[str]) -> int:
    """The batch size to plan the look-ahead with before the encoder is loaded."""
    from pixdex.encoders.device_input import CPU_BATCH, MAX_CUDA_BATCH

    return MAX_CUDA_BATCH if gpu_likely(device) else CPU_BATCH


def decode_stream(
    items: Iterable[T],
    path_of: Callable[[T], str],
    lazy,
    device: Optional[str],
    workers: int,
    lookahead: int,
    known_hashes: Collection[str] = (),
    gate: Optional[DecodeGate] = None,
) -> Iterator[tuple[T, Loaded]]:
    """``(item, load_candidate(path_of(item), ...))`` in input order, decoded ahead in worker threads
    or processes (:func:`use_processes`). ``lazy``: the model's :class:`~pixdex.indexer.binding.LazyEncoder`
    (threads use its lazy preprocessing; processes need the real one, resolved here)."""
    if not use_processes(device, workers):

        def work(item: T) -> Loaded:
            return load_candidate(path_of(item), lazy.preprocess, known_hashes, gate=gate)

        yield from ordered_map(work, items, workers, lookahead)
        return
    dec = ProcessDecoder(workers, lazy.preprocessor(), known_hashes, lookahead)
    log.info("decoding in %d worker processes (%d shared-memory slots)", dec.workers, dec.slots)
    queue: collections.deque[T] = collections.deque()

    def tasks() -> Iterator[tuple[int, str, bool]]:
        for k, item in enumerate(items):
            queue.append(item)
            yield (k % dec.slots, path_of(item), False)

    for _, res in ordered_map(_load, tasks(), workers, dec.slots, executor=dec):
        yield queue.popleft(), res

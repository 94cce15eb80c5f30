"""Decode workers: processes (pixels through shared memory) give what threads give; a worker that dies
fails only its own file; `pixdex index` stores exactly the embeddings of the float32 preprocessing
(uint8 pixels, normalised in the encoder's input step), with threads and with processes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from index_support import make_images

from pixdex.encoders.preprocess import Preprocessor
from pixdex.encoders.registry import get_config
from pixdex.indexer import procpool
from pixdex.indexer.pipeline import load_candidate, ordered_map, usable_cpus

MODEL = "tiny-vit"


def photos(folder: Path, n: int = 7) -> list[Path]:
    out = make_images(folder, n, size=(90, 70), ext="jpg")
    out += make_images(folder, 2, seed=5, size=(64, 120), ext="png", start=100)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    return out + [folder / "broken.jpg"]


def die_on_boom(task):
    """A worker task that kills its process for files named *boom* (a decoder crash)."""
    if "boom" in task[1]:
        os._exit(3)
    return procpool._load(task)


def test_default_workers_follow_the_affinity_mask():
    assert usable_cpus() == len(os.sched_getaffinity(0))


def test_processes_give_what_threads_give(tmp_path):
    files = [str(p) for p in photos(tmp_path / "p")]
    pre = Preprocessor(get_config(MODEL))
    known = {load_candidate(files[0], pre).content_hash}
    threads = [r for _, r in ordered_map(lambda p: load_candidate(p, pre, known), files, 2, 4)]
    dec = procpool.ProcessDecoder(2, pre, known, lookahead=3)  # fewer slots than files: slots reused
    tasks = [(k % dec.slots, p, False) for k, p in enumerate(files)]
    procs = [r for _, r in ordered_map(procpool._load, tasks, 2, dec.slots, executor=dec)]
    assert dec.pool is None  # shut down by ordered_map
    assert threads[0].known and procs[0].known and procs[0].pixels is None
    assert threads[-1].error and procs[-1].error == threads[-1].error
    for t, p in zip(threads[1:-1], procs[1:-1]):
        assert p.pixels.dtype == np.uint8 and np.array_equal(t.pixels, p.pixels)
        assert (t.content_hash, t.info, p.slot) == (p.content_hash, p.info, None)
        assert np.array_equal(t.copy_hash[0], p.copy_hash[0])


def test_a_worker_crash_fails_only_its_file(tmp_path):
    files = [str(p) for p in photos(tmp_path / "p", 4)]
    boom = tmp_path / "p" / "boom.png"
    boom.write_bytes(Path(files[0]).read_bytes())
    files.insert(2, str(boom))
    pre = Preprocessor(get_config(MODEL))
    dec = procpool.ProcessDecoder(2, pre, (), lookahead=4)
    tasks = [(k % dec.slots, p, False) for k, p in enumerate(files)]
    got = [r for _, r in ordered_map(die_on_boom, tasks, 2, dec.slots, executor=dec)]
    assert got[2].error == procpool.CRASHED
    others = [k for k in range(len(files)) if k != 2]
    assert [got[k].ok for k in others] == [not files[k].endswith("broken.jpg") for k in others]


@pytest.mark.parametrize("procs", ["0", "1"])
def test_index_stores_the_float32_pipelines_embeddings(tmp_path, monkeypatch, procs):
    from pixdex.encoders.encoder import load_encoder
    from pixdex.images import decode, draft_side, read_file
    from pixdex.indexer.run import index_paths
    from pixdex.storage.store import Store

    monkeypatch.setenv("PIXDEX_DECODE_PROCS", procs)
    files = photos(tmp_path / "p")[:-1]
    index_paths([tmp_path / "p"], tmp_path / "s", model=MODEL, json_mode=True, batch_size=4, workers=2)
    # the reference: Pillow's draft() decode, the numpy float32 preprocessing, the same batches
    monkeypatch.setenv("PIXDEX_JPEG", "pillow")
    enc = load_encoder(MODEL, device="cpu", random_init=True, towers=("image",))
    order = sorted(str(p) for p in files)
    x = [enc.preprocess(decode(read_file(p), draft_side(enc.preprocess))[0]) for p in order]
    want = np.concatenate([enc.encode_images(np.stack(x[s : s + 4])) for s in range(0, len(x), 4)])
    store = Store.open_readonly(tmp_path / "s")
    try:
        ids = [store.row_by_path(p).id for p in order]
        _, got = store.vectors(ids)
    finally:
        store.close()
    assert np.array_equal(got, want)

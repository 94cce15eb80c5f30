"""``pixdex index --ray ADDRESS``: the plain run's plan and writer, with reading, decoding and encoding
on a Ray cluster (see :mod:`pixdex.scale`).

:func:`ray_results` replaces the plain run's worker threads: :func:`pixdex.indexer.run.index_paths`
plans (the same scan diff), then consumes ``(candidate, Loaded)`` pairs from here and resolves and
commits them exactly as in a plain run (touch, move, copy, failure, insert). Here:

1. shards a killed run left in the staging folder are ingested first (their rows count only where
   the new plan still wants that file with the same size and mtime);
2. the candidates no shard covered go to Ray: ``decode_batch`` tasks (read + hash; decode +
   preprocess unless the hash is in the store), then ``Embedder`` actors, which write one shard per
   batch; the driver ingests each shard as Ray reports it: its rows are resolved and committed, then
   the shard file is deleted;
3. any candidate Ray did not return is done here, as in a plain run.

So a driver killed at any point loses at most the batches in flight: a rerun ingests what was staged
and encodes only what is neither in the store nor staged. The summary's ``ray`` has ``address``,
``actors``, ``device``, ``shards``, ``encoded`` (vectors computed by this run's actors),
``resumed_shards``, ``resumed_vectors`` (vectors a killed run had staged, used now) and ``local``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Iterator, Sequence

from pixdex.indexer.pipeline import Loaded
from pixdex.indexer.plan import Candidate
from pixdex.scale import connect
from pixdex.scale.pipeline import run_pipeline
from pixdex.scale.shards import Shard, iter_shards, read_shard, staging_dir
from pixdex.scale.workers import loaded_of

log = logging.getLogger(__name__)


def _rows(shard: Shard, wanted: dict[str, Candidate]) -> Iterator[tuple[Candidate, Loaded]]:
    """The shard's rows the plan still wants (same path, size and mtime as scanned), once each."""
    for k, path in enumerate(shard.items):
        m = shard.metas[k]
        c = wanted.get(path)
        if c is None or (c.entry.size, c.entry.mtime_ns) != (m.get("size"), m.get("mtime_ns")):
            continue
        del wanted[path]
        yield c, loaded_of(m, shard.vector(k))


def ray_results(
    address: str,
    run,
    candidates: Sequence[Candidate],
    known_hashes: Collection[str],
    local_work: Callable[[Candidate], Loaded],
) -> Iterator[tuple[Candidate, Loaded]]:
    """``(candidate, Loaded)`` for every candidate (see the module doc); ``run`` is the plain run's
    state (:class:`pixdex.indexer.run._Run`): its store, encoder binding, tally and ``finish_files``."""
    ray = connect(address)
    store, enc = run.store, run.enc
    if store.identity is None:
        enc.get()  # a new store is bound by loading the model
    identity = store.identity
    staging = staging_dir(store.dir)
    wanted = {c.entry.path: c for c in candidates}
    summary = {"address": address, "shards": 0, "encoded": 0, "resumed_shards": 0, "resumed_vectors": 0}
    summary["local"] = 0
    run.ray_summary = summary

    def ingest(path, shard: Shard, resumed: bool) -> Iterator[tuple[Candidate, Loaded]]:
        for c, res in _rows(shard, wanted):
            if resumed and res.vector is not None:
                summary["resumed_vectors"] += 1
            yield c, res
        run.finish_files()  # committed: the shard is no longer needed
        path.unlink(missing_ok=True)

    for path, shard in iter_shards(staging, identity):
        summary["resumed_shards"] += 1
        yield from ingest(path, shard, True)

    if wanted:
        items = [
            {
                "item": c.entry.path,
                "path": c.entry.path,
                "data": None,
                "extra": json.dumps({"size": c.entry.size, "mtime_ns": c.entry.mtime_ns}),
            }
            for c in wanted.values()
        ]
        shards = run_pipeline(
            ray, items, identity, enc.spec, enc.checkpoint, enc.device, staging, known_hashes, summary=summary
        )
        for path in shards:
            shard = read_shard(path, identity)
            summary["shards"] += 1
            summary["encoded"] += shard.encoded
            run.tally.add("encoded", shard.encoded)
            yield from ingest(path, shard, False)

    for c in list(wanted.values()):  # not returned by Ray (should not happen): as a plain run
        log.warning("Ray returned no result for %s: reading it here", c.entry.path)
        summary["local"] += 1
        yield c, local_work(c)

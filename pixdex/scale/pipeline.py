"""The Ray Data pipeline both Ray paths run: decode tasks, then embedding actors that write shards.

:func:`run_pipeline` takes the items (dicts with ``item``, ``path``, ``data``, ``extra``: see
:mod:`pixdex.scale.workers`) and yields the path of each shard as an actor finishes it, while the
pipeline goes on streaming (Ray Data's backpressure bounds what is in flight).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path

from pixdex.scale import embed_resources, env_int
from pixdex.scale.workers import Embedder, decode_batch

SHARD_ROWS = 256  # rows per shard (= per actor batch); PIXDEX_RAY_SHARD_ROWS
DECODE_ROWS = 32  # items per decode task; PIXDEX_RAY_DECODE_ROWS
DECODE_MEMORY = 256 * 1024 * 1024  # bytes reserved per decode task


def run_pipeline(
    ray,
    items: list[dict],
    identity: dict,
    spec: str,
    checkpoint,
    device: str,
    staging: Path,
    known: Collection[str],
    vectors_known: Collection[str] = (),
    text: bool = False,
    summary: dict | None = None,
) -> Iterator[Path]:
    """Yield each finished shard's path. ``summary`` gets ``actors`` and ``device``."""
    actors, resources, device = embed_resources(ray, device)
    if summary is not None:
        summary.update(actors=actors, device=device)
    ds = ray.data.from_items(items)
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs={
            "preprocess": identity["preprocess"],
            "known": frozenset(known),
            "vectors_known": frozenset(vectors_known),
        },
        batch_size=env_int("PIXDEX_RAY_DECODE_ROWS", DECODE_ROWS),
        num_cpus=1,
        # memory for a batch of decoded images; also, resources that differ from the actors' keep
        # Ray Data from fusing decoding into the embedding actors: decoding stays in CPU tasks
        # spread over the cluster, overlapping the encoder
        memory=DECODE_MEMORY,
    )
    ds = ds.map_batches(
        Embedder,
        fn_constructor_kwargs={
            "spec": spec,
            "checkpoint": checkpoint,
            "device": device,
            "identity": identity,
            "staging": str(staging),
            "text": text,
        },
        batch_size=env_int("PIXDEX_RAY_SHARD_ROWS", SHARD_ROWS),
        compute=ray.data.ActorPoolStrategy(size=actors),
        **resources,
    )
    for row in ds.iter_rows():
        yield Path(row["shard"])

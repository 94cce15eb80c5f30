"""``pixdex.dataset.dedup``: cross-modal dedup of an image-caption dataset in one call (the CLI calls it).

Reads the rows (:mod:`pixdex.dataset.readers`), gets their vectors through the embedding store
(:mod:`pixdex.dataset.embed`, :mod:`pixdex.dataset.store`), labels them (:mod:`pixdex.dataset.labels`)
and, given ``out``, writes ``kept.*``, ``removed.csv``, ``labels.csv``/``.parquet``, ``report.html`` and
``summary.json`` (:mod:`pixdex.dataset.writers`, :mod:`pixdex.dataset.report`). The input is only read.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pixdex.dataset import labels as L
from pixdex.dataset.copies import DEFAULT_DISTANCE as COPY_DISTANCE
from pixdex.errors import PixdexError

log = logging.getLogger(__name__)

SUMMARY_KEY = b"pixdex.summary"  # schema metadata of the returned pyarrow table
STORE_SUBDIR = "store"  # OUT/store: the default embedding store of a run with an output folder


def dedup(
    data,
    out=None,
    against=None,
    mode: str = "pairs",
    model: str | None = None,
    checkpoint=None,
    image_col: str = "image",
    caption_col: str = "caption",
    key_col: str | None = None,
    drop_mismatch: bool = False,
    image_threshold: float | None = None,
    caption_threshold: float | None = None,
    keep: str = "first",
    copy_distance: int | None = COPY_DISTANCE,
    store=None,
    write_shards: bool = False,
    batch_size: int = 32,
    workers: int = 0,
    device: str = "auto",
    progress: bool = True,
    encoder_loader: Callable | None = None,
    finder=None,
    ray: str | None = None,
):
    """Label every row of an image-caption dataset; return the labels as a table.

    ``data`` (and ``against``): a CSV/TSV, JSONL or parquet manifest (image paths relative to it, or
    image bytes), webdataset ``.tar`` shards (``KEY.jpg`` + ``KEY.txt`` [+ ``KEY.json``]), a folder of
    either, a list of such paths, or an in-memory pandas ``DataFrame`` / ``pyarrow.Table`` (image
    paths relative to the current folder, or bytes). ``against``: an evaluation set; rows whose image
    or caption duplicates one of its items are ``contaminated`` and dropped.

    Labels per row (definitions in :mod:`pixdex.dataset.labels`): ``duplicate_pair``,
    ``duplicate_image``, ``duplicate_caption``, ``mismatch``, ``contaminated``, ``unreadable`` (the image
    cannot be read; ``error`` says why; always dropped). ``mode="pairs"`` drops duplicate pairs,
    ``"images"`` also duplicate images, ``"strict"`` also duplicate captions; ``drop_mismatch`` drops
    mismatches. ``keep``: which row of a group stays, ``"first"`` in input order or ``"best"``
    image-caption score. Thresholds are cosines (defaults :data:`pixdex.dataset.labels.IMAGE_THRESHOLD`,
    ``CAPTION_THRESHOLD``). Image duplicates are found by three tiers: equal content hash (``exact``),
    PDQ perceptual hashes within Hamming distance ``copy_distance`` (``copy``: mirrored, rotated,
    slightly cropped or re-encoded copies; default 31 of 256 bits, ``None`` turns the tier off; its
    score is ``1 - d / 256``, see :mod:`pixdex.dataset.copies`) and image cosine (``semantic``).

    Vectors come from the embedding store ``store`` (default ``out/store``, or without ``out`` the
    folder ``datasets`` in pixdex's data folder), bound to one model: images are keyed by content hash,
    captions by their exact text, so a second call, or one with another mode or threshold, encodes
    nothing. ``model`` defaults to the store's model, or ``pixdex.encoders.registry.DEFAULT_MODEL`` for a
    new store.

    With ``out`` (a folder) it also writes ``kept.*`` (the input's format and columns; webdataset:
    ``kept.txt`` and, with ``write_shards``, shards of the kept samples), ``removed.csv``, ``labels.csv``
    (``labels.parquet`` for parquet or in-memory input), ``report.html`` and ``summary.json``.

    ``ray``: the embedding pass runs on a Ray cluster at this address (``local``, ``auto`` or
    ``HOST:PORT``; :mod:`pixdex.scale.dataset`), with the same store and the same labels.

    Returns a ``pyarrow.Table`` (a pandas ``DataFrame`` when ``data`` is one) with one row per input
    row, in order: ``key``, ``labels`` (``;``-joined), ``duplicate_of`` (the kept row's key), the
    scores that decided it, ``error`` and ``kept``. The run's summary (counts per label, kept/removed,
    timings) is :func:`summary_of` of the result.

    Example::

        import pixdex.dataset
        labels = pixdex.dataset.dedup("demo/manifest.csv", out="dedup-out", model="pixdex-demo")
        print(pixdex.dataset.summary_of(labels)["labels"])
        removed = labels.filter(pyarrow.compute.invert(labels["kept"]))
    """
    from pixdex.dataset.embed import LazyModel, embed_rows
    from pixdex.dataset.store import EmbeddingStore
    from pixdex.indexer.report import Progress, Timings

    t0 = time.monotonic()
    options = L.LabelOptions(
        mode=mode,
        drop_mismatch=drop_mismatch,
        image_threshold=L.IMAGE_THRESHOLD if image_threshold is None else float(image_threshold),
        caption_threshold=L.CAPTION_THRESHOLD if caption_threshold is None else float(caption_threshold),
        keep=keep,
    )
    options.check()
    if copy_distance is not None:
        from pixdex.dedup.find import check_thresholds

        check_thresholds(int(copy_distance), None)
    if batch_size < 1:
        raise PixdexError("--batch-size must be at least 1")
    if ray is not None:
        from pixdex.scale import require_ray

        require_ray()
    is_pandas = _is_pandas(data)
    dataset = _open(data, image_col, caption_col, key_col)
    against_ds = _open(against, image_col, caption_col, key_col) if _given(against) else None
    out_dir = Path(out).expanduser() if out is not None else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise PixdexError(f"--out {out_dir} is a file, not a folder")
    store_dir = _store_dir(store, out_dir)
    timings = Timings()
    with EmbeddingStore.open(store_dir) as cache:
        lazy = LazyModel(cache, model, checkpoint, device, encoder_loader, timings)

        def embed(rows, bar):
            if ray is None:
                return embed_rows(rows, cache, lazy, batch_size, workers, bar)
            from pixdex.scale.dataset import embed_rows_ray

            return embed_rows_ray(rows, cache, lazy, ray, bar)

        bar = Progress(_row_count(dataset), quiet=not progress, description="embedding", unit="rows")
        try:
            emb = embed(dataset.rows(), bar)
        finally:
            bar.close()
        against_emb = None
        if against_ds is not None:
            bar = Progress(_row_count(against_ds), quiet=not progress, description="against", unit="rows")
            try:
                against_emb = embed(against_ds.rows(), bar)
            finally:
                bar.close()
        spec = lazy.spec
    with timings("label"):
        table = _label(emb, against_emb, options, finder, copy_distance)
    summary = table.summary()
    summary.update(
        model=spec,
        copy_distance=copy_distance,
        store=str(store_dir),
        embeddings={
            **emb.counts,
            **({"against_" + k: v for k, v in against_emb.counts.items()} if against_emb else {}),
        },
        unreadable_reasons=_top_reasons(emb.errors),
    )
    files: dict[str, str] = {}
    if out_dir is not None:
        from pixdex.dataset import writers
        from pixdex.dataset.report import write_report

        out_dir.mkdir(parents=True, exist_ok=True)
        with timings("write"):
            kept = writers.write_kept(dataset, ~table.dropped, table.keys, out_dir, write_shards)
            files["kept"] = [str(p) for p in kept]
            files["removed"] = str(writers.write_removed(table, out_dir))
            parquet = dataset.format in ("parquet", "table")
            files["labels"] = str(writers.write_labels(table, out_dir, parquet=parquet))
        with timings("report"):
            files["report"] = str(
                write_report(out_dir / "report.html", table, emb, dataset, against_emb, against_ds, summary)
            )
    summary["files"] = files
    summary["elapsed_s"] = round(time.monotonic() - t0, 3)
    summary["timings_s"] = timings.as_dict()
    if out_dir is not None:
        from pixdex.fsutil import atomic_write

        files["summary"] = str(out_dir / "summary.json")
        atomic_write(out_dir / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return _result(table, summary, is_pandas)


def summary_of(result) -> dict:
    """The summary of a :func:`dedup` run from its returned table (pyarrow or pandas)."""
    attrs = getattr(result, "attrs", None)
    if isinstance(attrs, dict) and "pixdex_summary" in attrs:
        return attrs["pixdex_summary"]
    meta = getattr(getattr(result, "schema", None), "metadata", None) or {}
    if SUMMARY_KEY not in meta:
        raise PixdexError("not a table returned by pixdex.dataset.dedup")
    return json.loads(meta[SUMMARY_KEY])


# ----------------------------------------------------------------------------- helpers


def _given(x) -> bool:
    if x is None:
        return False
    if isinstance(x, (list, tuple)):
        return len(x) > 0
    return True


def _is_pandas(x) -> bool:
    return type(x).__module__.split(".")[0] == "pandas"


def _open(data, image_col, caption_col, key_col):
    from pixdex.dataset.readers import open_dataset, open_table

    if isinstance(data, (str, Path)) or (
        isinstance(data, (list, tuple)) and all(isinstance(p, (str, Path)) for p in data)
    ):
        # missing image files are unreadable rows, not a failed run
        return open_dataset(data, image_col, caption_col, key_col, check_files=False)
    return open_table(data, image_col, caption_col, key_col)


def _store_dir(store, out_dir: Path | None) -> Path:
    if store is not None:
        return Path(store).expanduser()
    if out_dir is not None:
        return out_dir / STORE_SUBDIR
    from pixdex.paths import default_store_dir

    return default_store_dir() / "datasets"


def _row_count(dataset) -> int | None:
    """The number of rows when it is known without reading them (parquet metadata, tables)."""
    if dataset.format == "table":
        return dataset.table.num_rows
    if dataset.format == "parquet":
        from pixdex.dataset.readers import parquet_file

        return sum(parquet_file(s.path).metadata.num_rows for s in dataset.sources)
    return None


def _label(emb, against_emb, options, finder, copy_distance: int | None = None) -> L.LabelTable:
    ok = np.flatnonzero(emb.readable)
    if not len(ok):
        first = min(emb.errors)
        raise PixdexError(
            f"none of the {len(emb)} images can be read (row {emb.keys[first]!r}: {emb.errors[first]})"
        )
    from pixdex.dataset import copies

    hashes = [emb.image_hashes[i] for i in ok]
    use_copy = copy_distance is not None
    against = None
    if against_emb is not None:
        a_ok = np.flatnonzero(against_emb.readable)
        if len(a_ok) < len(against_emb):
            log.warning("%d --against rows have unreadable images: left out", len(against_emb) - len(a_ok))
        against = L.AgainstSet(
            keys=[against_emb.keys[i] for i in a_ok],
            image_vectors=against_emb.image_vectors[a_ok],
            caption_vectors=against_emb.caption_vectors[a_ok],
            captions=[against_emb.captions[i] for i in a_ok],
            image_hashes=[against_emb.image_hashes[i] for i in a_ok],
        )
        if use_copy:
            against.copy_pairs = copies.cross(
                hashes, emb.copy_hashes, against.image_hashes, against_emb.copy_hashes, int(copy_distance)
            )
    sub = L.label_dataset(
        [emb.keys[i] for i in ok],
        emb.image_vectors[ok],
        emb.caption_vectors[ok],
        [emb.captions[i] for i in ok],
        image_hashes=hashes,
        copy_pairs=copies.within(hashes, emb.copy_hashes, int(copy_distance)) if use_copy else None,
        against=against,
        options=options,
        finder=finder,
    )
    return L.with_unreadable(sub, emb.keys, ok, emb.errors)


def _top_reasons(errors: dict, n: int = 8) -> list[dict]:
    from collections import Counter

    c = Counter(str(e).split(":", 1)[0].strip() or str(e) for e in errors.values())
    return [{"reason": r, "rows": k} for r, k in c.most_common(n)]


def _result(table: L.LabelTable, summary: dict, is_pandas: bool):
    import pyarrow as pa

    from pixdex.dataset.writers import label_schema

    cols = table.columns()
    schema = label_schema(pa, cols).with_metadata({SUMMARY_KEY: json.dumps(summary, ensure_ascii=False)})
    result = pa.table(cols, schema=schema)
    if is_pandas:
        df = result.to_pandas()
        df.attrs["pixdex_summary"] = summary
        return df
    return result

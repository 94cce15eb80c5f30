"""``pixdex export``: a store's vectors and metadata in clip-retrieval's layout, or one parquet file.

:func:`export_store` streams every ``ok`` row of a pixdex store (id order) with its vector in one read
transaction (a consistent snapshot, while an indexer may run); :func:`export_dataset` streams a
dataset's rows (its reader, the row order of the dataset) with the image and caption vectors the
dataset embedding store holds for them (``pixdex dataset dedup`` computed them), keyed as that store
keys them: the image bytes' content hash and the caption's text hash. Layout: :mod:`pixdex.exchange.layout`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np

from pixdex.errors import PixdexError
from pixdex.exchange import layout as L

log = logging.getLogger(__name__)

# pixdex store rows: the export's metadata columns (``image_path`` = the row's absolute path) and the
# images columns they come from, in this order; ``id`` is the store's id (FAISS id) at export time.
STORE_COLUMNS = (
    L.C_IMAGE_PATH,
    "id",
    "root",
    "size",
    "mtime_ns",
    "content_hash",
    "width",
    "height",
    "format",
    "taken_at",
    "camera_make",
    "camera_model",
)
DATASET_COLUMNS = (L.C_IMAGE_PATH, "key", "caption", "content_hash", "text_hash")


def store_schema():
    import pyarrow as pa

    return pa.schema(
        [
            (L.C_IMAGE_PATH, pa.string()),
            ("id", pa.int64()),
            ("root", pa.string()),
            ("size", pa.int64()),
            ("mtime_ns", pa.int64()),
            ("content_hash", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("format", pa.string()),
            ("taken_at", pa.timestamp("s")),
            ("camera_make", pa.string()),
            ("camera_model", pa.string()),
        ]
    )


def dataset_schema():
    import pyarrow as pa

    return pa.schema([(c, pa.string()) for c in DATASET_COLUMNS])


def export_store(
    store_dir: Path,
    out: Path,
    fmt: str = "npy",
    shard_rows: int = L.DEFAULT_SHARD_ROWS,
    chunk_rows: int = L.CHUNK_ROWS,
) -> dict:
    """Write every ``ok`` row of the store at ``store_dir`` and its vector to ``out``; return the
    export's description (what ``pixdex_export.json`` holds)."""
    import pyarrow as pa
    from sqlalchemy import select

    from pixdex.storage.contract import STATUS_OK
    from pixdex.storage.schema import ImageRow, VectorRow
    from pixdex.storage.store import Store

    t0 = time.monotonic()
    L.check_format(fmt)
    store = Store.open_readonly(Path(store_dir).expanduser())
    try:
        ident = store.identity
        if ident is None:
            raise PixdexError(f"the store at {store.dir} holds no vectors yet (index a folder first)")
        dim = int(ident["dim"])
        out = L.check_out_dir(out)
        schema = store_schema()
        writer = L.ExportWriter(out, fmt, dim, schema, shard_rows=shard_rows)
        cols = [getattr(ImageRow, c if c != L.C_IMAGE_PATH else "path") for c in STORE_COLUMNS]
        q = (
            select(*cols, VectorRow.vector)
            .join(VectorRow, VectorRow.image_id == ImageRow.id)
            .where(ImageRow.status == STATUS_OK)
            .order_by(ImageRow.id)
            .execution_options(yield_per=chunk_rows)
        )
        failed = store.count(status=None) - store.count()
        try:
            with store.session() as s:
                for part in s.execute(q).partitions(chunk_rows):
                    values = list(zip(*part))
                    meta = pa.Table.from_arrays(
                        [pa.array(values[k], type=schema.field(k).type) for k in range(len(schema))],
                        schema=schema,
                    )
                    vecs = np.frombuffer(b"".join(values[-1]), dtype="<f4").reshape(-1, dim)
                    writer.write(meta, vecs)
        except BaseException:
            writer.abort()
            raise
        info = writer.close(ident, L.KIND_STORE, {"source": str(store.dir), "failed_rows_left_out": failed})
    finally:
        store.close()
    info["elapsed_s"] = round(time.monotonic() - t0, 3)
    info["out"] = str(out)
    return info


def export_dataset(
    data,
    store_dir: Path,
    out: Path,
    fmt: str = "npy",
    image_col: str = "image",
    caption_col: str = "caption",
    key_col: Optional[str] = None,
    shard_rows: int = L.DEFAULT_SHARD_ROWS,
    chunk_rows: int = L.CHUNK_ROWS,
) -> dict:
    """Write a dataset's rows (reading order) with the image and caption vectors the embedding store at
    ``store_dir`` holds for them. Rows whose image cannot be read or decoded are left out (counted);
    rows whose vectors the store lacks are a one-line error (run ``pixdex dataset dedup`` first)."""
    import pyarrow as pa

    from pixdex.dataset.readers import open_dataset
    from pixdex.dataset.store import DB_FILE, EmbeddingStore, caption_hash
    from pixdex.images import DecodeError, content_hash, read_file

    t0 = time.monotonic()
    L.check_format(fmt)
    store_dir = Path(store_dir).expanduser()
    if not (store_dir / DB_FILE).is_file():
        raise PixdexError(f"{store_dir} is not a dataset embedding store (no {DB_FILE})")
    dataset = open_dataset(data, image_col, caption_col, key_col)
    with EmbeddingStore.open(store_dir) as store:
        ident = store.identity
        if ident is None:
            raise PixdexError(f"the embedding store {store_dir} holds no vectors yet")
        dim = int(ident["dim"])
        out = L.check_out_dir(out)
        schema = dataset_schema()
        writer = L.ExportWriter(out, fmt, dim, schema, text=True, shard_rows=shard_rows)
        unreadable = 0
        buf: list[tuple] = []

        def flush() -> None:
            nonlocal unreadable
            if not buf:
                return
            img, errors = store.image_vectors([r[3] for r in buf], dim)
            keep = [k for k in range(len(buf)) if k not in errors]
            unreadable += len(buf) - len(keep)
            rows = [buf[k] for k in keep]
            txt = store.caption_vectors([r[4] for r in rows], dim)
            meta = pa.Table.from_pylist([dict(zip(DATASET_COLUMNS, r)) for r in rows], schema=schema)
            writer.write(meta, img[keep], txt)
            buf.clear()

        try:
            known_images, known_captions = store.known_images(), store.known_captions()
            missing = 0
            for row in dataset.rows():
                try:
                    data_bytes = read_file(str(row.image)) if isinstance(row.image, Path) else row.image
                except DecodeError:
                    unreadable += 1
                    continue
                h, th = content_hash(data_bytes), caption_hash(row.caption)
                if h not in known_images or th not in known_captions:
                    missing += 1
                    continue
                buf.append((row.image_name or str(row.image), row.key, row.caption, h, th))
                if len(buf) >= chunk_rows:
                    flush()
            flush()
            if missing:
                raise PixdexError(
                    f"the embedding store {store_dir} lacks the vectors of {missing} rows: run "
                    f"pixdex dataset dedup on this dataset with --store {store_dir} first"
                )
        except BaseException:
            writer.abort()
            raise
        extra = {"source": str(store_dir), "unreadable_rows_left_out": unreadable}
        info = writer.close(ident, L.KIND_DATASET, extra)
    info["elapsed_s"] = round(time.monotonic() - t0, 3)
    info["out"] = str(out)
    return info

"""The layout of an export folder (``pixdex export`` writes it, ``pixdex import`` reads it): every name here.

Two formats, both with :data:`EXPORT_META` (``pixdex_export.json``: format, kind, the encoder identity,
dim, normalised, count, shards, columns) beside them, written last, so a folder without it is an export
that did not finish:

- ``npy`` (clip-retrieval's layout, read by autofaiss, clip-retrieval's back end and numpy):
  ``img_emb/img_emb_K.npy`` (float32, (n, dim)), ``metadata/metadata_K.parquet`` (``image_path`` and the
  metadata columns, the same rows in the same order) and, for a dataset, ``text_emb/text_emb_K.npy``
  (the caption vectors of the same rows); shard K holds at most ``shard_rows`` rows (clip-retrieval
  writes 1M per shard);
- ``parquet``: one file :data:`PARQUET_FILE` with the metadata columns and ``vector`` (and
  ``text_vector``) as ``fixed_size_list<float32>[dim]`` (LanceDB, pandas, DuckDB, Qdrant and Milvus
  importers take it as it is), written in row groups.

Both are written and read in chunks: memory is one chunk, whatever the number of rows. An ``.npy``
shard is streamed to a temporary file whose fixed-size header is rewritten with the row count when the
shard is closed, then renamed into place.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from pixdex.errors import PixdexError
from pixdex.fsutil import atomic_write

EXPORT_META = "pixdex_export.json"
EXPORT_FORMAT = 1
KIND_STORE = "store"  # a pixdex store: one row per indexed image
KIND_DATASET = "dataset"  # a dataset's rows with the dataset embedding store's image and caption vectors
FORMATS = ("npy", "parquet")

IMG_DIR, IMG_PREFIX = "img_emb", "img_emb_"
TEXT_DIR, TEXT_PREFIX = "text_emb", "text_emb_"
META_DIR, META_PREFIX = "metadata", "metadata_"
PARQUET_FILE = "embeddings.parquet"

C_IMAGE_PATH = "image_path"  # clip-retrieval's name for the image column
C_VECTOR = "vector"  # parquet format: the image vector
C_TEXT_VECTOR = "text_vector"  # parquet format, datasets: the caption vector

DEFAULT_SHARD_ROWS = 1_000_000  # rows per npy shard, as clip-retrieval
CHUNK_ROWS = 4096  # rows read and written at a time
NPY_HEADER_BYTES = 128  # fixed, so that the row count can be written when the shard is closed
NORM_TOLERANCE = 1e-3  # |1 - ||v|||: vectors further from unit length are refused on import


def npy_header(rows: int, dim: int) -> bytes:
    """A version 1.0 ``.npy`` header of exactly :data:`NPY_HEADER_BYTES` bytes for (rows, dim) <f4."""
    d = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}"
    body_len = NPY_HEADER_BYTES - 10  # magic (6) + version (2) + header length (2)
    if len(d) + 1 > body_len:
        raise ValueError("npy header too long")
    body = d + " " * (body_len - len(d) - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + body_len.to_bytes(2, "little") + body.encode("latin1")


class NpyShard:
    """One ``.npy`` file of float32 rows written as a stream (see the module doc)."""

    def __init__(self, path: Path, dim: int):
        self.path, self.dim, self.rows = path, dim, 0
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.f = open(self.tmp, "wb")
        self.f.write(npy_header(0, dim))

    def write(self, v: np.ndarray) -> None:
        v = np.ascontiguousarray(v, dtype="<f4")
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise ValueError(f"rows of {self.dim} values expected, got {v.shape}")
        self.f.write(v.tobytes())
        self.rows += len(v)

    def close(self) -> None:
        self.f.seek(0)
        self.f.write(npy_header(self.rows, self.dim))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


def shard_name(prefix: str, k: int, ext: str) -> str:
    return f"{prefix}{k}.{ext}"


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise PixdexError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return fmt


def check_out_dir(out: Path) -> Path:
    """The export folder: created if missing; one that already holds an export is refused (never
    overwritten)."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise PixdexError(f"--out {out} is a file, not a folder")
    for name in (EXPORT_META, IMG_DIR, TEXT_DIR, META_DIR, PARQUET_FILE):
        if (out / name).exists():
            raise PixdexError(f"{out} already holds an export ({name}); give another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


@dataclass
class ExportWriter:
    """Writes chunks ``(metadata pyarrow.Table, image vectors, caption vectors or None)`` in ``fmt``."""

    out: Path
    fmt: str
    dim: int
    schema: object  # pyarrow.Schema of the metadata columns
    text: bool = False  # a dataset: caption vectors too
    shard_rows: int = DEFAULT_SHARD_ROWS
    count: int = 0
    shards: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_format(self.fmt)
        if self.shard_rows < 1:
            raise PixdexError("the shard size must be at least 1 row")
        self._img: Optional[NpyShard] = None
        self._txt: Optional[NpyShard] = None
        self._meta = None  # pyarrow.parquet.ParquetWriter
        self._meta_tmp: Optional[Path] = None
        self._meta_path: Optional[Path] = None
        if self.fmt == "npy":
            for d in (IMG_DIR, META_DIR) + ((TEXT_DIR,) if self.text else ()):
                (self.out / d).mkdir(exist_ok=True)
        else:
            self._open_parquet(self.out / PARQUET_FILE, self._parquet_schema())

    def _parquet_schema(self):
        import pyarrow as pa

        vec = pa.list_(pa.float32(), self.dim)
        schema = self.schema.append(pa.field(C_VECTOR, vec))
        return schema.append(pa.field(C_TEXT_VECTOR, vec)) if self.text else schema

    def _open_parquet(self, path: Path, schema) -> None:
        import pyarrow.parquet as pq

        self._meta_path = path
        self._meta_tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._meta = pq.ParquetWriter(self._meta_tmp, schema)

    def _close_parquet(self) -> None:
        if self._meta is not None:
            self._meta.close()
            os.replace(self._meta_tmp, self._meta_path)
            self._meta = None

    def _open_shard(self) -> None:
        k = len(self.shards)
        self._img = NpyShard(self.out / IMG_DIR / shard_name(IMG_PREFIX, k, "npy"), self.dim)
        if self.text:
            self._txt = NpyShard(self.out / TEXT_DIR / shard_name(TEXT_PREFIX, k, "npy"), self.dim)
        self._open_parquet(self.out / META_DIR / shard_name(META_PREFIX, k, "parquet"), self.schema)

    def _close_shard(self) -> None:
        if self._img is None:
            return
        self._img.close()
        if self._txt is not None:
            self._txt.close()
        self._close_parquet()
        self.shards.append({"index": len(self.shards), "rows": self._img.rows})
        self._img = self._txt = None

    def write(self, meta, img: np.ndarray, txt: Optional[np.ndarray] = None) -> None:
        import pyarrow as pa

        n = meta.num_rows
        if len(img) != n or (self.text and (txt is None or len(txt) != n)):
            raise ValueError("metadata and vectors differ in length")
        if self.fmt == "parquet":
            cols = [meta.column(i) for i in range(meta.num_columns)]
            cols.append(fixed_list(img, self.dim))
            if self.text:
                cols.append(fixed_list(txt, self.dim))
            self._meta.write_table(pa.Table.from_arrays(cols, schema=self._meta.schema))
            self.count += n
            return
        start = 0
        while start < n:
            if self._img is None:
                self._open_shard()
            take = min(n - start, self.shard_rows - self._img.rows)
            self._img.write(img[start : start + take])
            if self._txt is not None:
                self._txt.write(txt[start : start + take])
            self._meta.write_table(meta.slice(start, take))
            start += take
            self.count += take
            if self._img.rows >= self.shard_rows:
                self._close_shard()

    def close(self, identity: dict, kind: str, extra: Optional[dict] = None) -> dict:
        """Finish the last shard and write :data:`EXPORT_META` (last); return what it holds."""
        if self.fmt == "npy":
            if self._img is None and not self.shards:
                self._open_shard()  # an empty export still has shard 0, so readers find the layout
            self._close_shard()
        else:
            self._close_parquet()
            self.shards = [{"index": 0, "rows": self.count}]
        info = {
            "format": EXPORT_FORMAT,
            "kind": kind,
            "layout": "clip-retrieval" if self.fmt == "npy" else "parquet",
            "model": identity,
            "dim": self.dim,
            "normalised": True,
            "count": self.count,
            "shards": self.shards,
            "columns": list(self.schema.names),
            **(extra or {}),
        }
        atomic_write(self.out / EXPORT_META, json.dumps(info, indent=1, sort_keys=True, ensure_ascii=False))
        return info

    def abort(self) -> None:
        for s in (self._img, self._txt):
            if s is not None:
                s.abort()
        if self._meta is not None:
            self._meta.close()
            self._meta_tmp.unlink(missing_ok=True)


def fixed_list(v: np.ndarray, dim: int):
    """``(n, dim)`` float32 as a pyarrow ``fixed_size_list<float32>[dim]`` array (no copy)."""
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(v, dtype=np.float32).reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, dim)


def list_to_numpy(col, dim: int) -> np.ndarray:
    """A fixed-size-list (or list) column of floats as ``(n, dim)`` float32."""
    import pyarrow as pa

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(len(col), dim)


def read_meta(src: Path) -> dict:
    src = Path(src).expanduser()
    path = src / EXPORT_META
    if not path.is_file():
        raise PixdexError(
            f"{src} holds no {EXPORT_META}: not a pixdex export (or an export that did not finish)"
        )
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PixdexError(f"cannot read {path}: {e}") from e
    if (
        not isinstance(info, dict)
        or info.get("format") != EXPORT_FORMAT
        or info.get("kind")
        not in (
            KIND_STORE,
            KIND_DATASET,
        )
    ):
        raise PixdexError(f"{path} is not a pixdex export of format {EXPORT_FORMAT}")
    if not isinstance(info.get("model"), dict) or not isinstance(info.get("dim"), int):
        raise PixdexError(f"{path} does not say which model its vectors belong to")
    return info


def iter_export(src: Path, info: dict, chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple]:
    """``(metadata pyarrow.Table, image vectors (n, dim), caption vectors or None)`` in export order."""
    import pyarrow.parquet as pq

    src = Path(src).expanduser()
    dim, text = int(info["dim"]), info["kind"] == KIND_DATASET
    if info.get("layout") == "parquet":
        pf = pq.ParquetFile(src / PARQUET_FILE)
        for b in pf.iter_batches(batch_size=chunk_rows):
            meta = b.drop_columns([c for c in (C_VECTOR, C_TEXT_VECTOR) if c in b.schema.names])
            txt = list_to_numpy(b.column(C_TEXT_VECTOR), dim) if text else None
            yield _table(meta), list_to_numpy(b.column(C_VECTOR), dim), txt
        return
    for shard in info.get("shards", []):
        k = int(shard["index"])
        img = _load_npy(src / IMG_DIR / shard_name(IMG_PREFIX, k, "npy"), dim)
        txt = _load_npy(src / TEXT_DIR / shard_name(TEXT_PREFIX, k, "npy"), dim) if text else None
        pf = pq.ParquetFile(src / META_DIR / shard_name(META_PREFIX, k, "parquet"))
        if pf.metadata.num_rows != len(img) or (txt is not None and len(txt) != len(img)):
            raise PixdexError(f"shard {k} of {src}: metadata and vectors differ in length")
        start = 0
        for b in pf.iter_batches(batch_size=chunk_rows):
            n = b.num_rows
            yield (
                _table(b),
                np.asarray(img[start : start + n], np.float32),
                None if txt is None else np.asarray(txt[start : start + n], np.float32),
            )
            start += n


def _table(batch):
    import pyarrow as pa

    return pa.Table.from_batches([batch])


def _load_npy(path: Path, dim: int) -> np.ndarray:
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise PixdexError(f"cannot read {path}: {e}") from e
    if a.ndim != 2 or a.shape[1] != dim:
        raise PixdexError(f"{path} holds an array of shape {a.shape}, not (n, {dim})")
    return a


def check_unit(v: np.ndarray, where: str) -> None:
    """Refuse vectors that are not L2-normalised (the store and retrieval assume unit vectors)."""
    if len(v) == 0:
        return
    norms = np.linalg.norm(v, axis=1)
    bad = np.abs(norms - 1.0) > NORM_TOLERANCE
    if bad.any():
        raise PixdexError(
            f"{where}: {int(bad.sum())} vectors are not L2-normalised (norm {float(norms[bad][0]):.4f})"
        )

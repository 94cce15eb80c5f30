"""Outputs of a dataset dedup: ``kept.*`` in the input's own format, ``removed.csv``, ``labels.csv/.parquet``.

``kept.*`` is written by streaming the input again and copying the kept rows as they are: CSV/TSV rows
with the same header and delimiter, JSONL lines byte for byte, parquet record batches under the file's
own arrow schema (types and metadata preserved). Image paths stay as written, i.e. relative to the
input manifest's folder. One input gives ``kept.<ext>``; several give ``kept/<input name>`` each.
An in-memory table (the Python API) gives ``kept.parquet``. Webdataset input gives ``kept.txt`` (kept keys, one per line) and, with ``write_shards``, shards holding
only the kept samples in ``kept/<shard name>``. Every file is written to a temporary name and renamed;
an output that would overwrite an input is refused.
"""

from __future__ import annotations

import csv
import io
import logging
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pixdex.dataset.readers import (
    Dataset,
    Source,
    iter_parquet_batches,
    iter_records,
    iter_tar_samples,
    parquet_file,
)
from pixdex.errors import PixdexError
from pixdex.fsutil import atomic_path, atomic_write

log = logging.getLogger(__name__)


def write_kept(
    dataset: Dataset, keep: np.ndarray, keys: Sequence[str], out_dir, write_shards: bool = False
) -> list[Path]:
    """Write the kept rows (``keep[i]`` for the dataset's ``i``-th row); return the files written."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    keep = np.asarray(keep, bool)
    inputs = {s.path.resolve() for s in dataset.sources}
    written: list[Path] = []
    if dataset.format == "webdataset":
        written.append(_guard(out / "kept.txt", inputs))
        atomic_write(written[-1], "".join(f"{k}\n" for k, kept in zip(keys, keep) if kept))
        if not write_shards:
            return written
    start = 0
    names = _output_names(dataset.sources, out)
    for source, target in zip(dataset.sources, names):
        target = _guard(target, inputs)
        target.parent.mkdir(parents=True, exist_ok=True)
        writer = {"csv": _copy_csv, "tsv": _copy_csv, "jsonl": _copy_jsonl, "parquet": _copy_parquet}.get(
            source.format, _copy_tar
        )
        if source.format == "table":

            def writer(source, keep, start, tmp, table=dataset.table):
                return _copy_table(table, keep, start, tmp)

        with atomic_path(target) as tmp:
            start = writer(source, keep, start, tmp)
        written.append(target)
    if start != len(keep):
        raise PixdexError(
            f"the dataset has {start} rows now, {len(keep)} when it was labelled: was it changed?"
        )
    log.info("kept %d of %d rows: %s", int(keep.sum()), len(keep), ", ".join(map(str, written)))
    return written


def _output_names(sources: Sequence[Source], out: Path) -> list[Path]:
    if sources[0].format == "table":
        return [out / "kept.parquet"]
    if len(sources) == 1 and sources[0].format != "webdataset":
        return [out / f"kept{sources[0].path.suffix.lower()}"]
    names, seen = [], set()
    for i, s in enumerate(sources):
        name = s.path.name if s.path.name not in seen else f"{i}-{s.path.name}"
        seen.add(name)
        names.append(out / "kept" / name)
    return names


def _guard(target: Path, inputs: set[Path]) -> Path:
    if target.resolve() in inputs:
        raise PixdexError(f"{target} is an input of this run; choose another --out folder")
    return target


def _changed(source: Source) -> PixdexError:
    return PixdexError(f"{source.path} has more rows now than when it was labelled: was it changed?")


def _take(keep: np.ndarray, i: int, source: Source) -> bool:
    if i >= len(keep):
        raise _changed(source)
    return bool(keep[i])


def _copy_csv(source: Source, keep: np.ndarray, start: int, tmp: Path) -> int:
    delimiter = "\t" if source.format == "tsv" else ","
    with open(source.path, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f, delimiter=delimiter))
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        w.writerow(header)
        for rec in iter_records(source.path, source.format):
            if _take(keep, start, source):
                w.writerow(rec.raw)
            start += 1
    return start


def _copy_jsonl(source: Source, keep: np.ndarray, start: int, tmp: Path) -> int:
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        for rec in iter_records(source.path, source.format):
            if _take(keep, start, source):
                f.write(rec.raw if rec.raw.endswith("\n") else rec.raw + "\n")
            start += 1
    return start


def _copy_parquet(source: Source, keep: np.ndarray, start: int, tmp: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_file(source.path).schema_arrow
    with pq.ParquetWriter(tmp, schema) as w:
        for batch in iter_parquet_batches(source.path):
            end = start + batch.num_rows
            if end > len(keep):
                raise _changed(source)
            w.write_batch(batch.filter(pa.array(keep[start:end])))
            start = end
    return start


def _copy_table(table, keep: np.ndarray, start: int, tmp: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    end = start + table.num_rows
    if end > len(keep):
        raise PixdexError("the table has more rows now than when it was labelled")
    pq.write_table(table.filter(pa.array(keep[start:end])), tmp)
    return end


def _copy_tar(source: Source, keep: np.ndarray, start: int, tmp: Path) -> int:
    with tarfile.open(tmp, "w") as out:
        for _key, members in iter_tar_samples(source.path):
            if _take(keep, start, source):
                for info, data in members:
                    out.addfile(info, io.BytesIO(data))
            start += 1
    return start


def write_table(
    table, path, rows: np.ndarray | None = None, with_kept: bool = True, chunk: int = 65536
) -> Path:
    """``table.columns(rows)`` as ``.csv`` (None -> empty) or ``.parquet`` (None -> null), ``chunk`` rows
    at a time (memory bounded)."""
    path = Path(path)
    rows = np.arange(len(table)) if rows is None else np.asarray(rows)
    parquet = path.suffix.lower() == ".parquet"
    if parquet:
        import pyarrow as pa
        import pyarrow.parquet as pq
    with atomic_path(path) as tmp:
        writer = f = None
        try:
            for s in range(0, max(len(rows), 1), chunk):
                cols = table.columns(rows[s : s + chunk])
                if not with_kept:
                    del cols["kept"]
                if parquet:
                    t = pa.table(cols, schema=label_schema(pa, cols))
                    writer = writer or pq.ParquetWriter(tmp, t.schema)
                    writer.write_table(t)
                else:
                    if f is None:
                        f = open(tmp, "w", newline="", encoding="utf-8")
                        w = csv.writer(f, lineterminator="\n")
                        w.writerow(list(cols))
                    for row in zip(*cols.values()):
                        w.writerow("" if v is None else v for v in row)
        finally:
            if writer is not None:
                writer.close()
            if f is not None:
                f.close()
    return path


def label_schema(pa, cols: dict):
    """Fixed column types, so that chunks (and all-null columns) agree."""
    types = {"kept": pa.bool_()}
    return pa.schema([(c, types.get(c, pa.float64() if c.endswith("_score") else pa.string())) for c in cols])


def write_removed(table, out_dir) -> Path:
    """``removed.csv``: the dropped rows; key, labels, duplicate_of, then the evidence."""
    return write_table(table, Path(out_dir) / "removed.csv", np.flatnonzero(table.dropped), with_kept=False)


def write_labels(table, out_dir, parquet: bool = False) -> Path:
    """``labels.csv`` (or ``labels.parquet``): every row, the columns of ``removed.csv`` plus ``kept``."""
    return write_table(table, Path(out_dir) / ("labels.parquet" if parquet else "labels.csv"))

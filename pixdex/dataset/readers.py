"""Streaming readers for image-caption datasets: CSV/TSV, JSONL and parquet manifests, webdataset shards.

This is the one manifest reader of pixdex: ``pixdex train`` (``pixdex.training.manifest``) reads its
records through ``iter_records`` too. Everything streams: CSV and JSONL line by line, parquet in record
batches of ``PARQUET_BATCH`` rows, webdataset ``.tar`` shards with ``tarfile`` in stream mode (``r|*``,
nothing extracted to disk), so memory does not grow with the dataset.

Manifests: one row per image-caption pair; image paths are relative to the manifest's folder (absolute
paths are kept); an image cell may also hold the encoded bytes (img2dataset's parquet output) or a
``{"bytes", "path"}`` struct (Hugging Face ``Image`` columns). Webdataset shards as img2dataset writes
them: consecutive members ``KEY.jpg`` (or ``.jpeg``/``.png``/``.webp``), ``KEY.txt`` (the caption) and
optionally ``KEY.json`` (the row's metadata, kept as the record).

A row's key is the ``key_col`` value when given, else the webdataset sample key, else the 1-based row
number (``"<file name>:<row>"`` when several files are read). Keys must be unique.
"""

from __future__ import annotations

import csv
import json
import logging
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pixdex.errors import PixdexError

log = logging.getLogger(__name__)

MANIFEST_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}
FORMATS = {**MANIFEST_FORMATS, ".tar": "webdataset"}
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
PARQUET_BATCH = 8192


@dataclass(frozen=True)
class Record:
    """One manifest row as read: 1-based data row, ``" (line L)"`` or ``""``, the fields, and the raw
    form writers copy back (the CSV values list, the JSONL line; ``None`` for parquet)."""

    row: int
    where: str
    data: dict
    raw: object = None


@dataclass(frozen=True)
class Source:
    path: Path
    format: str  # csv | tsv | jsonl | parquet | webdataset


@dataclass(frozen=True)
class DatasetRow:
    index: int  # 0-based position over all sources, in reading order
    key: str
    image: Path | bytes  # a resolved file path, or the encoded image
    image_name: str  # the path as written, or the shard member's name (for reports)
    caption: str  # as given (labels normalise it)
    record: dict  # the original row (webdataset: the sample's JSON, or {})
    source: Source
    row: int  # 1-based row (webdataset: sample) within its source


# ----------------------------------------------------------------------------- manifests (records)


def resolve_manifest(path) -> Path:
    """The manifest file ``path`` names (a folder means its ``manifest.csv/.tsv/.jsonl/.parquet``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = [path / f"manifest{ext}" for ext in MANIFEST_FORMATS if (path / f"manifest{ext}").is_file()]
        if not found:
            raise PixdexError(f"{path} is a folder without a manifest.csv/.jsonl/.parquet")
        path = found[0]
    if not path.is_file():
        raise PixdexError(f"manifest {path} does not exist")
    manifest_format(path)
    return path


def manifest_format(path: Path) -> str:
    fmt = MANIFEST_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise PixdexError(
            f"manifest {path}: unknown format {path.suffix!r} (expected .csv, .jsonl or .parquet)"
        )
    return fmt


def iter_records(path: Path, fmt: str) -> Iterator[Record]:
    """The rows of a manifest, streaming; bad rows raise a ``PixdexError`` naming file, row and line."""
    if fmt in ("csv", "tsv"):
        yield from _csv_records(path, "\t" if fmt == "tsv" else ",")
    elif fmt == "jsonl":
        yield from _jsonl_records(path)
    elif fmt == "parquet":
        yield from _parquet_records(path)
    else:  # pragma: no cover - callers pass a known format
        raise ValueError(fmt)


def csv_header(path: Path, delimiter: str) -> list[str]:
    """The header row of a CSV/TSV manifest (stripped names), as the reader sees it."""
    with _open_text(path) as f:
        header = next(csv.reader(f, delimiter=delimiter), None)
    if header is None:
        raise PixdexError(f"manifest {path} is empty")
    return [h.strip() for h in header]


def _open_text(path: Path):
    return open(path, newline="", encoding="utf-8-sig")


def _csv_records(path: Path, delimiter: str) -> Iterator[Record]:
    try:
        with _open_text(path) as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise PixdexError(f"manifest {path} is empty")
            header = [h.strip() for h in header]
            dup = sorted({h for h in header if header.count(h) > 1})
            if dup:
                raise PixdexError(f"manifest {path}: column {dup[0]!r} appears twice in the header")
            row = 0
            line = reader.line_num
            for values in reader:
                start, line = line + 1, reader.line_num
                if not values or all(not v.strip() for v in values):
                    continue
                row += 1
                if len(values) != len(header):
                    raise PixdexError(
                        f"manifest {path}, row {row} (line {start}): {len(values)} fields, the header has {len(header)}"
                    )
                yield Record(row, f" (line {start})", dict(zip(header, values)), values)
    except UnicodeDecodeError as e:
        raise PixdexError(f"manifest {path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except csv.Error as e:
        raise PixdexError(f"manifest {path}: bad CSV ({e})") from e


def _jsonl_records(path: Path) -> Iterator[Record]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            row = 0
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row += 1
                try:
                    data = json.loads(line)
                except ValueError as e:
                    raise PixdexError(f"manifest {path}, row {row} (line {line_no}): bad JSON ({e})") from e
                if not isinstance(data, dict):
                    raise PixdexError(f"manifest {path}, row {row} (line {line_no}): not a JSON object")
                yield Record(row, f" (line {line_no})", data, line)
    except UnicodeDecodeError as e:
        raise PixdexError(f"manifest {path}: not UTF-8 text ({e.reason} at byte {e.start})") from e


def parquet_file(path: Path):
    """``pyarrow.parquet.ParquetFile`` of ``path`` (one clear error without pyarrow or for a bad file)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise PixdexError("reading parquet manifests needs pyarrow (pip install pixdex[parquet])") from e
    try:
        return pq.ParquetFile(path)
    except (OSError, ValueError) as e:
        raise PixdexError(f"manifest {path}: cannot read parquet ({e})") from e


def iter_parquet_batches(path: Path):
    """The file's record batches of at most ``PARQUET_BATCH`` rows, in order."""
    pf = parquet_file(path)
    try:
        yield from pf.iter_batches(batch_size=PARQUET_BATCH)
    except (OSError, ValueError) as e:
        raise PixdexError(f"manifest {path}: cannot read parquet ({e})") from e


def _parquet_records(path: Path) -> Iterator[Record]:
    row = 0
    for batch in iter_parquet_batches(path):
        for data in batch.to_pylist():
            row += 1
            yield Record(row, "", data)


# ----------------------------------------------------------------------------- webdataset shards


def sample_key(member_name: str) -> tuple[str, str] | None:
    """``("dir/000001", "jpg")`` for ``dir/000001.jpg`` (webdataset: the key ends at the basename's
    first dot); ``None`` for a name without an extension."""
    folder, _, base = member_name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return None
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def iter_tar_samples(path: Path) -> Iterator[tuple[str, list[tuple[tarfile.TarInfo, bytes]]]]:
    """``(key, [(member, bytes), ...])`` per sample of a shard, streaming: a sample is a run of
    consecutive regular members sharing a key (as webdataset and img2dataset write them)."""
    key, members = None, []
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tf:
            for info in tf:
                if not info.isfile():
                    continue
                split = sample_key(info.name)
                if split is None:
                    continue
                f = tf.extractfile(info)
                data = f.read() if f is not None else b""
                if split[0] != key:
                    if members:
                        yield key, members
                    key, members = split[0], []
                members.append((info, data))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise PixdexError(f"shard {path}: cannot read tar ({e})") from e
    if members:
        yield key, members


# ----------------------------------------------------------------------------- datasets


class Dataset:
    """One dataset given as one or more files of the same format; ``rows()`` streams its rows."""

    def __init__(
        self,
        sources: Sequence[Source],
        image_col: str = "image",
        caption_col: str = "caption",
        key_col: str | None = None,
        check_files: bool = True,
    ):
        self.sources = list(sources)
        self.image_col, self.caption_col, self.key_col = image_col, caption_col, key_col
        self.check_files = check_files

    @property
    def format(self) -> str:
        return self.sources[0].format

    def rows(self) -> Iterator[DatasetRow]:
        """Every row of every source, in order; raises a ``PixdexError`` on a bad row or a repeated key."""
        seen: set[str] = set()
        index = 0
        for source in self.sources:
            it = self._tar_rows(source) if source.format == "webdataset" else self._manifest_rows(source)
            for row, key, image, name, caption, record in it:
                if key in seen:
                    raise PixdexError(
                        f"{source.path}, row {row}: key {key!r} repeats an earlier row's"
                        + (f" (column {self.key_col!r} must be unique)" if self.key_col else "")
                    )
                seen.add(key)
                yield DatasetRow(index, key, image, name, caption, record, source, row)
                index += 1
        if index == 0:
            raise PixdexError(f"{', '.join(str(s.path) for s in self.sources)}: no rows")
        log.info("dataset: %d rows from %d file(s)", index, len(self.sources))

    def _row_key(self, source: Source, row: int, record: dict, where: str, default: str | None) -> str:
        if self.key_col is not None:
            value = record.get(self.key_col)
            if value is None or str(value).strip() == "":
                raise PixdexError(f"{source.path}, row {row}{where}: no {self.key_col!r} value (--key-col)")
            return str(value)
        if default is not None:
            return default
        return str(row) if len(self.sources) == 1 else f"{source.path.name}:{row}"

    def _records(self, source: Source) -> Iterator[Record]:
        return iter_records(source.path, source.format)

    def _manifest_rows(self, source: Source):
        path = source.path
        root = self.root if source.format == "table" else source.path.parent.resolve()
        checked = False
        for rec in self._records(source):
            data = rec.data
            if not checked:
                wanted = [self.image_col, self.caption_col] + ([self.key_col] if self.key_col else [])
                missing = [c for c in wanted if c not in data]
                if missing:
                    raise PixdexError(
                        f"manifest {path}: no column {missing[0]!r} (columns: {', '.join(map(str, data)) or 'none'}; "
                        f"choose with --image-col / --caption-col / --key-col)"
                    )
                checked = source.format != "jsonl"  # JSONL rows each carry their own keys

            def bad(why: str, rec=rec) -> PixdexError:
                return PixdexError(f"manifest {path}, row {rec.row}{rec.where}: {why}")

            image, name = _image_cell(data.get(self.image_col), root, bad)
            if self.check_files and isinstance(image, Path) and not image.is_file():
                raise bad(f"image file {image} does not exist")
            caption = data.get(self.caption_col)
            if not isinstance(caption, str) or not caption.strip():
                raise bad(f"empty or non-text caption {caption!r}")
            yield rec.row, self._row_key(source, rec.row, data, rec.where, None), image, name, caption, data

    def _tar_rows(self, source: Source):
        for row, (key, members) in enumerate(iter_tar_samples(source.path), 1):
            by_ext = {sample_key(info.name)[1]: (info, data) for info, data in members}
            where = f" (sample {key!r})"

            def bad(why: str, row=row, where=where) -> PixdexError:
                return PixdexError(f"shard {source.path}, row {row}{where}: {why}")

            image = next((by_ext[e] for e in IMAGE_EXTS if e in by_ext), None)
            if image is None:
                raise bad(f"no image member (.{', .'.join(IMAGE_EXTS)})")
            record = {}
            if "json" in by_ext:
                try:
                    record = json.loads(by_ext["json"][1])
                except ValueError as e:
                    raise bad(f"bad JSON in {by_ext['json'][0].name} ({e})") from e
                if not isinstance(record, dict):
                    raise bad(f"{by_ext['json'][0].name} is not a JSON object")
            if "txt" in by_ext:
                try:
                    caption = by_ext["txt"][1].decode("utf-8")
                except UnicodeDecodeError as e:
                    raise bad(f"{by_ext['txt'][0].name} is not UTF-8 text") from e
            else:
                caption = record.get(self.caption_col)
            if not isinstance(caption, str) or not caption.strip():
                raise bad("no caption (.txt member, or a non-empty caption in the .json)")
            key = self._row_key(source, row, record, where, key)
            yield row, key, image[1], image[0].name, caption, record


class TableDataset(Dataset):
    """A dataset held in memory as a ``pyarrow.Table`` (a pandas DataFrame is converted to one): one
    source named ``<table>`` of format ``table``; image paths are relative to ``root`` (default: the
    current folder), image cells may hold bytes. Keys: ``key_col``, else the 1-based row number."""

    def __init__(self, table, image_col="image", caption_col="caption", key_col=None, root=None):
        super().__init__(
            [Source(Path("<table>"), "table")], image_col, caption_col, key_col, check_files=False
        )
        self.table = table
        self.root = Path(root or Path.cwd()).resolve()

    def _records(self, source: Source) -> Iterator[Record]:
        row = 0
        for batch in self.table.to_batches(max_chunksize=PARQUET_BATCH):
            for data in batch.to_pylist():
                row += 1
                yield Record(row, "", data)


def open_table(table, image_col="image", caption_col="caption", key_col=None, root=None) -> TableDataset:
    """A :class:`TableDataset` over a ``pyarrow.Table`` or a pandas ``DataFrame``."""
    try:
        import pyarrow as pa
    except ImportError as e:
        raise PixdexError("in-memory tables need pyarrow (pip install pixdex[parquet])") from e
    if not isinstance(table, pa.Table):
        if not hasattr(table, "to_dict") or not hasattr(table, "columns"):
            raise PixdexError(
                f"cannot read a {type(table).__name__} as a dataset (a path, a list of paths, "
                "a pandas DataFrame or a pyarrow Table)"
            )
        try:
            table = pa.Table.from_pandas(table, preserve_index=False)
        except (TypeError, ValueError, pa.ArrowException) as e:
            raise PixdexError(f"cannot convert the DataFrame to a table: {e}") from e
    if table.num_rows == 0:
        raise PixdexError("the table has no rows")
    return TableDataset(table, image_col, caption_col, key_col, root)


def _image_cell(value, root: Path, bad) -> tuple[Path | bytes, str]:
    """A manifest's image cell: a path (relative to the manifest's folder), bytes, or {bytes, path}."""
    if isinstance(value, dict):  # Hugging Face datasets' Image struct
        if value.get("bytes"):
            return bytes(value["bytes"]), str(value.get("path") or "")
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        if not value:
            raise bad("empty image bytes")
        return bytes(value), ""
    if not isinstance(value, str) or not value.strip():
        raise bad(f"empty or non-text image path {value!r}")
    p = Path(value.strip()).expanduser()
    return (p if p.is_absolute() else root / p), value


def open_dataset(
    data,
    image_col: str = "image",
    caption_col: str = "caption",
    key_col: str | None = None,
    check_files: bool = True,
) -> Dataset:
    """A ``Dataset`` over ``data``: one path or several, each a manifest file, a ``.tar`` shard, or a
    folder (its ``manifest.*``, else its ``*.tar`` shards in name order). All files must share one format."""
    paths = [data] if isinstance(data, (str, Path)) else list(data)
    if not paths:
        raise PixdexError("no dataset given")
    sources: list[Source] = []
    for p in paths:
        p = Path(p).expanduser()
        if p.is_dir():
            shards = sorted(p.glob("*.tar"))
            has_manifest = any((p / f"manifest{ext}").is_file() for ext in MANIFEST_FORMATS)
            if shards and not has_manifest:
                sources += [Source(s, "webdataset") for s in shards]
                continue
            p = resolve_manifest(p)
        if not p.is_file():
            raise PixdexError(f"dataset file {p} does not exist")
        fmt = FORMATS.get(p.suffix.lower())
        if fmt is None:
            raise PixdexError(
                f"{p}: unknown format {p.suffix!r} (expected .csv, .tsv, .jsonl, .parquet or .tar)"
            )
        sources.append(Source(p, fmt))
    formats = sorted({s.format for s in sources})
    if len(formats) > 1:
        raise PixdexError(f"dataset files mix formats ({', '.join(formats)}); give one format per run")
    return Dataset(sources, image_col, caption_col, key_col, check_files)

"""Training manifests: CSV, JSONL or parquet with an image-path column and a caption column.

Image paths are relative to the manifest's folder (absolute paths are kept). Every bad row is reported
as one ``PixdexError`` naming the file and the row (1-based data row; for CSV and JSONL also the line),
so that nothing is trained on silently half-read data.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pixdex.errors import PixdexError

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


@dataclass(frozen=True)
class Sample:
    path: Path
    caption: str
    row: int  # 1-based data row in the manifest


def read_manifest(
    path, image_col: str = "image", caption_col: str = "caption", check_files: bool = True
) -> list[Sample]:
    """All rows of the manifest as ``Sample``s, in file order."""
    path = Path(path).expanduser()
    if path.is_dir():
        candidates = [path / f"manifest{ext}" for ext in FORMATS]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise PixdexError(f"{path} is a folder without a manifest.csv/.jsonl/.parquet")
        path = found[0]
    if not path.is_file():
        raise PixdexError(f"manifest {path} does not exist")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise PixdexError(
            f"manifest {path}: unknown format {path.suffix!r} (expected .csv, .jsonl or .parquet)"
        )
    root = path.parent.resolve()
    samples: list[Sample] = []
    seen_columns = False
    for row, where, record in _rows(path, fmt):
        if not seen_columns:
            missing = [c for c in (image_col, caption_col) if c not in record]
            if missing:
                raise PixdexError(
                    f"manifest {path}: no column {missing[0]!r} (columns: {', '.join(map(str, record)) or 'none'}; "
                    f"choose with --image-col / --caption-col)"
                )
            seen_columns = fmt != "jsonl"  # JSONL rows each carry their own keys
        samples.append(_sample(path, root, row, where, record, image_col, caption_col, check_files))
    if not samples:
        raise PixdexError(f"manifest {path} has no rows")
    log.info("manifest %s: %d rows", path, len(samples))
    return samples


def _sample(path, root, row, where, record, image_col, caption_col, check_files) -> Sample:
    def bad(why: str) -> PixdexError:
        return PixdexError(f"manifest {path}, row {row}{where}: {why}")

    if image_col not in record:
        raise bad(f"no {image_col!r} field")
    if caption_col not in record:
        raise bad(f"no {caption_col!r} field")
    image, caption = record[image_col], record[caption_col]
    if not isinstance(image, str) or not image.strip():
        raise bad(f"empty or non-text image path {image!r}")
    if not isinstance(caption, str) or not caption.strip():
        raise bad(f"empty or non-text caption {caption!r}")
    p = Path(image.strip()).expanduser()
    if not p.is_absolute():
        p = root / p
    if check_files and not p.is_file():
        raise bad(f"image file {p} does not exist")
    return Sample(p, " ".join(caption.split()), row)


def _rows(path: Path, fmt: str) -> Iterator[tuple[int, str, dict]]:
    """``(data row, " (line L)" or "", record)`` for each row."""
    if fmt in ("csv", "tsv"):
        yield from _csv_rows(path, "\t" if fmt == "tsv" else ",")
    elif fmt == "jsonl":
        yield from _jsonl_rows(path)
    else:
        yield from _parquet_rows(path)


def _csv_rows(path: Path, delimiter: str):
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise PixdexError(f"manifest {path} is empty")
            header = [h.strip() for h in header]
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
                yield row, f" (line {start})", dict(zip(header, values))
    except UnicodeDecodeError as e:
        raise PixdexError(f"manifest {path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except csv.Error as e:
        raise PixdexError(f"manifest {path}: bad CSV ({e})") from e


def _jsonl_rows(path: Path):
    try:
        with open(path, encoding="utf-8-sig") as f:
            row = 0
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row += 1
                try:
                    record = json.loads(line)
                except ValueError as e:
                    raise PixdexError(f"manifest {path}, row {row} (line {line_no}): bad JSON ({e})") from e
                if not isinstance(record, dict):
                    raise PixdexError(f"manifest {path}, row {row} (line {line_no}): not a JSON object")
                yield row, f" (line {line_no})", record
    except UnicodeDecodeError as e:
        raise PixdexError(f"manifest {path}: not UTF-8 text ({e.reason} at byte {e.start})") from e


def _parquet_rows(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise PixdexError("reading parquet manifests needs pyarrow (pip install pixdex[parquet])") from e
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:
        raise PixdexError(f"manifest {path}: cannot read parquet ({e})") from e
    columns = table.column_names
    data = {c: table.column(c).to_pylist() for c in columns}
    for i in range(table.num_rows):
        yield i + 1, "", {c: data[c][i] for c in columns}

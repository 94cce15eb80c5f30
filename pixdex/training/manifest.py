"""Training manifests: CSV, JSONL or parquet with an image-path column and a caption column.

Records are read by ``pixdex.dataset.readers`` (the one manifest reader, streaming).

Image paths are relative to the manifest's folder (absolute paths are kept). Every bad row is reported
as one ``PixdexError`` naming the file and the row (1-based data row; for CSV and JSONL also the line),
so that nothing is trained on silently half-read data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pixdex.dataset.readers import iter_records, manifest_format, resolve_manifest
from pixdex.errors import PixdexError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    path: Path
    caption: str
    row: int  # 1-based data row in the manifest


def read_manifest(
    path, image_col: str = "image", caption_col: str = "caption", check_files: bool = True
) -> list[Sample]:
    """All rows of the manifest as ``Sample``s, in file order."""
    path = resolve_manifest(path)
    fmt = manifest_format(path)
    root = path.parent.resolve()
    samples: list[Sample] = []
    seen_columns = False
    for rec in iter_records(path, fmt):
        row, where, record = rec.row, rec.where, rec.data
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

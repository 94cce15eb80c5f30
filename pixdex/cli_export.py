"""``pixdex export`` and ``pixdex import``: embeddings out of a store and back (pixdex.exchange)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pixdex.cli_common import StoreOpt, echo_json, store_dir

FormatOpt = typer.Option("npy", "--format", help="npy (clip-retrieval's layout) or parquet (one file).")


def export_cmd(
    out: Path = typer.Option(..., "--out", help="Folder to write (must not hold an export yet)."),
    store: Optional[Path] = StoreOpt,
    fmt: str = FormatOpt,
    dataset: list[Path] = typer.Option(
        [],
        "--dataset",
        help="Export this dataset's rows with the vectors of the dataset embedding store --store.",
    ),
    image_col: str = typer.Option("image", "--image-col", help="--dataset: column of images."),
    caption_col: str = typer.Option("caption", "--caption-col", help="--dataset: column of captions."),
    key_col: Optional[str] = typer.Option(None, "--key-col", help="--dataset: column of row keys."),
    shard_rows: int = typer.Option(1_000_000, "--shard-rows", help="npy: rows per shard."),
    json_out: bool = typer.Option(False, "--json", help="Print the export's description as JSON."),
):
    """Write the vectors and metadata of a store (or of a dataset) for autofaiss, LanceDB, pandas, ...

    npy: img_emb/img_emb_K.npy + metadata/metadata_K.parquet (+ text_emb/ for a dataset), the layout of
    clip-retrieval; parquet: embeddings.parquet with a vector column. pixdex_export.json names the model.
    """
    from pixdex.exchange.export import export_dataset, export_store

    if dataset:
        if store is None:
            raise _error("--dataset needs --store: the dataset embedding store that holds its vectors")
        info = export_dataset(dataset, store, out, fmt, image_col, caption_col, key_col, shard_rows)
    else:
        info = export_store(store_dir(store), out, fmt, shard_rows)
    if json_out:
        echo_json(info)
    else:
        typer.echo(f"exported {info['count']} rows ({info['layout']}, dim {info['dim']}) to {info['out']}")


def import_cmd(
    src: Path = typer.Argument(..., help="A folder written by pixdex export."),
    store: Optional[Path] = StoreOpt,
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Read an export back into a store (a store export) or a dataset embedding store (a dataset export).

    Vectors of another model than the store's are refused.
    """
    from pixdex.exchange.layout import KIND_DATASET, read_meta
    from pixdex.exchange.load import import_export

    info = read_meta(src)
    if info["kind"] == KIND_DATASET and store is None:
        raise _error("a dataset export goes into a dataset embedding store: give --store")
    summary = import_export(src, store_dir(store))
    if json_out:
        echo_json(summary)
    elif info["kind"] == KIND_DATASET:
        typer.echo(
            f"imported {summary['rows']} rows: {summary['images_added']} image and "
            f"{summary['captions_added']} caption vectors added to {summary['store']}"
        )
    else:
        typer.echo(
            f"imported {summary['added']} rows into {summary['store']} "
            f"({summary['skipped_existing']} already there)"
        )


def _error(message: str):
    from pixdex.errors import PixdexError

    return PixdexError(message)

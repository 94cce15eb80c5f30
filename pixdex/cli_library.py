"""``pixdex forget ROOT``: take a root out of a store (its rows and vectors; never the user's files)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pixdex.cli_common import StoreOpt, echo_json, store_dir


def forget(
    root: Path = typer.Argument(..., help="A root folder of the store (as indexed; a link to it works too)."),
    store: Optional[Path] = StoreOpt,
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Remove a root's images from the store (rows, vectors, FAISS); the files themselves are not touched."""
    from pixdex.storage.roots import forget_root

    result = forget_root(store_dir(store), str(root))
    if json_out:
        echo_json(result)
    else:
        typer.echo(
            f"forgot {result['root']}: {result['removed']} images removed from the store {result['store']} "
            f"({result['total']} searchable left); no file was touched"
        )

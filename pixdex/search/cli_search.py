"""`pixdex search`: parse the query, search the store, print a table, JSON or paths.

On the text-query path this imports neither torch nor SQLAlchemy; rich is imported only for the table.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from pixdex.errors import PixdexError
from pixdex.paths import pixdex_command
from pixdex.threads import single_thread_blas

log = logging.getLogger(__name__)

MAX_K = 10_000


def run_search(
    store_dir: Path,
    query: Optional[str] = None,
    k: int = 20,
    texts: Sequence[str] = (),
    images: Sequence[str] = (),
    like: Sequence[int] = (),
    minus: Sequence[str] = (),
    min_score: Optional[float] = None,
    path_glob: Optional[str] = None,
    after: Optional[str] = None,
    before: Optional[str] = None,
    tags: Sequence[str] = (),
) -> list[dict]:
    """Search and return the hits as dicts (rank, score, path, id, width, height, taken_at, date,
    date_source, tags).

    With ``tags`` and no query, the images carrying those tags, by probability (``score``)."""
    from pixdex.search.engine import SearchEngine
    from pixdex.search.filters import make_filters
    from pixdex.search.query import build_parts

    if not 1 <= k <= MAX_K:
        raise PixdexError(f"-k must be between 1 and {MAX_K}")
    no_query = query is None and not (texts or images or like or minus)
    parts = None if (no_query and tags) else build_parts(query, texts, images, like, minus)
    filters = make_filters(path_glob, after, before, min_score, tags)
    engine = SearchEngine(Path(store_dir))
    try:
        if engine.count() == 0:
            raise PixdexError(
                f"the store at {store_dir} has no indexed images; run: "
                f"{pixdex_command('index', 'FOLDER', store_dir=store_dir)}"
            )
        return [h.to_dict() for h in engine.find(parts, k, filters)]
    finally:
        engine.close()


def _describe(query, texts, images, like, minus, tags=()) -> str:
    bits = [repr(query)] if query else []
    bits += [f"tag {t!r}" for t in tags]
    bits += [f"text {t!r}" for t in texts] + [f"image {i}" for i in images] + [f"like #{i}" for i in like]
    bits += [f"minus {m!r}" for m in minus]
    return ", ".join(bits)


def run_search_command(
    store_dir: Path,
    query: Optional[str],
    k: int,
    texts: Sequence[str],
    images: Sequence[str],
    like: Sequence[int],
    minus: Sequence[str],
    min_score: Optional[float],
    path_glob: Optional[str],
    after: Optional[str],
    before: Optional[str],
    json_out: bool,
    paths_out: bool,
    tags: Sequence[str] = (),
) -> None:
    if json_out and paths_out:
        raise PixdexError("give at most one of --json and --paths")
    single_thread_blas()
    hits = run_search(
        store_dir, query, k, texts, images, like, minus, min_score, path_glob, after, before, tags
    )
    out = sys.stdout
    if json_out:
        out.write(json.dumps(hits, ensure_ascii=False) + "\n")
        return
    if paths_out:
        out.write("".join(h["path"] + "\n" for h in hits))
        return
    terminal = out.isatty()
    if not hits:
        filtered = path_glob or after or before or tags or min_score is not None
        (out if terminal else sys.stderr).write(
            f"No images match {_describe(query, texts, images, like, minus, tags)}"
            f"{' with these filters' if filtered else ''}.\n"
        )
        return
    if terminal:
        print_table(hits, out, f"pixdex: {_describe(query, texts, images, like, minus, tags)}")
    else:
        write_tsv(hits, out)


TSV_COLUMNS = ("rank", "id", "score", "path")
_TSV_ESCAPES = str.maketrans({"\t": "\\t", "\n": "\\n", "\r": "\\r"})


def write_tsv(hits: Sequence[dict], out) -> None:
    """One line per hit, the fields of :data:`TSV_COLUMNS` separated by tabs, no header; the whole path.

    A tab, newline or carriage return inside a path is written as ``\\t``, ``\\n``, ``\\r`` so that
    every hit stays one line of four fields (``--json`` gives such names exactly)."""
    out.write(
        "".join(
            f"{h['rank']}\t{h['id']}\t{h['score']:.4f}\t{h['path'].translate(_TSV_ESCAPES)}\n" for h in hits
        )
    )


def print_table(hits: Sequence[dict], out, title: str, width: Optional[int] = None) -> None:
    """The terminal table: rank, id (for ``--like``), score, path (folded, never cut), top tags."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from pixdex.search.display import visible

    with_tags = any(h.get("tags") for h in hits)
    table = Table(title=Text(title), title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("rank", justify="right", no_wrap=True)
    table.add_column("id", justify="right", no_wrap=True)
    table.add_column("score", no_wrap=True)
    table.add_column("path", overflow="fold")
    if with_tags:
        table.add_column("tags", overflow="fold")
    for h in hits:  # Text: no markup in file names or labels
        cells = [str(h["rank"]), str(h["id"]), f"{h['score']:.3f}", Text(visible(h["path"]))]
        if with_tags:
            cells.append(Text(", ".join(t["label"] for t in h.get("tags", [])[:3])))
        table.add_row(*cells)
    Console(file=out, width=width, highlight=False).print(table)

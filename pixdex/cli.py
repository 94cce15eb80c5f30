"""The pixdex command line: parses options and calls the packages.

Heavy modules (torch, faiss, open_clip, the encoders) are imported inside the commands, never here,
so that `pixdex --help` and text search start fast.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from pixdex import cli_library, cli_train
from pixdex.cli_app import PixdexTyper, report_interrupt
from pixdex.cli_common import (
    BackendOpt,
    BatchSizeOpt,
    CheckpointOpt,
    DeviceOpt,
    ModelOpt,
    RayOpt,
    StoreOpt,
    WorkersOpt,
)
from pixdex.cli_common import echo_json as _echo_json
from pixdex.cli_common import store_dir as _store_dir
from pixdex.cli_export import export_cmd, import_cmd
from pixdex.cli_export_model import export_model
from pixdex.cli_watch import watch
from pixdex.errors import ExitCode, PixdexError

app = PixdexTyper(name="pixdex", help="Local-first semantic image search and dataset deduplication.")

log = logging.getLogger("pixdex")


def _print_version(value: bool) -> None:
    if value:
        from pixdex import __version__

        typer.echo(f"pixdex {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages to stderr."),
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
    ),
):
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


# ----------------------------------------------------------------------------- encoders


@app.command()
def models(json_out: bool = typer.Option(False, "--json", help="Print JSON.")):
    """List registered models, their embedding dims and whether weights are cached."""
    from pixdex.encoders.registry import describe_models

    rows = describe_models()
    if json_out:
        _echo_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "family", "dim", "image", "pretrained tags", "cached")
    for r in rows:
        table.add_row(
            r["name"],
            r["family"],
            str(r["dim"]),
            str(r["image_size"]),
            ", ".join(r["pretrained"]) or "-",
            ", ".join(r["cached"]) or "-",
        )
    Console().print(table)


@app.command()
def embed(
    model: str = typer.Option(..., "--model", "-m", help="Model spec."),
    checkpoint: Optional[Path] = CheckpointOpt,
    text: Optional[str] = typer.Option(None, "--text", help="Text to embed."),
    image: Optional[Path] = typer.Option(None, "--image", help="Image file to embed."),
    device: str = DeviceOpt,
    backend: Optional[str] = BackendOpt,
):
    """Print one L2-normalised embedding as JSON: {"model", "dim", "embedding"}."""
    if (text is None) == (image is None):
        raise PixdexError("give exactly one of --text or --image")
    from pixdex.encoders.encoder import embed_one

    _echo_json(
        embed_one(model, checkpoint=checkpoint, text=text, image=image, device=device, backend=backend)
    )


# ----------------------------------------------------------------------------- training

app.command("demo-data")(cli_train.demo_data)
app.command("train")(cli_train.train)


# ----------------------------------------------------------------------------- indexing


@app.command()
def index(
    paths: list[Path] = typer.Argument(..., help="Folders (or files) to index."),
    store: Optional[Path] = StoreOpt,
    model: Optional[str] = ModelOpt,
    checkpoint: Optional[Path] = CheckpointOpt,
    device: str = DeviceOpt,
    batch_size: int = BatchSizeOpt,
    workers: int = WorkersOpt,
    json_out: bool = typer.Option(False, "--json", help="Quiet; print the summary as JSON."),
    tag: bool = typer.Option(
        False, "--tag", help="Also tag new images (the store's last label set, else builtin:everyday)."
    ),
    exclude: list[str] = typer.Option(
        [],
        "--exclude",
        help="Leave out files matching this gitignore-style pattern (repeatable; remembered per root).",
    ),
    clear_excludes: bool = typer.Option(
        False, "--clear-excludes", help="Forget the roots' remembered --exclude patterns."
    ),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="Try again the unchanged files that failed before."
    ),
    ray: Optional[str] = RayOpt,
    backend: str = typer.Option(
        "auto", "--backend", help="Encoder engine: auto, torch (int8 image tower on CPU), onnx, onnx-int8."
    ),
    exact: bool = typer.Option(False, "--exact", help="Float32 eager torch: no int8, no ONNX Runtime."),
):
    """Index photo folders into a store (incremental, crash-safe)."""
    from pixdex.indexer.run import index_paths

    summary = index_paths(
        paths,
        store_dir=_store_dir(store),
        model=model,
        checkpoint=checkpoint,
        device=device,
        batch_size=batch_size,
        workers=workers,
        json_mode=json_out,
        tag=tag,
        exclude=exclude,
        clear_excludes=clear_excludes,
        retry_failed=retry_failed,
        ray=ray,
        backend=backend,
        exact=exact,
    )
    if json_out:
        _echo_json(summary)


app.command("watch")(watch)


@app.command()
def status(
    store: Optional[Path] = StoreOpt,
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    failed: bool = typer.Option(False, "--failed", help="List the files that failed, with their reasons."),
):
    """Counts, model, FAISS type and whether FAISS and the database agree."""
    from pixdex.storage.status import failed_files, print_failed, print_status, store_status

    if failed:
        rows = failed_files(_store_dir(store))
        if json_out:
            _echo_json(rows)
        else:
            print_failed(rows)
        return
    info = store_status(_store_dir(store))
    if json_out:
        _echo_json(info)
    else:
        print_status(info)


app.command("export-model")(export_model)


# ----------------------------------------------------------------------------- search


@app.command()
def search(
    query: Optional[str] = typer.Argument(None, help="Text query."),
    k: int = typer.Option(20, "-k", "--top", metavar="N", help="Number of results."),
    k_alias: Optional[int] = typer.Option(None, "--k", hidden=True, help="Old name of --top."),
    store: Optional[Path] = StoreOpt,
    text: list[str] = typer.Option(
        [], "--text", metavar="[W:]TEXT", help="Extra text query, optionally weighted (2:sunset)."
    ),
    image: list[str] = typer.Option(
        [], "--image", metavar="[W:]FILE", help="Image file to search with, optionally weighted."
    ),
    like: list[int] = typer.Option(
        [], "--like", metavar="ID", help="Id of an indexed image to search like (the id column)."
    ),
    minus: list[str] = typer.Option(
        [], "--minus", metavar="[W:]TEXT", help="Text to subtract, optionally weighted."
    ),
    min_score: Optional[float] = typer.Option(
        None,
        "--min-score",
        metavar="S",
        help="Leave out results scoring under S: the cosine of query and image, -1 to 1 (CLIP text-to-image "
        "scores are mostly 0.15-0.35; compare with your own results); with --tag alone, the tag probability.",
    ),
    path_glob: Optional[str] = typer.Option(
        None, "--path", metavar="GLOB", help="Only paths matching GLOB (*.png, 2023/*, /abs/path/*)."
    ),
    after: Optional[str] = typer.Option(
        None, "--after", metavar="DATE", help="Taken on or after DATE (YYYY-MM-DD[THH:MM])."
    ),
    before: Optional[str] = typer.Option(None, "--before", metavar="DATE", help="Taken before DATE."),
    tag: list[str] = typer.Option(
        [],
        "--tag",
        metavar="LABEL",
        help="Only images tagged LABEL (repeatable; alone: list them by probability).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON array."),
    paths_out: bool = typer.Option(False, "--paths", help="Print one path per line."),
):
    """Search the store with text, images, or both; or list the images of a tag.

    On a terminal: a table of rank, id, score, path.
    Piped or redirected: one line per result, tab-separated: rank, id, score, whole path.
    """
    from pixdex.search.cli_search import run_search_command

    run_search_command(
        store_dir=_store_dir(store),
        query=query,
        k=k if k_alias is None else k_alias,
        texts=text,
        images=image,
        like=like,
        minus=minus,
        min_score=min_score,
        path_glob=path_glob,
        after=after,
        before=before,
        json_out=json_out,
        paths_out=paths_out,
        tags=tag,
    )


# ----------------------------------------------------------------------------- zero-shot tags

LabelsOpt = typer.Option(
    None, "--labels", help='builtin:everyday, builtin:imagenet, a labels file, or "cat,dog,car".'
)
TemplatesOpt = typer.Option(
    None, "--templates", help="builtin:photo (default), builtin:openai, builtin:simple, a file, or 'a {}.'."
)


@app.command("tag")
def tag_cmd(
    store: Optional[Path] = StoreOpt,
    labels: Optional[str] = LabelsOpt,
    templates: Optional[str] = TemplatesOpt,
    top: Optional[int] = typer.Option(None, "--top", help="Labels kept per image (default 5)."),
    min_prob: Optional[float] = typer.Option(
        None, "--min-prob", help="Lowest probability kept (default 0.1)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Tag every indexed image with zero-shot labels from its stored vector (new images only next time)."""
    from pixdex.tags.tagger import print_tag_summary, tag_store

    summary = tag_store(_store_dir(store), labels, templates, top, min_prob)
    if json_out:
        _echo_json(summary)
    else:
        print_tag_summary(summary)


@app.command("tags")
def tags_cmd(
    store: Optional[Path] = StoreOpt,
    json_out: bool = typer.Option(False, "--json", help="Print a JSON array of {label, count}."),
):
    """List the store's tags with the number of images carrying each."""
    from pixdex.tags.commands import print_tag_counts, tag_counts

    store_dir = _store_dir(store)
    rows = tag_counts(store_dir)
    if json_out:
        _echo_json(rows)
    else:
        print_tag_counts(rows, store_dir)


@app.command()
def classify(
    images: list[Path] = typer.Argument(..., help="Image files."),
    labels: str = typer.Option(
        ..., "--labels", help='builtin:everyday, builtin:imagenet, a file, or "cat,dog".'
    ),
    templates: Optional[str] = TemplatesOpt,
    top: int = typer.Option(5, "--top", help="Labels shown per image."),
    model: Optional[str] = ModelOpt,
    checkpoint: Optional[Path] = CheckpointOpt,
    device: str = DeviceOpt,
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Zero-shot classify image files (no store): the top labels of each with probabilities."""
    from pixdex.tags.commands import classify_images, print_classified
    from pixdex.tags.labelsets import DEFAULT_TEMPLATES

    results = classify_images(
        [str(p) for p in images],
        labels,
        templates or DEFAULT_TEMPLATES,
        top=top,
        model=model,
        checkpoint=str(checkpoint) if checkpoint else None,
        device=device,
    )
    if json_out:
        _echo_json(results)
    else:
        print_classified(results)


@app.command()
def serve(
    store: Optional[Path] = StoreOpt,
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on (other than loopback: see docs/SECURITY.md)."
    ),
    port: int = typer.Option(
        8765, "--port", min=0, max=65535, help="TCP port to listen on (0: any free one)."
    ),
):
    """Serve a JSON API and a web UI for the store (loopback by default)."""
    from pixdex.search.serve import serve as run_serve

    run_serve(_store_dir(store), host=host, port=port)


# ----------------------------------------------------------------------------- dedup


@app.command()
def dedup(
    store: Optional[Path] = StoreOpt,
    against: Optional[Path] = typer.Option(
        None, "--against", help="Reference store: report this store's images that duplicate its images."
    ),
    image: list[Path] = typer.Option([], "--image", help="Is this file already here? (repeatable)"),
    tiers: Optional[str] = typer.Option(
        None, "--tiers", help="Comma-separated: exact,copy,semantic (default: all that can run)."
    ),
    copy_distance: Optional[int] = typer.Option(
        None, "--copy-distance", help="Copy tier: PDQ Hamming distance at or under which (default 31)."
    ),
    semantic_threshold: Optional[float] = typer.Option(
        None, "--semantic-threshold", help="Semantic tier: cosine at or over which (default per model)."
    ),
    keep: str = typer.Option(
        "largest", "--keep", help="Which copy to keep: largest, original, oldest, newest, shortest-path."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write one CSV row per member to FILE."),
    html_out: Optional[Path] = typer.Option(
        None, "--html", help="Write a self-contained HTML report to FILE."
    ),
    action: str = typer.Option(
        "none",
        "--action",
        help="none, move, symlink (the non-kept files, into --to DIR) or list (into --to FILE).",
    ),
    to: Optional[Path] = typer.Option(
        None, "--to", help="The DIR of --action move/symlink, the FILE of list."
    ),
    undo_dir: Optional[Path] = typer.Option(None, "--undo", help="Undo an --action move/symlink into DIR."),
    calibrate: bool = typer.Option(
        False, "--calibrate", help="Measure recall and false positives on transformed copies of a sample."
    ),
    sample: int = typer.Option(100, "--sample", help="--calibrate: images sampled from the store."),
    device: str = DeviceOpt,
):
    """Find exact, copy and semantic duplicates in a store (report only; never deletes)."""
    from pixdex.dedup.cli_dedup import run_dedup_command

    run_dedup_command(
        store_dir=_store_dir(store),
        against=against,
        images=[str(p) for p in image],
        tiers=tiers,
        copy_distance=copy_distance,
        semantic_threshold=semantic_threshold,
        keep=keep,
        json_out=json_out,
        csv_out=csv_out,
        html_out=html_out,
        action=action,
        to=to,
        undo_dir=undo_dir,
        calibrate=calibrate,
        sample=sample,
        device=device,
    )


app.command("forget")(cli_library.forget)


# ----------------------------------------------------------------------------- datasets

dataset_app = PixdexTyper(help="Image-caption datasets: cross-modal dedup and decontamination.")
app.add_typer(dataset_app, name="dataset")


@dataset_app.command("dedup")
def dataset_dedup(
    data: list[Path] = typer.Argument(
        ..., help="CSV/TSV/JSONL/parquet manifests, webdataset .tar shards, or a folder of either."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder (kept.*, removed.csv, labels, report.html)."),
    model: Optional[str] = ModelOpt,
    checkpoint: Optional[Path] = CheckpointOpt,
    image_col: str = typer.Option("image", "--image-col", help="Column of image paths or bytes."),
    caption_col: str = typer.Option("caption", "--caption-col", help="Column of captions."),
    key_col: Optional[str] = typer.Option(None, "--key-col", help="Column of unique row keys."),
    against: list[Path] = typer.Option(
        [], "--against", help="Evaluation set to decontaminate against (repeatable)."
    ),
    mode: str = typer.Option("pairs", "--mode", help="pairs, images or strict: which duplicates to drop."),
    drop_mismatch: bool = typer.Option(False, "--drop-mismatch", help="Also drop mismatched captions."),
    image_threshold: Optional[float] = typer.Option(None, "--image-threshold", help="Image cosine."),
    caption_threshold: Optional[float] = typer.Option(None, "--caption-threshold", help="Caption cosine."),
    keep: str = typer.Option("first", "--keep", help="first (input order) or best (image-caption score)."),
    copy_distance: Optional[int] = typer.Option(
        None, "--copy-distance", help="Copy tier: PDQ Hamming distance of 256 bits (default 31)."
    ),
    no_copy: bool = typer.Option(False, "--no-copy", help="Turn the copy tier off (exact + semantic only)."),
    write_shards: bool = typer.Option(False, "--write-shards", help="Webdataset: write the kept shards."),
    store: Optional[Path] = typer.Option(None, "--store", help="Embedding store (default OUT/store)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images encoded per batch."),
    workers: int = typer.Option(0, "--workers", help="Decode workers (0: automatic)."),
    device: str = DeviceOpt,
    json_out: bool = typer.Option(False, "--json", help="Quiet; print the summary as JSON."),
    ray: Optional[str] = RayOpt,
):
    """Label duplicate pairs, images and captions, mismatches and leaks of a dataset; write a clean copy."""
    from pixdex.dataset.api import COPY_DISTANCE, dedup, summary_of

    if no_copy:
        copy_distance = None
    elif copy_distance is None:
        copy_distance = COPY_DISTANCE
    result = dedup(
        data,
        out=out,
        against=against or None,
        mode=mode,
        model=model,
        checkpoint=checkpoint,
        image_col=image_col,
        caption_col=caption_col,
        key_col=key_col,
        drop_mismatch=drop_mismatch,
        image_threshold=image_threshold,
        caption_threshold=caption_threshold,
        keep=keep,
        copy_distance=copy_distance,
        store=store,
        write_shards=write_shards,
        batch_size=batch_size,
        workers=workers,
        device=device,
        progress=not json_out,
        ray=ray,
    )
    summary = summary_of(result)
    if json_out:
        _echo_json(summary)
    else:
        from pixdex.dataset.report import print_summary

        print_summary(summary)


app.command("export")(export_cmd)
app.command("import")(import_cmd)


def main() -> None:
    """Console-script entry point: PixdexError becomes one line on stderr and an exit code."""
    try:
        app()
    except PixdexError as e:
        sys.stderr.write(f"pixdex: error: {e}\n")
        sys.exit(int(e.exit_code))
    except KeyboardInterrupt as e:  # outside a command (PixdexCommand reports those)
        sys.exit(report_interrupt(e))
    except ModuleNotFoundError as e:
        if e.name != "faiss":
            raise
        # faiss comes from an extra (faiss-cpu and faiss-gpu both provide the module: README, Install)
        sys.stderr.write(
            "pixdex: error: FAISS is not installed: pip install 'pixdex[cpu]' (or 'pixdex[gpu]' on a CUDA machine)\n"
        )
        sys.exit(int(ExitCode.CANNOT_RUN))

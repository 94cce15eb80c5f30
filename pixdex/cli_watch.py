"""``pixdex watch``: keep a store indexed while its folders change (:mod:`pixdex.indexer.watch`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

from pixdex.cli_common import (
    BatchSizeOpt,
    CheckpointOpt,
    DeviceOpt,
    ModelOpt,
    StoreOpt,
    WorkersOpt,
    echo_json,
    store_dir,
)


def _counts_text(d: dict) -> str:
    parts = [f"{d[k]} {k}" for k in ("new", "updated", "moved", "deleted", "failed") if d.get(k)]
    text = ", ".join(parts) or "no change"
    if d.get("encoded"):
        text += f" ({d['encoded']} encoded)"
    return text


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def watch(
    paths: list[Path] = typer.Argument(..., help="Folders (or files) to keep indexed."),
    store: Optional[Path] = StoreOpt,
    model: Optional[str] = ModelOpt,
    checkpoint: Optional[Path] = CheckpointOpt,
    device: str = DeviceOpt,
    debounce: float = typer.Option(
        1.0, "--debounce", help="Seconds without a new change before a batch of changes is indexed."
    ),
    batch_size: int = BatchSizeOpt,
    workers: int = WorkersOpt,
    json_out: bool = typer.Option(
        False, "--json", help="Quiet; print each run's summary, then the session's, as JSON lines."
    ),
):
    """Index the folders, then keep the store current as files are added, changed, moved or deleted,
    until Ctrl-C (the same incremental rules as `pixdex index`)."""
    from pixdex.errors import ExitCode
    from pixdex.indexer.report import failed_lines
    from pixdex.indexer.watch import MAX_WAIT_S, changed, watch_paths

    where = " ".join(str(p) for p in paths)
    last_error = [""]

    def on_run(batch: int, summary: Optional[dict], error) -> None:
        if json_out:
            echo_json({"batch": batch, **summary} if summary else {"batch": batch, "error": str(error)})
            return
        if error is not None:
            if str(error) != last_error[0]:  # a locked store is retried every few seconds: say it once
                then = (
                    "trying again shortly"
                    if error.exit_code == ExitCode.LOCKED
                    else "trying at the next change"
                )
                typer.echo(f"{time.strftime('%H:%M:%S')}  not indexed yet ({then}): {error}", err=True)
            last_error[0] = str(error)
            return
        last_error[0] = ""
        if batch == 0:
            typer.echo(f"watching {where} (Ctrl-C to stop)")
        elif summary is not None and changed(summary):
            typer.echo(
                f"{time.strftime('%H:%M:%S')}  {_counts_text(summary)}; {summary['total']} images"
                f" ({summary['elapsed_s']:.1f} s)"
            )
            for line in failed_lines(summary):
                typer.echo(line)

    if not json_out:
        typer.echo(f"catching up: indexing {where} before watching it")
        sys.stdout.flush()
    totals = watch_paths(
        paths,
        store_dir(store),
        model=model,
        checkpoint=checkpoint,
        device=device,
        batch_size=batch_size,
        workers=workers,
        quiet_s=debounce,
        max_wait_s=max(MAX_WAIT_S, debounce),
        on_run=on_run,
        catch_up_quiet=json_out,
    )
    d = totals.as_dict()
    if json_out:
        echo_json({"watch": d})
    else:
        typer.echo(
            f"watch stopped after {_duration(d['elapsed_s'])}: "
            f"{d['batches']} batch{'es' if d['batches'] != 1 else ''} of changes, {_counts_text(d)}; "
            f"{d['total']} images in the store"
        )
    if totals.interrupted:
        raise typer.Exit(ExitCode.INTERRUPTED)

"""``pixdex dedup`` behind the thin command in :mod:`pixdex.cli`: run, print, write, act.

Outputs: the table (default) or ``--json`` on stdout; ``--csv FILE`` and ``--html FILE`` besides.
Warnings (a tier skipped, images without copy hashes) go to stderr, one line each; a rich progress bar
is drawn on stderr when it is a terminal. ``--action move|symlink --to DIR`` / ``--action list --to
FILE`` act on the non-kept members (:mod:`pixdex.dedup.actions`); ``--undo DIR`` reverts a move or
symlink action and runs nothing else. ``--calibrate`` prints :mod:`pixdex.dedup.calibrate`'s figures.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from pixdex.dedup.actions import ACTIONS
from pixdex.errors import PixdexError
from pixdex.paths import pixdex_command


@contextlib.contextmanager
def progress_bar(enabled: bool) -> Iterator:
    """A ``(step, done, total)`` callback drawing one rich bar per step on stderr (None when disabled)."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description:<20}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    tasks: dict[str, int] = {}

    def update(step: str, done: int, total: int) -> None:
        if step not in tasks:
            for t in tasks.values():  # the previous step is over
                bar.update(t, completed=bar.tasks[t].total)
            tasks[step] = bar.add_task(step, total=max(total, 1))
        bar.update(tasks[step], completed=done, total=max(total, 1))

    with bar:
        yield update


def _warn(line: str) -> None:
    sys.stderr.write(f"pixdex: warning: {line}\n")


def run_dedup_command(
    *,
    store_dir: Path,
    against: Optional[Path],
    images: list[str],
    tiers: Optional[str],
    copy_distance: Optional[int],
    semantic_threshold: Optional[float],
    keep: str,
    json_out: bool,
    csv_out: Optional[Path],
    html_out: Optional[Path],
    action: str,
    to: Optional[Path],
    undo_dir: Optional[Path],
    calibrate: bool,
    sample: int,
    device: str,
) -> None:
    from pixdex.dedup import find

    if undo_dir is not None:
        from pixdex.dedup.actions import undo

        res = undo(undo_dir)
        _print_action(res, json_out)
        return
    if action not in ACTIONS:
        raise PixdexError(f"unknown --action {action!r}: choose one of {', '.join(ACTIONS)}")
    if action != "none" and to is None:
        raise PixdexError(f"--action {action} needs --to {'FILE' if action == 'list' else 'DIR'}")
    if action == "none" and to is not None:
        raise PixdexError("--to goes with --action move, symlink or list")
    tier_list = find.parse_tiers(tiers) if tiers is not None else None
    show = sys.stderr.isatty()
    if calibrate:
        from pixdex.dedup.calibrate import calibrate as run_calibration

        with progress_bar(show) as progress:
            result = run_calibration(
                store_dir,
                sample=sample,
                tiers=tier_list,
                copy_distance=copy_distance,
                semantic_threshold=semantic_threshold,
                device=device,
                progress=progress,
            )
        if json_out:
            sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
        else:
            print_calibration(result)
        return
    from pixdex.dedup import output
    from pixdex.dedup.run import find_duplicates

    with progress_bar(show) as progress:
        report = find_duplicates(
            store_dir,
            against=against,
            images=images or None,
            tiers=tier_list,
            copy_distance=copy_distance,
            semantic_threshold=semantic_threshold,
            keep=keep,
            device=device,
            progress=progress,
        )
    for w in report.summary.get("warnings", []):
        _warn(w)
    if csv_out is not None:
        output.write_csv(report, csv_out)
    if html_out is not None:
        from pixdex.dedup.html import write_html

        write_html(report, html_out)
    res = None
    if action != "none":
        from pixdex.dedup.actions import apply_action

        res = apply_action(report, action, to)
        report.summary["action"] = res.to_dict()
    if json_out:
        output.write_json(report)
        return
    output.print_table(report)
    for path in report.summary.get("not_found", []):
        sys.stdout.write(f"not in the store: {output.display_path(path)}\n")
    if res is not None:
        _print_action(res, False)


def _print_action(res, json_out: bool) -> None:
    if json_out:
        sys.stdout.write(json.dumps(res.to_dict(), ensure_ascii=False) + "\n")
        return
    done = {"move": res.moved, "symlink": res.linked, "list": res.listed, "undo": res.restored}[res.action]
    verb = {"move": "moved", "symlink": "linked", "list": "listed", "undo": "restored"}[res.action]
    line = f"{verb} {done} files ({res.target})"
    if res.renamed:
        line += f", {len(res.renamed)} renamed (name taken)"
    if res.skipped:
        line += f", {len(res.skipped)} skipped"
    if res.undo_file:
        line += f"; undo with: {pixdex_command('dedup', '--undo', res.target)}"
    sys.stdout.write(line + ".\n")
    for s in res.skipped[:20]:
        sys.stdout.write(f"  skipped {s['path']}: {s['reason']}\n")


def print_calibration(r: dict) -> None:
    """The calibration as plain text: recall per transform, false positives, suggestions."""
    out = sys.stdout
    out.write(
        f"calibration on {r['sample']} images of {r['store']} ({r['copies']} transformed copies, "
        f"model {r['model']})\n"
    )
    for tier in r["tiers"]:
        cur = r["thresholds"][tier]
        what = "distance <=" if tier == "copy" else "cosine >="
        out.write(f"\n{tier} tier ({what} {cur}): recall per transform\n")
        for name, v in r["recall"][tier].items():
            mark = "" if v["expected"] else "  (not expected)"
            out.write(f"  {name:<18} {v['current']:>6.2f}{mark}\n")
        fp = r["false_positives"][tier]
        out.write(
            f"  false positives among distinct sampled images: {fp['current']} of {fp['pairs_compared']} pairs "
            f"({fp['current_rate']:.2%}); copies matching other images: {r['other_matches'][tier]}\n"
        )
        s = r["suggested"][tier]
        flag = "--copy-distance" if tier == "copy" else "--semantic-threshold"
        out.write(
            f"  suggested: {flag} {s['value']} (recall on expected transforms {s['recall_expected']:.2f}, "
            f"now {s['recall_expected_current']:.2f})\n"
        )

"""Text outputs of ``pixdex dedup``: the rich table (default), ``--json`` and ``--csv FILE``.

All three stream: they walk the report once and never build the whole text in memory, so a report of
100k groups prints in bounded memory and a few seconds.

The table has one row per member: group number (first row of a group only), path, tier (``kept`` for
the kept item), score (copy: Hamming distance, semantic: cosine, exact: 1) and size (pixels, bytes).
On a terminal it is a rich table whose path column takes the room left, long paths folded (never cut);
when stdout is not a terminal the same columns are written as plain aligned text, as wide as the
longest path, so that every path is whole on one line (grep, cut, less -S).
"""

from __future__ import annotations

import csv
import json
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from pixdex.dedup.model import Group, Member, Report, group_to_json, json_score

TTY_MAX_GROUPS = 1000  # groups shown in the rich table on a terminal (rich draws ~1k rows/s)
CSV_COLUMNS = ("group", "kept", "id", "path", "tier", "score", "width", "height", "bytes", "format")


# ---------------------------------------------------------------------- small formatting helpers


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    v = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if v < 1000 or unit == "TB":
            return f"{int(v)} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1000
    return f"{n} B"  # unreachable


def display_path(path: str) -> str:
    """A path safe to print on one line: control characters and undecodable bytes shown as escapes."""
    if path.isprintable():
        return path
    out = []
    for c in path:
        cat = unicodedata.category(c)
        if cat == "Cc" or cat == "Cs":  # control characters, surrogate-escaped bytes
            o = ord(c)
            out.append(
                f"\\x{o & 0xFF:02x}" if 0xDC80 <= o <= 0xDCFF else f"\\x{o:02x}" if o < 256 else f"\\u{o:04x}"
            )
        else:
            out.append(c)
    return "".join(out)


def score_text(m: Member) -> str:
    s = json_score(m)
    if s is None:
        return ""
    if m.tier == "semantic":
        return f"{s:.3f}"
    return f"{s:g}"


def size_text(m: Member) -> str:
    res = f"{m.width}x{m.height}" if m.width and m.height else "?"
    return f"{res} {human_bytes(m.bytes)}"


def summary_line(summary: dict) -> str:
    s = summary
    n_img = s.get("images")
    among = f" among {n_img:,} images" if isinstance(n_img, int) else ""
    if not s.get("groups"):
        return f"No duplicates{among}."
    by = ", ".join(f"{t} {c:,}" for t, c in (s.get("by_tier") or {}).items() if c)
    line = (
        f"{s['groups']:,} groups, {s.get('duplicates', 0):,} duplicates"
        + (f" ({by})" if by else "")
        + f"{among}; {human_bytes(s.get('bytes_reclaimable'))} reclaimable"
    )
    if s.get("elapsed_s") is not None:
        line += f" ({s['elapsed_s']:.1f} s)"
    return line + "."


# ---------------------------------------------------------------------- table


def _rows(groups: list[Group], first_number: int) -> Iterator[tuple[str, str, str, str, str, bool]]:
    for gi, g in enumerate(groups, start=first_number):
        n = len(g.members)
        for j, m in enumerate(g.members):
            kept = m is g.keep
            yield (
                str(gi) if j == 0 else "",
                display_path(m.path),
                "kept" if kept else (m.tier or "?"),
                score_text(m),
                size_text(m),
                j == n - 1,
            )


def _cells(s: str) -> int:
    """Terminal cells of ``s`` (wide CJK characters take two)."""
    if s.isascii():
        return len(s)
    from rich.cells import cell_len

    return cell_len(s)


def _widths(groups: list[Group], heads: tuple[str, ...]) -> list[int]:
    w = [len(h) for h in heads]
    w[0] = max(w[0], len(str(len(groups))))
    for g in groups:
        for m in g.members:
            w[1] = max(w[1], _cells(display_path(m.path)))
            w[2] = max(w[2], len(m.tier or "kept"))
            w[3] = max(w[3], len(score_text(m)))
            w[4] = max(w[4], len(size_text(m)))
    return w


_HEADS = ("group", "path", "tier", "score", "size")
_GAP = "   "  # between columns, as rich draws a SIMPLE_HEAD table


def print_table(report: Report, stream: TextIO | None = None, *, width: int | None = None) -> None:
    """The default output: the table, then the summary line.

    On a terminal (``stream.isatty()``; ``stream`` defaults to stdout) a rich table as wide as the
    terminal (``width`` overrides it), long paths folded, the kept rows highlighted; at most
    :data:`TTY_MAX_GROUPS` groups, then a line saying how many more there are. Otherwise the same
    columns as plain aligned text (every group, paths whole on one line), which streams fast."""
    stream = stream or sys.stdout
    groups = report.groups
    if not groups:
        stream.write(summary_line(report.summary) + "\n")
        return
    if getattr(stream, "isatty", lambda: False)():
        _print_rich(report, stream, width)
    else:
        _write_plain(report, stream)


def _write_plain(report: Report, out: TextIO) -> None:
    groups = report.groups
    w = _widths(groups, _HEADS)

    def line(cells) -> str:
        num, path, tier, score, size = cells
        return _GAP.join(
            (
                num.rjust(w[0]),
                path + " " * (w[1] - _cells(path)),
                tier.ljust(w[2]),
                score.rjust(w[3]),
                size.rjust(w[4]),
            )
        ).rstrip()

    out.write(line(_HEADS) + "\n" + "-" * (sum(w) + len(_GAP) * 4) + "\n")
    buf = []
    for num, path, tier, score, size, last in _rows(groups, 1):
        buf.append(line((num, path, tier, score, size)))
        if last:
            buf.append("")
        if len(buf) >= 2000:
            out.write("\n".join(buf) + "\n")
            buf.clear()
    buf.append(summary_line(report.summary))
    out.write("\n".join(buf) + "\n")


def _print_rich(report: Report, stream: TextIO, width: int | None) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=stream, width=width, highlight=False)
    shown = report.groups[:TTY_MAX_GROUPS]
    w = _widths(shown, _HEADS)
    others = w[0] + w[2] + w[3] + w[4] + len(_GAP) * 4
    w[1] = max(16, min(w[1], console.width - others))
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    table.add_column(_HEADS[0], justify="right", width=w[0], no_wrap=True)
    table.add_column(_HEADS[1], width=w[1], overflow="fold")
    table.add_column(_HEADS[2], width=w[2], no_wrap=True)
    table.add_column(_HEADS[3], justify="right", width=w[3], no_wrap=True)
    table.add_column(_HEADS[4], justify="right", width=w[4], no_wrap=True)
    for num, path, tier, score, size, last in _rows(shown, 1):
        style = "bold green" if tier == "kept" else ""
        table.add_row(num, Text(path, style=style), Text(tier, style=style), score, size)
        if last:
            table.add_row()  # a blank line between groups
    console.print(table)
    more = len(report.groups) - len(shown)
    if more > 0:
        console.print(
            Text(f"... {more:,} more groups not shown: use --json or --csv FILE, or redirect the output.")
        )
    console.print(Text(summary_line(report.summary)))


# ---------------------------------------------------------------------- JSON


def write_json(report: Report, stream: TextIO | None = None) -> None:
    """Stream :func:`pixdex.dedup.model.to_json` (one group per line), same document once parsed."""
    out = stream or sys.stdout
    out.write('{"groups": [')
    for i, g in enumerate(report.groups):
        out.write(("\n" if i == 0 else ",\n") + json.dumps(group_to_json(g), ensure_ascii=False))
    out.write('\n], "summary": ' + json.dumps(report.summary, ensure_ascii=False) + "}\n")


# ---------------------------------------------------------------------- CSV


def _cell(v) -> str:
    return "" if v is None else str(v)


def csv_rows(report: Report) -> Iterator[list[str]]:
    """One row per member (:data:`CSV_COLUMNS`); ``kept`` is ``true``/``false``, missing values empty."""
    for gi, g in enumerate(report.groups, start=1):
        for m in g.members:
            kept = m is g.keep
            yield [
                str(gi),
                "true" if kept else "false",
                _cell(m.id),
                m.path,
                "" if kept else _cell(m.tier),
                "" if kept else _cell(json_score(m)),
                _cell(m.width),
                _cell(m.height),
                _cell(m.bytes),
                _cell(m.format),
            ]


def write_csv(report: Report, dest: str | Path | TextIO) -> None:
    """Write the CSV to a file path (atomically: a temporary file renamed over it) or a text stream."""
    if isinstance(dest, (str, Path)):
        with atomic_text(dest, newline="") as f:
            write_csv(report, f)
        return
    w = csv.writer(dest)
    w.writerow(CSV_COLUMNS)
    w.writerows(csv_rows(report))


# ---------------------------------------------------------------------- files


def atomic_text(path: str | Path, newline: str | None = None):
    """:func:`pixdex.fsutil.atomic_text`, with a one-line error when the folder does not exist."""
    from pixdex.fsutil import atomic_text as _atomic_text

    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        from pixdex.errors import PixdexError

        raise PixdexError(f"cannot write {path}: folder {parent} does not exist")
    return _atomic_text(path, newline=newline)

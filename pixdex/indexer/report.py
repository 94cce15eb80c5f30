"""Progress bar and end-of-run summary for ``pixdex index`` (rich, on a terminal; silent in --json)."""

from __future__ import annotations

import collections
import contextlib
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Optional, TypeVar

from pixdex.paths import pixdex_command

T = TypeVar("T")

log = logging.getLogger(__name__)


class Progress:
    """A rich progress bar on stderr (files/s, ETA), or nothing when quiet or not a terminal.
    ``total`` None: a stream of unknown length (a pulsing bar, the count and the rate)."""

    def __init__(self, total: int | None, quiet: bool, description: str = "indexing", unit: str = "files"):
        self._bar = None
        self._task = None
        self._unit = unit
        if quiet or (total is not None and total <= 0):
            return
        console = _terminal_console()
        if console is None:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            refresh_per_second=4,
        )
        self._bar.start()
        self._task = self._bar.add_task(description, total=total, rate="")

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)
            speed = self._bar.tasks[0].speed
            self._bar.update(self._task, rate=f"{speed:5.1f} {self._unit}/s" if speed else "")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _terminal_console():
    """A rich console on stderr when stderr is a terminal, else None (no progress display)."""
    from rich.console import Console

    console = Console(stderr=True)
    return console if console.is_terminal else None


def encode_rate(encoded: int, seconds: Optional[float]) -> float:
    """Images encoded per second of encoding (model loading not included): the one rate of a run, shown
    by its progress bar as it goes and in its summary."""
    return round(encoded / seconds, 2) if encoded and seconds and seconds > 0 else 0.0


class RunProgress:
    """What ``pixdex index`` shows on a terminal, from its first second: a spinner line while the model
    loads; a bar of the files handled, moving per file (read, hashed and decoded, or resolved without
    decoding); the images encoded so far and the run's one rate (:func:`encode_rate`, counted from when the
    model was ready). The counts and times are kept when nothing is shown (quiet, or not a terminal): the
    summary reads them."""

    def __init__(self, quiet: bool):
        self.ready_at: Optional[float] = None  # time.monotonic() when the model was ready
        self.first_batch_at: Optional[float] = None  # time.time() when the first batch was encoded
        self.last_batch_at: Optional[float] = None  # time.monotonic() after the last batch
        self.encoded = 0
        self._bar = None
        self._files = None
        self._loading = None
        if quiet:
            return
        console = _terminal_console()
        if console is None:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        files_only = _files_only
        self._bar = RichProgress(  # 80 columns wide at most
            SpinnerColumn(finished_text=" "),
            TextColumn("[bold]{task.description}"),
            files_only(BarColumn(bar_width=16)),
            files_only(MofNCompleteColumn()),
            TextColumn("{task.fields[detail]}"),  # the model loading, or the files' encoded count and rate
            files_only(TimeRemainingColumn()),
            console=console,
            transient=False,
            refresh_per_second=8,
        )
        self._bar.start()

    def loading(self, model: str) -> None:
        """A spinner line until :meth:`model_ready`."""
        if self._bar is not None and self._loading is None and self.ready_at is None:
            self._loading = self._bar.add_task("loading model ...", total=None, status=True, detail=model)
            self._bar.refresh()  # drawn now, not at the next tick

    def model_ready(self, at: Optional[float] = None) -> None:
        """The model is loaded (callable from the loading thread)."""
        if self.ready_at is None:
            self.ready_at = at if at is not None else time.monotonic()
        task, self._loading = self._loading, None
        if self._bar is not None and task is not None:
            self._bar.remove_task(task)

    def files(self, total: int) -> None:
        """Show the bar of ``total`` files (nothing to show for none)."""
        if self._bar is not None and total > 0 and self._files is None:
            self._files = self._bar.add_task("indexing", total=total, detail="", status=False)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None and self._files is not None:
            self._bar.advance(self._files, n)

    def add_encoded(self, n: int) -> None:
        """``n`` more images encoded (one batch)."""
        if self.first_batch_at is None:
            self.first_batch_at = time.time()
        self.last_batch_at = time.monotonic()
        self.encoded += n
        if self._bar is not None and self._files is not None:
            self._bar.update(self._files, detail=f"{self.encoded} encoded, {self.rate():.1f} images/s")

    def encode_seconds(self) -> Optional[float]:
        """Seconds from the model ready to the last batch encoded (None before any)."""
        if self.ready_at is None or self.last_batch_at is None:
            return None
        return self.last_batch_at - self.ready_at

    def rate(self) -> float:
        return encode_rate(self.encoded, self.encode_seconds())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _files_only(inner):
    """``inner``, rendered blank on the model-loading line."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class FilesOnly(ProgressColumn):
        def render(self, task):
            return Text("") if task.fields.get("status") else inner.render(task)

    return FilesOnly()


class Timings:
    """Wall seconds spent per phase of a run (reported in the summary: where the time went)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - t

    def waiting(self, items: Iterable[T], phase: str) -> Iterator[T]:
        """Yield from ``items``, counting the time spent waiting for each one as ``phase``."""
        it = iter(items)
        while True:
            t = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                self.seconds[phase] += time.perf_counter() - t
            yield item

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in sorted(self.seconds.items())}


FAILED_SHOWN = 3  # failed paths named in a run's summary (pixdex status --failed lists them all)


class Tally:
    """Counts of what a run did, the reasons of its failures and the first few failed paths."""

    def __init__(self) -> None:
        self.counts: Counter = collections.Counter()
        self.reasons: Counter = collections.Counter()
        self.failed_paths: list[dict] = []

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def fail(self, reason: str, path: str | None = None) -> None:
        self.counts["failed"] += 1
        self.reasons[_reason_key(reason)] += 1
        if path is not None and len(self.failed_paths) < FAILED_SHOWN:
            self.failed_paths.append({"path": path, "reason": reason})

    def top_reasons(self, n: int = 8):
        return [{"reason": r, "count": c} for r, c in self.reasons.most_common(n)]


def _reason_key(reason: str) -> str:
    """Group reasons that differ only in details after a colon (e.g. Pillow's message)."""
    return reason.split(":", 1)[0].strip() or reason


def _timing_line(c: dict) -> str:
    """``120 encoded in 9.8 s: start-up 2.1 s, 15.6 images/s`` (the rate without the model's loading)."""
    line = f"{c['encoded']} encoded in {c['elapsed_s']:.1f} s"
    if c["encoded"]:
        parts = [f"start-up {c['startup_s']:.1f} s"] if c.get("startup_s") is not None else []
        parts.append(f"{c['images_per_s']:.1f} images/s")
        line += ": " + ", ".join(parts)
    return line


def print_summary(summary: dict, stream=None) -> None:
    from rich.console import Console

    console = Console(file=stream or sys.stdout, highlight=False, soft_wrap=True)
    c = summary
    console.print(
        f"[bold]{c['new']}[/] new, {c['updated']} updated, {c['moved']} moved, {c['deleted']} deleted, "
        f"{c['unchanged']} unchanged, [{'red' if c['failed'] else 'default'}]{c['failed']} failed[/]"
        + f"  ({_timing_line(c)})"
    )
    for r in c.get("failures", []):
        console.print(f"  {r['count']:>6}  {r['reason']}")
    print_failed_paths(console, c)
    if c.get("hashed_copy") or c.get("copy_unhashable"):
        console.print(
            f"{c.get('hashed_copy', 0)} already indexed images given perceptual hashes for pixdex dedup"
            + (f", {c['copy_unhashable']} could not be decoded for them" if c.get("copy_unhashable") else "")
        )
    for link in c.get("links_outside_roots", []):
        console.print(
            f"followed the link {link['link']} to {link['target']}, outside the folders indexed", markup=False
        )
    for n in c.get("notes", [])[:FAILED_SHOWN]:
        console.print(f"note: {n['path']}: {n['note']}", markup=False)
    f = c.get("faiss") or {}
    console.print(
        f"store {c['store']}: {c['total']} images searchable, model {c['model']}, "
        f"FAISS {f.get('type')} ntotal {f.get('ntotal')}"
    )


def failed_lines(c: dict) -> list[str]:
    """A run's failed files as summary lines: the first few paths with their reasons, then how to list
    them all (``pixdex index`` and each ``pixdex watch`` batch print these)."""
    lines = [f"  failed: {f['path']}: {f['reason']}" for f in c.get("failed_paths", [])]
    if c.get("failed"):
        more = c["failed"] - len(c.get("failed_paths", []))
        lines.append(
            (f"  ... and {more} more; " if more > 0 else "  ")
            + f"list the files that failed with: {pixdex_command('status', '--failed', store_dir=c['store'])}"
        )
    return lines


def print_failed_paths(console, c: dict) -> None:
    """The summary's lines on failed files: the first few paths, how to list them all, what was left
    alone (unchanged files that failed before) and what patterns removed."""
    store = c["store"]
    for line in failed_lines(c):
        console.print(line, markup=False)
    if c.get("not_retried"):
        console.print(
            f"{c['not_retried']} unchanged files that failed before were not tried again "
            f"({pixdex_command('index', *(c.get('roots') or ['FOLDER']), '--retry-failed', store_dir=store)}"
            " tries them)",
            markup=False,
        )
    if c.get("excluded"):
        console.print(f"{c['excluded']} files now excluded by a pattern were removed from the store")

"""Ctrl-C (SIGINT) handling shared by long jobs: hold it over a step that must finish whole."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def ctrl_c_after_block() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) arriving inside the block until the block ends, then raise it.

    A batch's commit and the count of what it kept are one step for Ctrl-C: SQLite's COMMIT is a long C
    call, a signal during it would otherwise raise in the Python just after, with the batch committed
    and not counted. Outside the main thread (no signal handler can be set there) nothing is held.
    """
    held: list[int] = []
    try:
        old = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if held:
            if callable(old):
                old(signal.SIGINT, None)  # the default handler raises KeyboardInterrupt
            elif old == signal.SIG_DFL:
                raise KeyboardInterrupt

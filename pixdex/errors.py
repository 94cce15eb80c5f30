"""Errors that the CLI turns into one clear line (no traceback), and the exit codes of every command.

:class:`ExitCode` is the one list of exit codes; README.md's "Exit codes" table shows the same (a test
compares them).
"""

from enum import IntEnum


class ExitCode(IntEnum):
    """The exit status of a pixdex command."""

    OK = 0  # the command ran; files that cannot be read are listed in its summary, not errors
    PARTIAL = 1  # stopped part-way by an error (disk full, I/O error): what was done is kept; run again
    CANNOT_RUN = 2  # bad usage or input, unknown model, missing weights, no store or a damaged one
    LOCKED = 3  # another `pixdex index` is writing to the store
    INTERRUPTED = 130  # Ctrl-C (SIGINT): what was done is kept; the same command continues


class PixdexError(Exception):
    """A user-facing failure: bad input, unknown model, missing weights, locked store.

    The message is printed as a single line by the CLI, which exits with ``exit_code``.
    """

    exit_code: int = ExitCode.CANNOT_RUN

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class StoreLocked(PixdexError):
    """Another process holds the store's write lock."""

    exit_code = ExitCode.LOCKED


class PartialRun(PixdexError):
    """A run stopped part-way by an error; what it did is kept and running it again goes on."""

    exit_code = ExitCode.PARTIAL


class Interrupted(KeyboardInterrupt):
    """Ctrl-C in the middle of a job, with a message saying what was kept (still a KeyboardInterrupt)."""

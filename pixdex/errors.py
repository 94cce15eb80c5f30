"""Errors that the CLI turns into one clear line (no traceback)."""


class PixdexError(Exception):
    """A user-facing failure: bad input, unknown model, missing weights, locked store.

    The message is printed as a single line by the CLI, which exits with ``exit_code``.
    """

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

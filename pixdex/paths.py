"""Where pixdex keeps things: the default store directory, and how to name a store in a hint."""

import os
import shlex
from pathlib import Path


def default_store_dir() -> Path:
    """``$PIXDEX_HOME`` if set, else the platform's per-user data directory."""
    env = os.environ.get("PIXDEX_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("pixdex", appauthor=False))


def pixdex_command(*words, store_dir=None) -> str:
    """The command line a message suggests: ``pixdex WORDS [--store DIR]``, ready to be typed.

    ``store_dir``: the store the command is for; ``--store DIR`` is added unless it is the default
    store, where the command works without it. Every message that names a command builds it here, so
    that it works as shown: words are shell-quoted; placeholders are capitals (``FOLDER``).
    """
    line = ["pixdex", *(shlex.quote(str(w)) for w in words)]
    if store_dir is not None:
        store = Path(store_dir).expanduser()
        if store.absolute() != default_store_dir().absolute():
            line += ["--store", shlex.quote(str(store))]
    return " ".join(line)

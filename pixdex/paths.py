"""Where pixdex keeps things: the default store directory."""

import os
from pathlib import Path


def default_store_dir() -> Path:
    """``$PIXDEX_HOME`` if set, else the platform's per-user data directory."""
    env = os.environ.get("PIXDEX_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("pixdex", appauthor=False))

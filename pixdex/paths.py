"""Where pixdex keeps things: the default store directory and the user cache directory."""

import os
from pathlib import Path


def default_store_dir() -> Path:
    """``$PIXDEX_HOME`` if set, else the platform's per-user data directory."""
    env = os.environ.get("PIXDEX_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("pixdex", appauthor=False))


def default_cache_dir() -> Path:
    """``$PIXDEX_CACHE_DIR`` if set, else the platform's per-user cache directory (weights hashes, ONNX
    exports: anything that can be rebuilt)."""
    env = os.environ.get("PIXDEX_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("pixdex", appauthor=False))

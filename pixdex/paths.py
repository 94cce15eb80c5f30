"""Where pixdex keeps things (the default store directory), its cache (:func:`default_cache_dir`), how it names a
file (:func:`real_path`) and how a message names a store in a command it suggests (:func:`pixdex_command`).

A root and each file in a store are identified by their real path, so that the same folder reached
through a symbolic link, or typed with another case on a case-insensitive file system, is the same
root and adds nothing. Standard library only.
"""

from __future__ import annotations

import os
import shlex
import unicodedata
from pathlib import Path
from typing import Optional


def default_store_dir() -> Path:
    """``$PIXDEX_HOME`` if set, else the platform's per-user data directory."""
    env = os.environ.get("PIXDEX_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("pixdex", appauthor=False))


def real_path(path, follow_last: bool = True, listings: Optional[dict] = None) -> str:
    """The absolute path with symbolic links resolved (``os.path.realpath``) and, on a case-insensitive
    file system, each name spelt as it is on disk.

    ``follow_last=False`` resolves the folders but keeps the last name as it is (a symbolic link to a
    file keeps its own name: a library of links, e.g. git-annex, keeps the names people gave). Parts
    that do not exist are kept as given. ``listings`` caches resolved folders and folder listings
    across many calls that may assume the disk does not change meanwhile (the store migration names
    every row: 100k rows in 1000 folders take about 2 s).
    """
    p = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if follow_last:
        return on_disk_case(os.path.realpath(p), listings)
    head, name = os.path.split(p)
    key = (head, "real")
    real_head = listings.get(key) if listings is not None else None
    if real_head is None:
        real_head = on_disk_case(os.path.realpath(head), listings)
        if listings is not None:
            listings[key] = real_head
    return on_disk_case(os.path.join(real_head, name), listings, start=len(real_head))


def _fold(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


def _stat_key(path: str) -> Optional[tuple[int, int]]:
    """``(st_dev, st_ino)`` of ``path`` itself (a link is not followed), or None when it is not there."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _listing(folder: str, listings: Optional[dict]) -> Optional[list[str]]:
    if listings is not None and folder in listings:
        return listings[folder]
    try:
        names = os.listdir(folder)
    except OSError:
        names = None
    if listings is not None:
        listings[folder] = names
    return names


def _insensitive(folder: str, name: str, listings: Optional[dict]) -> bool:
    """Whether ``folder`` answers to ``name`` with its case swapped: a case-insensitive folder. Cached
    per folder in ``listings``; when ``name`` is not there at all nothing is learnt (asked again)."""
    key = (folder, "case-insensitive")
    if listings is not None and key in listings:
        return listings[key]
    here = _stat_key(os.path.join(folder, name))
    if here is None:
        return False
    answer = here == _stat_key(os.path.join(folder, name.swapcase()))
    if listings is not None:
        listings[key] = answer
    return answer


def on_disk_case(path: str, listings: Optional[dict] = None, start: int = 0) -> str:
    """``path`` (absolute, links resolved) with each name after ``start`` characters spelt as on disk.

    A name is looked up in its folder's listing only when the folder answers to the name with its case
    swapped (the same file: a case-insensitive folder, detected per folder); on a case-sensitive file
    system this costs one failed ``stat`` per name with letters, and nothing is listed.
    """
    anchor = os.path.splitdrive(path)[0] + os.sep
    parts = [x for x in path[len(anchor) :].split(os.sep) if x]
    out = anchor
    for name in parts:
        child = os.path.join(out, name)
        if len(child) > start and name.swapcase() != name and _insensitive(out, name, listings):
            names = _listing(out, listings) or []
            if name not in names:
                matches = [n for n in names if _fold(n) == _fold(name)]
                if len(matches) == 1:
                    child = os.path.join(out, matches[0])
        out = child
    return out


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


def default_cache_dir() -> Path:
    """``$PIXDEX_CACHE_DIR`` if set, else the platform's per-user cache directory (weights hashes, ONNX
    exports: anything that can be rebuilt)."""
    env = os.environ.get("PIXDEX_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("pixdex", appauthor=False))

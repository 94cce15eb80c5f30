"""``file_sha256(path)``: a weights file's SHA-256, cached by (path, size, mtime) in memory and in the
user cache dir (:func:`cache_dir`: ``PIXDEX_CACHE_DIR`` or platformdirs' ``pixdex`` cache), so that a
store's model identity does not cost a full read of a large checkpoint on every run."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Optional, Union

from pixdex.fsutil import atomic_write

log = logging.getLogger(__name__)

_HASH_LOCK = threading.Lock()
_HASHES: dict[tuple[str, int, int], str] = {}


def cache_dir() -> Optional[Path]:
    """pixdex's cache folder (:func:`pixdex.paths.default_cache_dir`), or None without platformdirs and
    ``PIXDEX_CACHE_DIR``. Everything in it can be made again: weights hashes, converted checkpoints,
    ONNX exports."""
    from pixdex.paths import default_cache_dir

    try:
        return default_cache_dir()
    except ModuleNotFoundError:  # no platformdirs and no PIXDEX_CACHE_DIR
        return None


def _hash_cache_file() -> Optional[Path]:
    root = cache_dir()
    return root / "sha256.json" if root is not None else None


def file_sha256(path: Union[str, Path]) -> str:
    """SHA-256 of a file, cached by (path, size, mtime) in memory and in the user cache dir."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _HASH_LOCK:
        if key in _HASHES:
            return _HASHES[key]
    disk_key = f"{key[0]}|{key[1]}|{key[2]}"
    cache_file = _hash_cache_file()
    disk: dict[str, str] = {}
    if cache_file is not None:
        try:
            disk = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            disk = {}
        if isinstance(disk, dict) and isinstance(disk.get(disk_key), str):
            with _HASH_LOCK:
                _HASHES[key] = disk[disk_key]
            return disk[disk_key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    with _HASH_LOCK:
        _HASHES[key] = digest
    if cache_file is not None:
        try:
            disk = disk if isinstance(disk, dict) else {}
            disk = {k: v for k, v in disk.items() if not k.startswith(key[0] + "|")}
            disk[disk_key] = digest
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(cache_file, json.dumps(disk), durable=False)  # a cache: never torn
        except OSError as e:
            log.debug("cannot write the hash cache %s: %s", cache_file, e)
    return digest

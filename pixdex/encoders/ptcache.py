"""Torch checkpoints (``.pt``, ``.bin``, ``.pth``, OpenAI's TorchScript archives) converted once to
safetensors in the user cache dir, so that every later load memory-maps the tensors instead of
unpickling the file (and, for a TorchScript archive or a legacy pickle, copying every tensor).

The copy is named by the source file's SHA-256 (:func:`pixdex.encoders.checksum.file_sha256`, itself
cached by path, size and mtime): a changed file is a new copy, never a stale one. It holds the tensors
exactly as :func:`pixdex.encoders.checkpoint.read_state_dict` reads them from the source (same keys,
dtypes and values; key mapping happens after reading, either way), and records its source in the
safetensors metadata; writing a new copy removes older copies of the same source path. A cache that
cannot be written (read-only, disk full) only costs speed: the source is read as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from pixdex.encoders.checksum import cache_dir, file_sha256
from pixdex.fsutil import atomic_write

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SUBDIR = "checkpoints"
FORMAT = "pixdex-checkpoint-copy-1"


def cached_copy(path: Path) -> Optional[Path]:
    """The safetensors copy of the torch checkpoint ``path`` when it exists, else None."""
    root = cache_dir()
    if root is None:
        return None
    target = root / SUBDIR / f"{file_sha256(path)}.safetensors"
    return target if target.is_file() else None


def convert_once(path: Path, read: Callable[[Path], dict[str, torch.Tensor]]) -> Optional[Path]:
    """The safetensors copy of ``path``, written from ``read(path)`` if there is none yet; None when the
    cache cannot be written (then the caller reads ``path`` itself)."""
    root = cache_dir()
    if root is None:
        return None
    digest = file_sha256(path)
    folder = root / SUBDIR
    target = folder / f"{digest}.safetensors"
    if target.is_file():
        return target
    tensors = _unshared(read(path))
    from safetensors.torch import save_file

    meta = {"format": FORMAT, "source": str(path.resolve()), "sha256": digest}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda tmp: save_file(tensors, str(tmp), metadata=meta), durable=False)
    except OSError as e:
        log.info("cannot cache a safetensors copy of %s in %s: %s", path, folder, e.strerror or e)
        return None
    log.info("converted %s to %s (read by memory map from now on)", path, target)
    _remove_older_copies(folder, meta["source"], keep=target)
    return target


def _unshared(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors with a storage each (safetensors refuses tensors that share memory)."""
    seen: set[int] = set()
    out = {}
    for k, v in sd.items():
        v = v.contiguous()
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen and v.numel():
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        out[k] = v
    return out


def _remove_older_copies(folder: Path, source: str, keep: Path) -> None:
    from safetensors import SafetensorError, safe_open

    for f in folder.glob("*.safetensors"):
        if f == keep:
            continue
        try:
            with safe_open(str(f), framework="pt") as st:
                if (st.metadata() or {}).get("source") != source:
                    continue
            f.unlink()
        except (OSError, SafetensorError) as e:  # a damaged cache entry is not this run's business
            log.debug("leaving %s in the cache: %s", f, e)

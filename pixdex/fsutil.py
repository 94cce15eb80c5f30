"""Writing files so that a reader never sees half of one: :func:`atomic_write`.

Every file pixdex writes for others to read (store sidecar, FAISS index, exported text tower, model
weights, resume state, thumbnails, caches) goes through here: the content goes to a temporary file with a
unique name in the target's folder, is flushed to disk, and is renamed over the target in one step
(``os.replace``); then the folder itself is flushed so that the rename survives a power loss. Two
processes writing the same target never share a temporary file: the last rename wins and the target is
always one whole version. Standard library only (imported on the torch-free search path).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Optional, Union

Writer = Callable[[Path], object]  # writes the whole content to the path it is given
Content = Union[bytes, str, Writer]

_TMP_SUFFIX = ".tmp"
_ATTEMPTS = 100


def temp_name(path: Path) -> Path:
    """A fresh hidden temporary name next to ``path`` (``.NAME.PID.RANDOM.tmp``); nothing is created."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}{_TMP_SUFFIX}")


def _create_temp(path: Path) -> Path:
    for _ in range(_ATTEMPTS):
        tmp = temp_name(path)
        try:
            # O_EXCL: the name is ours alone; mode 0o666 minus the umask, as a plain open() would give.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"cannot find a free temporary name next to {path}")


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path, *, mode: Optional[int] = None, durable: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary path next to ``path``; when the block ends normally, the file written
    there replaces ``path`` in one step (fsynced unless ``durable=False``); on any error it is removed and
    ``path`` is left as it was. For writers that stream a file (CSV rows, parquet batches, tar members)."""
    path = Path(path)
    tmp = _create_temp(path)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_text(path: Path, *, newline: Optional[str] = None, encoding: str = "utf-8") -> Iterator[IO[str]]:
    """A text file open for writing that replaces ``path`` only once the block completes (see
    :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding=encoding, newline=newline) as f:
        yield f


def atomic_write(
    path: Path,
    content: Content,
    *,
    encoding: str = "utf-8",
    mode: Optional[int] = None,
    durable: bool = True,
) -> Path:
    """Replace ``path`` by ``content`` in one step; returns ``path``.

    ``content`` is bytes, text (written with ``encoding``) or a callable that writes the whole file to
    the temporary path it is given (``faiss.write_index``, ``torch.save``, ``safetensors`` ...).
    ``mode`` sets the file's permission bits (default: what a plain ``open`` would give).
    ``durable=False`` skips the fsyncs, for caches that may be lost but must never be torn. On any
    error the temporary file is removed and ``path`` is left as it was.
    """
    if not callable(content):
        if isinstance(content, str):
            content = content.encode(encoding)
        elif not isinstance(content, (bytes, bytearray, memoryview)):
            raise TypeError(f"atomic_write needs bytes, str or a writer, not {type(content).__name__}")
    with atomic_path(path, mode=mode, durable=durable) as tmp:
        if callable(content):
            content(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(content)
    return Path(path)

"""Find the image files under the roots given to ``pixdex index``.

Recursive ``os.scandir`` (entries sorted, so runs are deterministic). Skips hidden folders (``.name``)
and AppleDouble ``._*`` files; follows symbolic links to folders without looping (each folder is entered
once, by its ``(st_dev, st_ino)``) and indexes each file once even when reachable by several paths.

Links to folders outside every root are followed too (a photo library often links in a drive, a NAS
share or another export; skipping them would silently drop photos the user sees in the folder), and
listed in :attr:`ScanResult.outside_links` so the run's summary names them (docs/SECURITY.md).
Nothing here raises for a bad entry: problems are returned as ``(path, reason)`` so they can be counted.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pixdex.errors import PixdexError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)


@dataclass(frozen=True)
class FileEntry:
    path: str  # absolute
    root: str  # the root it was found under (absolute)
    size: int
    mtime_ns: int


@dataclass
class ScanResult:
    roots: list[str]
    files: list[FileEntry] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), not stored
    unlisted: list[str] = field(default_factory=list)  # folders that could not be listed
    outside_links: list[tuple[str, str]] = field(default_factory=list)  # (link, target outside the roots)

    def covers(self, path: str) -> bool:
        """Whether ``path`` lies under a scanned root and no folder that failed to list.

        Only such paths may be treated as deleted when they were not found.
        """
        if not any(is_under(path, r) for r in self.roots):
            return False
        return not any(is_under(path, d) for d in self.unlisted)


def is_under(path: str, folder: str) -> bool:
    if path == folder:
        return True
    prefix = folder if folder.endswith(os.sep) else folder + os.sep
    return path.startswith(prefix)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _utf8_ok(path: str) -> bool:
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:  # undecodable bytes in the name (surrogate escapes)
        return False


def _reason(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "symbolic link loop"
    if e.errno == errno.ENOENT:
        return "broken symbolic link"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return f"cannot read: {e.strerror or e}"


def normalise_roots(paths: Sequence[Path]) -> list[str]:
    """Absolute, de-duplicated roots (a root inside another given root is dropped). Missing → PixdexError."""
    out: list[str] = []
    for p in paths:
        a = os.path.abspath(os.path.expanduser(os.fspath(p)))
        if not os.path.exists(a):
            raise PixdexError(f"no such file or folder: {p}")
        out.append(a)
    out = sorted(set(out), key=lambda r: (len(r), r))
    kept: list[str] = []
    for r in out:
        if not any(is_under(r, k) for k in kept):
            kept.append(r)
    return kept


def scan(roots: Sequence[Path], skip_dirs: Sequence[Path] = ()) -> ScanResult:
    """Scan ``roots`` (folders or single files). ``skip_dirs`` (e.g. the store itself) are not entered."""
    norm = normalise_roots(roots)
    res = ScanResult(roots=norm)
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()
    skip: set[tuple[int, int]] = set()
    for d in skip_dirs:
        try:
            st = os.stat(d)
            skip.add((st.st_dev, st.st_ino))
        except OSError:
            pass
    linked: list[tuple[str, str, os.stat_result]] = []  # symlinked files: added last, if still new
    for root in norm:
        try:
            st = os.stat(root)
        except OSError as e:
            res.problems.append((root, _reason(e)))
            res.unlisted.append(root)
            continue
        if stat.S_ISDIR(st.st_mode):
            _walk(root, root, st, res, seen_dirs, seen_files, skip, linked)
        else:
            _add_file(root, root, st, res, seen_files, explicit=True)
    for path, root, fst in linked:  # so a file reachable directly is indexed under its real path
        _add_file(path, root, fst, res, seen_files)
    log.info("scan: %d image files, %d problems", len(res.files), len(res.problems))
    return res


def _add_file(
    path: str,
    root: str,
    st: os.stat_result,
    res: ScanResult,
    seen_files: set[tuple[int, int]],
    explicit: bool = False,
) -> None:
    if not stat.S_ISREG(st.st_mode):
        res.problems.append((path, "not a regular file"))
        return
    if explicit and not is_image_name(path):
        res.problems.append((path, "not an image file name (extension)"))
        return
    if not _utf8_ok(path):
        res.problems.append((path, "file name is not valid UTF-8"))
        return
    key = (st.st_dev, st.st_ino)
    if key in seen_files:  # a hard link or a symlink to a file already found
        log.debug("skipping %s: same file as another path", path)
        return
    seen_files.add(key)
    res.files.append(FileEntry(path, root, int(st.st_size), int(st.st_mtime_ns)))


def _note_outside_link(link: str, res: ScanResult) -> None:
    target = os.path.realpath(link)
    if not any(is_under(target, os.path.realpath(r)) for r in res.roots):
        res.outside_links.append((link, target))


def _walk(
    folder: str,
    root: str,
    st: os.stat_result,
    res: ScanResult,
    seen_dirs: set[tuple[int, int]],
    seen_files: set[tuple[int, int]],
    skip: set[tuple[int, int]],
    linked: list[tuple[str, str, os.stat_result]],
) -> None:
    # Iterative depth-first walk: deep trees cannot overflow the stack.
    stack: list[tuple[str, os.stat_result]] = [(folder, st)]
    while stack:
        d, dst = stack.pop()
        key = (dst.st_dev, dst.st_ino)
        if key in skip:
            continue
        if key in seen_dirs:
            res.problems.append((d, "symbolic link loop (folder already scanned)"))
            continue
        seen_dirs.add(key)
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            res.problems.append((d, _reason(e)))
            res.unlisted.append(d)
            continue
        subdirs: list[tuple[str, os.stat_result]] = []
        for e in entries:
            name = e.name
            try:
                is_dir = e.is_dir()  # follows symlinks
            except OSError as err:
                if is_image_name(name):
                    res.problems.append((e.path, _reason(err)))
                continue
            if is_dir:
                if name.startswith("."):
                    continue
                try:
                    subdirs.append((e.path, e.stat()))
                    if e.is_symlink():
                        _note_outside_link(e.path, res)
                except OSError as err:
                    res.problems.append((e.path, _reason(err)))
                    res.unlisted.append(e.path)
                continue
            if name.startswith("._") or not is_image_name(name):
                continue
            try:
                fst = e.stat()
            except OSError as err:  # broken link, link loop, vanished meanwhile
                res.problems.append((e.path, _reason(err)))
                continue
            if e.is_symlink():
                linked.append((e.path, root, fst))
            else:
                _add_file(e.path, root, fst, res, seen_files)
        stack.extend(reversed(subdirs))

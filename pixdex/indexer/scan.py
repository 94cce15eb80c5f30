"""Find the image files under the roots given to ``pixdex index``: the scan rules, in one place.

Recursive ``os.scandir`` (entries sorted, so runs are deterministic). Every caller that needs to know
which files of a root belong in a store (``pixdex index``, ``pixdex watch`` through it, the scale-out
planner) calls :func:`scan`; nothing else walks a root.

The rules:

- Roots and folders are named by their real path (:func:`pixdex.paths.real_path`: links resolved, the
  on-disk case on a case-insensitive file system), so the same folder given through a symbolic link or
  with another case is the same root, and files are ``real folder + own name`` (a symbolic link to a
  file keeps its name). A root inside another given root is dropped.
- Hidden folders (``.name``) and AppleDouble ``._*`` files are skipped.
- Symbolic links to folders are followed, also outside every root (a photo library often links in a
  drive or a share; those are listed in :attr:`ScanResult.outside_links` so the summary names them,
  docs/SECURITY.md). Each folder is entered once, by its ``(st_dev, st_ino)``: a folder reached a second
  time (a link to a folder already scanned, or to a folder that contains it) is a note in
  :attr:`ScanResult.notes`, not a failure. Each file is indexed once even when reachable by several
  paths (a path that is not a link wins).
- Exclusions: the root's ``--exclude`` patterns (remembered per root in the store) and ``.pixdexignore``
  files in any folder under a root, both in gitignore syntax (``pathspec``), matched against the path
  relative to the root (a ``.pixdexignore`` file's patterns relative to its folder; a deeper file's
  patterns win, ``!pattern`` re-includes). A pattern from ``--exclude`` cannot be re-included. An
  excluded folder is not entered. Excluded files and folders are listed so that their rows can leave
  the store.

Nothing here raises for a bad entry: problems are returned as ``(path, reason)`` so they can be counted.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pixdex.errors import PixdexError
from pixdex.paths import real_path

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)
IGNORE_FILE = ".pixdexignore"
MAX_IGNORE_BYTES = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    path: str  # absolute: the real path of its folder + its own name
    root: str  # the root it was found under (real path)
    size: int
    mtime_ns: int


@dataclass
class ScanResult:
    roots: list[str]
    files: list[FileEntry] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), not stored
    unlisted: list[str] = field(default_factory=list)  # folders that could not be listed
    outside_links: list[tuple[str, str]] = field(default_factory=list)  # (link, target outside the roots)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (path, note): skipped, not failed
    followed: list[str] = field(default_factory=list)  # real paths of the folder links followed
    excluded_files: set[str] = field(default_factory=set)  # image files left out by a pattern
    excluded_dirs: list[str] = field(default_factory=list)  # folders left out by a pattern

    def covers(self, path: str, root: Optional[str] = None) -> bool:
        """Whether a stored file at ``path`` (found under ``root`` last time) should have been found now.

        True when it lies under a scanned root or a followed folder link, or was found under a scanned
        root last time (its link may be gone), and under no folder that failed to list. Only such paths
        may be treated as deleted when they were not found.
        """
        if any(is_under(path, d) for d in self.unlisted):
            return False
        if root is not None and root in self.roots:
            return True
        return any(is_under(path, r) for r in self.roots) or any(is_under(path, d) for d in self.followed)

    def is_excluded(self, path: str) -> bool:
        return path in self.excluded_files or any(is_under(path, d) for d in self.excluded_dirs)


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
    """Real, de-duplicated roots (a root inside another given root is dropped). Missing → PixdexError."""
    out: list[str] = []
    for p in paths:
        a = real_path(p)
        if not os.path.exists(a):
            raise PixdexError(f"no such file or folder: {p}")
        out.append(a)
    out = sorted(set(out), key=lambda r: (len(r), r))
    kept: list[str] = []
    for r in out:
        if not any(is_under(r, k) for k in kept):
            kept.append(r)
    return kept


# ---------------------------------------------------------------------- exclusion rules


def compile_patterns(patterns: Sequence[str], source: str = "--exclude"):
    """A ``pathspec.GitIgnoreSpec`` of gitignore-style ``patterns``; a bad one is a PixdexError."""
    import pathspec

    try:
        return pathspec.GitIgnoreSpec.from_lines(list(patterns))
    except (ValueError, TypeError) as e:  # GitWildMatchPatternError is a ValueError
        raise PixdexError(f"bad pattern in {source}: {e}") from e


Chain = tuple  # ((folder relative to the root, GitIgnoreSpec), ...), outermost first


def is_excluded(rel: str, is_dir: bool, chain: Chain, fixed=None) -> bool:
    """Whether ``rel`` (relative to the root, ``/``-separated) is excluded by the root's ``fixed``
    patterns or the ``.pixdexignore`` files of ``chain`` (the deepest one with a matching pattern
    decides, as with .gitignore)."""
    probe = rel + "/" if is_dir else rel
    if fixed is not None and fixed.match_file(probe):
        return True
    for base, spec in reversed(chain):
        r = spec.check_file(probe[len(base) + 1 :] if base else probe)
        if r.include is not None:
            return bool(r.include)
    return False


def _read_ignore_file(path: str, res: ScanResult):
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_IGNORE_BYTES)
        return compile_patterns(data.decode("utf-8", "replace").splitlines(), path)
    except (OSError, PixdexError) as e:
        res.notes.append((path, f"ignore file not used: {getattr(e, 'strerror', None) or e}"))
        return None


# ---------------------------------------------------------------------- the walk


def scan(
    roots: Sequence[Path],
    skip_dirs: Sequence[Path] = (),
    excludes: Optional[Mapping[str, Sequence[str]]] = None,
) -> ScanResult:
    """Scan ``roots`` (folders or single files). ``skip_dirs`` (e.g. the store itself) are not entered;
    ``excludes``: gitignore-style patterns per real root (``pixdex index --exclude``)."""
    norm = normalise_roots(roots)
    res = ScanResult(roots=norm)
    seen_dirs: dict[tuple[int, int], str] = {}
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
            patterns = (excludes or {}).get(root, ())
            fixed = compile_patterns(patterns) if patterns else None
            _walk(root, st, res, seen_dirs, seen_files, skip, linked, fixed)
        else:
            _add_file(root, root, st, res, seen_files, explicit=True)
    for path, root, fst in linked:  # so a file reachable directly is indexed under that path
        _add_file(path, root, fst, res, seen_files)
    log.info(
        "scan: %d image files, %d problems, %d excluded",
        len(res.files),
        len(res.problems),
        len(res.excluded_files),
    )
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


def _note_outside_link(link: str, target: str, res: ScanResult) -> None:
    if not any(is_under(target, r) for r in res.roots):
        res.outside_links.append((link, target))


@dataclass
class _Dir:
    path: str  # real path
    shown: str  # the path it was reached by (a link's own path), for notes
    rel: str  # relative to the root, "/"-separated: what the exclusion patterns see
    st: os.stat_result
    chain: Chain


def _walk(
    root: str,
    st: os.stat_result,
    res: ScanResult,
    seen_dirs: dict[tuple[int, int], str],
    seen_files: set[tuple[int, int]],
    skip: set[tuple[int, int]],
    linked: list[tuple[str, str, os.stat_result]],
    fixed,
) -> None:
    # Iterative depth-first walk: deep trees cannot overflow the stack.
    stack = [_Dir(root, root, "", st, ())]
    while stack:
        d = stack.pop()
        key = (d.st.st_dev, d.st.st_ino)
        if key in skip:
            continue
        if key in seen_dirs:
            res.notes.append((d.shown, f"folder already scanned as {seen_dirs[key]}; not scanned twice"))
            continue
        seen_dirs[key] = d.shown
        try:
            with os.scandir(d.path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            res.problems.append((d.path, _reason(e)))
            res.unlisted.append(d.path)
            continue
        chain = d.chain
        if any(e.name == IGNORE_FILE for e in entries):
            spec = _read_ignore_file(os.path.join(d.path, IGNORE_FILE), res)
            if spec is not None:
                chain = (*chain, (d.rel, spec))
        subdirs: list[_Dir] = []
        for e in entries:
            name = e.name
            rel = f"{d.rel}/{name}" if d.rel else name
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
                    link = e.is_symlink()
                    real = real_path(e.path) if link else e.path
                    if is_excluded(rel, True, chain, fixed):
                        res.excluded_dirs.append(real)
                        continue
                    subdirs.append(_Dir(real, e.path, rel, e.stat(), chain))
                    if link:
                        res.followed.append(real)
                        _note_outside_link(e.path, real, res)
                except OSError as err:
                    res.problems.append((e.path, _reason(err)))
                    res.unlisted.append(e.path)
                continue
            if name.startswith("._") or not is_image_name(name):
                if e.is_symlink() and not os.path.exists(e.path):
                    # a link to a folder that is gone (an unmounted drive?): keep the rows found there
                    res.unlisted.append(real_path(e.path))
                continue
            if is_excluded(rel, False, chain, fixed):
                res.excluded_files.add(e.path)
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

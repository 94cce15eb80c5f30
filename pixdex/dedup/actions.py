"""``pixdex dedup --action move DIR | symlink DIR | list FILE`` and ``--undo DIR``.

Rules (every one of them tested):

- Only non-kept members are acted on; a path that is the kept item of any group never is, and a path
  in several groups is acted on once.
- Nothing is ever deleted or overwritten. A move is a hard link then the unlink of the source (the
  destination cannot be clobbered: ``link`` fails on an existing name), or, across file systems, an
  exclusive-create copy then the unlink of the source; when the destination name is taken the file
  gets a ``~N`` suffix (reported in ``renamed``).
- A file that is missing, or whose size or mtime differs from the row indexed (``Member.bytes``,
  ``Member.mtime_ns``), is skipped and reported, never moved, linked or listed; ``move`` also leaves
  symbolic links in place (a relative link would break).
- Relative paths are kept: the destination of ``/roots/a/2020/x.jpg`` is ``DIR/2020/x.jpg`` when
  ``/roots/a`` is the common folder of the members' indexed roots (``Member.root``; the file's folder
  when unknown), ``DIR/a/2020/x.jpg`` with a second root ``/roots/b``: distinct sources never map to the
  same destination.
- ``move``/``symlink`` append one JSON line per file to ``DIR/pixdex-undo.jsonl``
  (``{"action", "from", "to", "bytes", "mtime_ns", "at"}``), written before the file is touched, so a
  crash leaves every moved file listed; :func:`undo` puts moved files back (never over an existing
  file) and removes only the symlinks it made.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pixdex.dedup.model import Member, Report
from pixdex.dedup.output import atomic_text
from pixdex.errors import PixdexError

log = logging.getLogger(__name__)

UNDO_NAME = "pixdex-undo.jsonl"
ACTIONS = ("none", "move", "symlink", "list")
_MAX_SUFFIX = 10_000


@dataclass
class ActionResult:
    action: str
    target: str  # DIR or FILE
    moved: int = 0
    linked: int = 0
    listed: int = 0
    restored: int = 0  # undo: files moved back / links removed
    renamed: list[dict] = field(default_factory=list)  # {"path", "to"}: destination name was taken
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"}
    undo_file: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------- what to act on


def duplicates_to_act_on(report: Report) -> tuple[list[Member], list[dict]]:
    """(non-kept members, once per path, never a path kept anywhere in the report; skipped)."""
    kept = {os.path.abspath(g.keep.path) for g in report.groups}
    seen: set[str] = set()
    out, skipped = [], []
    for g in report.groups:
        for m in g.duplicates():
            p = os.path.abspath(m.path)
            if p in seen:
                continue
            seen.add(p)
            if p in kept:
                skipped.append({"path": m.path, "reason": "kept in another group"})
                continue
            out.append(m)
    return out, skipped


def unchanged_reason(m: Member) -> str | None:
    """None when the file is still the one indexed; otherwise why it must be left alone."""
    try:
        st = os.stat(m.path)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"cannot stat: {e.strerror or e}"
    if not os.path.isfile(m.path):
        return "not a regular file"
    if m.bytes is not None and st.st_size != m.bytes:
        return f"changed since indexing (size {m.bytes} -> {st.st_size})"
    if m.mtime_ns is not None and st.st_mtime_ns != m.mtime_ns:
        return "changed since indexing (modified time)"
    return None


def relative_base(members: list[Member]) -> str:
    """The folder that destination paths are relative to: the common folder of the members' roots
    (a member's own folder when its root is unknown or does not contain it)."""
    folders = []
    for m in members:
        p = os.path.abspath(m.path)
        r = os.path.abspath(m.root) if m.root else None
        folders.append(r if r and (p.startswith(r.rstrip(os.sep) + os.sep)) else os.path.dirname(p))
    if not folders:
        return os.sep
    try:
        return os.path.commonpath(folders)
    except ValueError as e:  # different drives (Windows)
        raise PixdexError(f"the duplicates have no common folder to keep relative paths under: {e}")


# ---------------------------------------------------------------------- file operations


def _free_name(dst: str) -> str:
    """``dst`` itself when free, else ``stem~N.ext`` with the smallest free N."""
    if not os.path.lexists(dst):
        return dst
    stem, ext = os.path.splitext(dst)
    for n in range(1, _MAX_SUFFIX):
        cand = f"{stem}~{n}{ext}"
        if not os.path.lexists(cand):
            return cand
    raise FileExistsError(errno.EEXIST, "no free name", dst)


def _copy_then_unlink(src: str, dst: str) -> None:
    """Cross-device move: exclusive-create copy (data + times + mode), fsync, then unlink ``src``."""
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        os.unlink(src)
        return
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        shutil.copystat(src, dst)
        if os.path.getsize(dst) != os.path.getsize(src):
            raise OSError(errno.EIO, "copy is incomplete", dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(dst)  # our own partial copy; the source is untouched
        raise
    os.unlink(src)


def move_noclobber(src: str, dst: str) -> None:
    """Move ``src`` to ``dst``; FileExistsError when ``dst`` exists (nothing is overwritten)."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno == errno.EXDEV:
            _copy_then_unlink(src, dst)
            return
        if e.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS):
            # a file system without hard links: rename after a check (a small race, no clobber by us)
            if os.path.lexists(dst):
                raise FileExistsError(errno.EEXIST, "destination exists", dst) from e
            os.rename(src, dst)
            return
        raise
    os.unlink(src)


def _prune_empty_dirs(start: str, stop: str) -> None:
    """Remove now-empty folders from ``start`` up to (not including) ``stop``."""
    d, stop = os.path.abspath(start), os.path.abspath(stop)
    while d != stop and d.startswith(stop + os.sep):
        try:
            os.rmdir(d)  # only succeeds on an empty folder
        except OSError:
            return
        d = os.path.dirname(d)


# ---------------------------------------------------------------------- actions


def _prepare_dir(dest: str | Path) -> str:
    d = os.path.abspath(os.fspath(dest))
    if os.path.exists(d) and not os.path.isdir(d):
        raise PixdexError(f"{d} exists and is not a folder")
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as e:
        raise PixdexError(f"cannot create {d}: {e.strerror or e}")
    return d


def _place(report: Report, dest: str | Path, action: str) -> ActionResult:
    d = _prepare_dir(dest)
    members, skipped = duplicates_to_act_on(report)
    res = ActionResult(action=action, target=d, skipped=skipped, undo_file=os.path.join(d, UNDO_NAME))
    base = relative_base(members)
    if os.path.realpath(d) == os.path.realpath(base) or os.path.realpath(base).startswith(
        os.path.realpath(d).rstrip(os.sep) + os.sep
    ):
        raise PixdexError(f"{d} contains the duplicates' folder {base}: choose a folder outside it")
    with open(res.undo_file, "a", encoding="utf-8") as undo_log:
        for m in members:
            reason = unchanged_reason(m)
            if reason is None and action == "move" and os.path.islink(m.path):
                reason = "a symbolic link (moving it could break it): left in place"
            if reason:
                res.skipped.append({"path": m.path, "reason": reason})
                continue
            src = os.path.abspath(m.path)
            wanted = os.path.join(d, os.path.relpath(src, base))
            try:
                os.makedirs(os.path.dirname(wanted), exist_ok=True)
                dst = _free_name(wanted)
            except OSError as e:
                res.skipped.append({"path": m.path, "reason": f"cannot {action}: {e.strerror or e}"})
                continue
            entry = {"action": action, "from": src, "to": dst, "bytes": m.bytes, "mtime_ns": m.mtime_ns}
            entry["at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            undo_log.write(json.dumps(entry, ensure_ascii=False) + "\n")
            undo_log.flush()  # before the file is touched: a crash leaves it listed
            try:
                if action == "move":
                    move_noclobber(src, dst)
                else:
                    os.symlink(src, dst)
            except OSError as e:
                res.skipped.append({"path": m.path, "reason": f"cannot {action}: {e.strerror or e}"})
                undo_log.write(json.dumps({"action": "failed", "to": dst}, ensure_ascii=False) + "\n")
                undo_log.flush()
                continue
            if dst != wanted:
                res.renamed.append({"path": m.path, "to": dst})
            if action == "move":
                res.moved += 1
            else:
                res.linked += 1
        os.fsync(undo_log.fileno())
    log.info("%s: %d moved, %d linked, %d skipped", action, res.moved, res.linked, len(res.skipped))
    return res


def move_duplicates(report: Report, dest: str | Path) -> ActionResult:
    """Move every non-kept member under ``dest`` (relative paths kept), logging ``dest/pixdex-undo.jsonl``."""
    return _place(report, dest, "move")


def link_duplicates(report: Report, dest: str | Path) -> ActionResult:
    """Make a symlink under ``dest`` (relative paths kept) to every non-kept member; the files stay."""
    return _place(report, dest, "symlink")


def list_duplicates(report: Report, file: str | Path) -> ActionResult:
    """Write the non-kept paths to ``file``, one per line (UTF-8); paths with a line break are skipped."""
    members, skipped = duplicates_to_act_on(report)
    res = ActionResult(action="list", target=os.path.abspath(os.fspath(file)), skipped=skipped)
    with atomic_text(file, newline="\n") as f:
        for m in members:
            reason = unchanged_reason(m)
            if reason is None and ("\n" in m.path or "\r" in m.path):
                reason = "line break in the path"
            if reason:
                res.skipped.append({"path": m.path, "reason": reason})
                continue
            f.write(m.path + "\n")
            res.listed += 1
    return res


def apply_action(report: Report, action: str, target: str | Path | None) -> ActionResult | None:
    """Dispatch ``--action``: ``none`` (None), ``move``/``symlink`` DIR, ``list`` FILE."""
    if action not in ACTIONS:
        raise PixdexError(f"unknown action {action!r}: choose one of {', '.join(ACTIONS)}")
    if action == "none":
        return None
    if not target:
        raise PixdexError(f"--action {action} needs a {'FILE' if action == 'list' else 'DIR'}")
    if action == "list":
        return list_duplicates(report, target)
    return move_duplicates(report, target) if action == "move" else link_duplicates(report, target)


# ---------------------------------------------------------------------- undo


def _read_undo(path: str) -> tuple[list[dict], list[dict]]:
    entries, bad = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                bad.append({"path": f"{path}:{n}", "reason": "unreadable undo line"})
                continue
            if isinstance(e, dict) and e.get("action") == "failed":
                # the operation logged just before it did not happen: drop that entry
                for i in range(len(entries) - 1, -1, -1):
                    if entries[i]["to"] == e.get("to"):
                        del entries[i]
                        break
            elif isinstance(e, dict) and e.get("action") in ("move", "symlink") and "to" in e and "from" in e:
                entries.append(e)
            else:
                bad.append({"path": f"{path}:{n}", "reason": "not an undo entry"})
    return entries, bad


def undo(dest: str | Path) -> ActionResult:
    """Undo ``move``/``symlink`` into ``dest``: move each file back to its original path (never over an
    existing file) and remove the symlinks made there (only links that still point to their source).
    Entries that cannot be undone stay in the undo list; when none stay, the list is renamed
    ``pixdex-undo.<time>.done.jsonl``."""
    d = os.path.abspath(os.fspath(dest))
    path = os.path.join(d, UNDO_NAME)
    if not os.path.isfile(path):
        raise PixdexError(f"no undo list in {d} ({UNDO_NAME} not found)")
    entries, bad = _read_undo(path)
    res = ActionResult(action="undo", target=d, skipped=bad, undo_file=path)
    remaining: list[dict] = []
    for e in reversed(entries):
        src, dst = e["from"], e["to"]  # src: the original place
        if e["action"] == "symlink":
            if os.path.islink(dst) and os.readlink(dst) == src:
                os.unlink(dst)  # the link this action made, not a user file
                res.restored += 1
                _prune_empty_dirs(os.path.dirname(dst), d)
            elif os.path.lexists(dst):
                res.skipped.append({"path": dst, "reason": "no longer the link pixdex made"})
                remaining.append(e)
            continue
        if not os.path.lexists(dst):
            if not os.path.lexists(src):
                res.skipped.append({"path": dst, "reason": "missing (moved or deleted since)"})
                remaining.append(e)
            continue  # else: never moved (a crash before the move) or already back
        if os.path.lexists(src):
            res.skipped.append({"path": dst, "reason": f"{src} exists: not overwritten"})
            remaining.append(e)
            continue
        try:
            os.makedirs(os.path.dirname(src), exist_ok=True)
            move_noclobber(dst, src)
        except OSError as err:
            res.skipped.append({"path": dst, "reason": f"cannot move back: {err.strerror or err}"})
            remaining.append(e)
            continue
        res.restored += 1
        _prune_empty_dirs(os.path.dirname(dst), d)
    if remaining:
        with atomic_text(path, newline="\n") as f:
            for e in reversed(remaining):
                f.write(json.dumps(e, ensure_ascii=False) + "\n")
    else:
        done = os.path.join(d, f"pixdex-undo.{time.strftime('%Y%m%d-%H%M%S')}.done.jsonl")
        os.replace(path, _free_name(done))
        res.undo_file = None
    log.info("undo: %d restored, %d skipped", res.restored, len(res.skipped))
    return res

"""Scanning: extensions, hidden folders, AppleDouble files, symlinks without loops, odd names."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pixdex.errors import PixdexError
from pixdex.indexer.scan import IMAGE_EXTENSIONS, normalise_roots, scan

needs_symlinks = pytest.mark.skipif(sys.platform == "win32", reason="symlinks")


def touch(p: Path, data: bytes = b"x") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def found(res) -> set:
    return {os.path.relpath(f.path, res.roots[0]) for f in res.files}


def test_extensions_hidden_and_appledouble(tmp_path):
    for ext in sorted(IMAGE_EXTENSIONS):
        touch(tmp_path / f"a{ext}")
    touch(tmp_path / "upper.JPG")
    touch(tmp_path / "notes.txt")
    touch(tmp_path / "raw.cr2")
    touch(tmp_path / "._a.jpg")  # AppleDouble resource fork
    touch(tmp_path / ".hidden" / "in_hidden.jpg")
    touch(tmp_path / "sub" / "deeper" / "deep.png")
    touch(tmp_path / "sub" / ".git" / "obj.png")
    res = scan([tmp_path])
    want = {f"a{ext}" for ext in IMAGE_EXTENSIONS} | {"upper.JPG", os.path.join("sub", "deeper", "deep.png")}
    assert found(res) == want
    assert res.problems == []
    f = next(f for f in res.files if f.path.endswith("deep.png"))
    st = os.stat(f.path)
    assert (f.size, f.mtime_ns, f.root) == (st.st_size, st.st_mtime_ns, str(tmp_path))


@needs_symlinks
def test_symlink_loops_and_duplicates(tmp_path):
    root = tmp_path / "root"
    touch(root / "a" / "one.jpg")
    touch(tmp_path / "outside" / "two.jpg")
    os.symlink(root, root / "a" / "loop")  # a folder link back to an ancestor
    os.symlink(tmp_path / "outside", root / "linked")  # a folder link out of the root: followed
    os.symlink(root / "a" / "one.jpg", root / "alias.jpg")  # a second path to the same file
    os.symlink(root / "missing.jpg", root / "broken.jpg")
    os.symlink("self.jpg", root / "self.jpg")  # a file link loop
    res = scan([root])
    # files are named by the real path of their folder: the linked-in one by where it really is
    assert {f.path for f in res.files} == {str(root / "a" / "one.jpg"), str(tmp_path / "outside" / "two.jpg")}
    assert {f.root for f in res.files} == {str(root)}
    reasons = {os.path.basename(p): r for p, r in res.problems}
    assert reasons == {"broken.jpg": "broken symbolic link", "self.jpg": "symbolic link loop"}
    # the link to an ancestor is a note, not a failure
    assert [(os.path.basename(p), "already scanned" in n) for p, n in res.notes] == [("loop", True)]
    assert str(tmp_path / "outside") in res.followed
    assert res.covers(str(tmp_path / "outside" / "gone.jpg")) and not res.covers(str(tmp_path / "x.jpg"))


def test_unicode_and_newline_names(tmp_path):
    names = ["café ☕.jpg", "new\nline.png", "日本語.webp", "sp ace.gif"]
    for n in names:
        touch(tmp_path / n)
    assert found(scan([tmp_path])) == set(names)


@pytest.mark.skipif(sys.platform != "linux", reason="undecodable names need a bytes file system")
def test_undecodable_name_is_a_problem_not_a_crash(tmp_path):
    with open(os.path.join(os.fsencode(tmp_path), b"bad\xff.jpg"), "wb") as f:
        f.write(b"x")
    touch(tmp_path / "ok.jpg")
    res = scan([tmp_path])
    assert found(res) == {"ok.jpg"}
    assert [r for _, r in res.problems] == ["file name is not valid UTF-8"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_folder_protects_its_rows(tmp_path):
    touch(tmp_path / "locked" / "x.jpg")
    touch(tmp_path / "open" / "y.jpg")
    os.chmod(tmp_path / "locked", 0)
    try:
        res = scan([tmp_path])
    finally:
        os.chmod(tmp_path / "locked", 0o755)
    assert found(res) == {os.path.join("open", "y.jpg")}
    assert res.problems and res.problems[0][1] == "permission denied"
    assert not res.covers(str(tmp_path / "locked" / "x.jpg"))  # not treated as deleted
    assert res.covers(str(tmp_path / "open" / "gone.jpg"))


def test_roots_files_nesting_and_missing(tmp_path):
    f = touch(tmp_path / "d" / "single.png")
    touch(tmp_path / "d" / "e" / "inner.png")
    assert normalise_roots([tmp_path / "d" / "e", tmp_path / "d"]) == [str(tmp_path / "d")]
    res = scan([f])
    assert [x.path for x in res.files] == [str(f)]
    assert res.covers(str(f)) and not res.covers(str(tmp_path / "d" / "other.png"))
    with pytest.raises(PixdexError, match="no such file or folder"):
        scan([tmp_path / "nope"])
    txt = touch(tmp_path / "t.txt")
    assert scan([txt]).problems == [(str(txt), "not an image file name (extension)")]


def test_skip_dirs(tmp_path):
    touch(tmp_path / "photos" / "p.jpg")
    touch(tmp_path / "store" / "thumb.jpg")
    res = scan([tmp_path], skip_dirs=[tmp_path / "store"])
    assert found(res) == {os.path.join("photos", "p.jpg")}

"""Dedup actions: move/symlink keep relative paths and never overwrite; undo restores; list; skips."""

import errno
import json
import os

import pytest
from dedup_support import build_report, member, non_kept_paths, write_png

from pixdex.dedup import actions
from pixdex.dedup.actions import UNDO_NAME, apply_action, list_duplicates, undo
from pixdex.dedup.model import Report, make_group, make_summary
from pixdex.errors import PixdexError


def snapshot(root):
    """relative path -> bytes of every file under ``root`` (symlinks excluded)."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def test_move_keeps_relative_paths_and_undo_restores_identical_files(tmp_path):
    root = tmp_path / "photos"
    report = build_report(root, ("dup/deeper/c_copy.png",))
    before = snapshot(root)
    dups = non_kept_paths(report)
    dest = tmp_path / "dups"
    res = apply_action(report, "move", dest)
    assert res.moved == len(dups) and not res.skipped and not res.renamed
    for p in dups:
        rel = os.path.relpath(p, root)
        assert not os.path.exists(p)
        assert (dest / rel).read_bytes() == before[rel]  # same relative path, same bytes
    for g in report.groups:  # kept files untouched
        assert open(g.keep.path, "rb").read() == before[os.path.relpath(g.keep.path, root)]
    entries = [json.loads(ln) for ln in (dest / UNDO_NAME).read_text().splitlines()]
    assert {e["from"] for e in entries} == dups
    assert all(e["action"] == "move" and os.path.exists(e["to"]) for e in entries)

    back = undo(dest)
    assert back.restored == len(dups) and not back.skipped
    assert snapshot(root) == before  # byte-identical, at the original paths
    assert not (dest / UNDO_NAME).exists()
    left = [f for _d, _s, fs in os.walk(dest) for f in fs]
    assert len(left) == 1 and left[0].endswith(".done.jsonl")  # only the spent undo list, no empty folders
    assert [d for d in os.listdir(dest) if (dest / d).is_dir()] == []


def test_move_with_two_roots_keeps_them_apart(tmp_path):
    r1, r2 = tmp_path / "A" / "photos", tmp_path / "B" / "photos"
    keep = write_png(r1 / "x.png", 1)
    d1 = r1 / "sub" / "x.png"
    d1.parent.mkdir(parents=True)
    d1.write_bytes(keep.read_bytes())
    d2 = r2 / "sub" / "x.png"  # same path relative to its own root
    d2.parent.mkdir(parents=True)
    d2.write_bytes(keep.read_bytes())
    g = make_group(member(keep, 1, r1), [member(d1, 2, r1, "exact", 1.0), member(d2, 3, r2, "exact", 1.0)])
    dest = tmp_path / "out"
    res = actions.move_duplicates(Report([g], make_summary([g], images=3)), dest)
    assert res.moved == 2 and not res.renamed
    assert (dest / "A" / "photos" / "sub" / "x.png").is_file()
    assert (dest / "B" / "photos" / "sub" / "x.png").is_file()


def test_symlink_points_to_the_originals_and_undo_removes_only_links(tmp_path):
    root = tmp_path / "photos"
    report = build_report(root)
    before = snapshot(root)
    dest = tmp_path / "links"
    res = apply_action(report, "symlink", dest)
    dups = non_kept_paths(report)
    assert res.linked == len(dups) and res.moved == 0
    for p in dups:
        link = dest / os.path.relpath(p, root)
        assert link.is_symlink() and os.readlink(link) == p
        assert os.path.samefile(link, p)
    assert snapshot(root) == before  # nothing moved
    back = undo(dest)
    assert back.restored == len(dups)
    assert not any(os.path.islink(os.path.join(d, f)) for d, _s, fs in os.walk(dest) for f in fs)
    assert snapshot(root) == before


def test_destination_collision_is_not_overwritten(tmp_path):
    root = tmp_path / "photos"
    report = build_report(root)
    before = snapshot(root)
    dest = tmp_path / "dups"
    occupied = dest / "backup" / "2020" / "a.png"
    occupied.parent.mkdir(parents=True)
    occupied.write_bytes(b"someone else's file")
    res = actions.move_duplicates(report, dest)
    assert occupied.read_bytes() == b"someone else's file"
    src = str(root / "backup" / "2020" / "a.png")
    assert res.renamed == [{"path": src, "to": str(dest / "backup" / "2020" / "a~1.png")}]
    assert (dest / "backup" / "2020" / "a~1.png").read_bytes() == before["backup/2020/a.png"]
    undo(dest)
    assert snapshot(root) == before
    assert occupied.read_bytes() == b"someone else's file"


def test_move_noclobber_refuses_an_existing_destination(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"A")
    b.write_bytes(b"B")
    with pytest.raises(FileExistsError):
        actions.move_noclobber(str(a), str(b))
    assert a.read_bytes() == b"A" and b.read_bytes() == b"B"


def test_cross_device_move_copies_then_removes(tmp_path, monkeypatch):
    src = write_png(tmp_path / "s" / "a.png", 1)
    data, mtime = src.read_bytes(), src.stat().st_mtime_ns
    dst = tmp_path / "d.png"

    def no_link(*a, **k):
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(actions.os, "link", no_link)
    actions.move_noclobber(str(src), str(dst))
    assert not src.exists() and dst.read_bytes() == data and dst.stat().st_mtime_ns == mtime
    other = tmp_path / "o.png"
    other.write_bytes(b"x")
    with pytest.raises(FileExistsError):
        actions.move_noclobber(str(other), str(dst))
    assert dst.read_bytes() == data and other.read_bytes() == b"x"


def test_changed_and_missing_files_are_skipped(tmp_path):
    root = tmp_path / "photos"
    report = build_report(root, ("dup/c_copy.png",))
    grown = root / "small" / "a_small.png"
    with open(grown, "ab") as f:
        f.write(b"more")
    touched = root / "other" / "b_similar.png"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # same size, new mtime
    gone = root / "dup" / "c_copy.png"
    gone.unlink()
    dest = tmp_path / "dups"
    res = actions.move_duplicates(report, dest)
    reasons = {s["path"]: s["reason"] for s in res.skipped}
    assert reasons[str(grown)].startswith("changed since indexing")
    assert reasons[str(touched)].startswith("changed since indexing")
    assert reasons[str(gone)] == "missing"
    assert res.moved == 1  # only the unchanged exact copy
    assert grown.exists() and touched.exists()
    assert not (dest / "small").exists() and not (dest / "other").exists()
    lst = list_duplicates(report, tmp_path / "list.txt")
    assert (tmp_path / "list.txt").read_text() == ""  # the moved one is missing now; the rest changed
    assert lst.listed == 0 and len(lst.skipped) == 4


def test_a_symlinked_duplicate_is_not_moved(tmp_path):
    root = tmp_path / "photos"
    a = write_png(root / "a.png", 1)
    (root / "sub").mkdir()
    link = root / "sub" / "a_link.png"
    link.symlink_to("../a.png")  # relative: moving it elsewhere would break it
    g = make_group(member(a, 1, root), [member(link, 2, root, "exact", 1.0)])
    res = actions.move_duplicates(Report([g], {}), tmp_path / "dups")
    assert res.moved == 0 and res.skipped[0]["reason"].startswith("a symbolic link")
    assert link.is_symlink() and link.read_bytes() == a.read_bytes()


def test_list_writes_exactly_the_non_kept_paths(tmp_path):
    root = tmp_path / "photos"
    report = build_report(root, ("dup/c copy, with spaces.png", "dup/ünïcode.png"))
    before = snapshot(root)
    out = tmp_path / "dups.txt"
    res = apply_action(report, "list", out)
    lines = out.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""
    assert sorted(lines[:-1]) == sorted(non_kept_paths(report))
    assert res.listed == len(lines) - 1
    assert snapshot(root) == before


def test_a_kept_file_is_never_moved(tmp_path):
    root = tmp_path / "photos"
    a = write_png(root / "a.png", 1)
    b = root / "b.png"
    b.write_bytes(a.read_bytes())
    c = root / "c.png"
    c.write_bytes(a.read_bytes())
    # b is a duplicate in group 1 and the kept item of group 2 (overlapping groups)
    g1 = make_group(member(a, 1, root), [member(b, 2, root, "exact", 1.0)])
    g2 = make_group(member(b, 2, root), [member(c, 3, root, "exact", 1.0), member(a, 1, root, "exact", 1.0)])
    res = actions.move_duplicates(Report([g1, g2], {}), tmp_path / "dups")
    assert a.exists() and b.exists() and not c.exists()
    assert res.moved == 1
    assert {s["path"] for s in res.skipped} == {str(a), str(b)}


def test_undo_never_overwrites_a_new_file_at_the_original_path(tmp_path):
    root = tmp_path / "photos"
    report = build_report(root)
    dest = tmp_path / "dups"
    actions.move_duplicates(report, dest)
    new = root / "small" / "a_small.png"
    new.write_bytes(b"a new file")
    back = undo(dest)
    assert new.read_bytes() == b"a new file"
    assert [s["path"] for s in back.skipped] == [str(dest / "small" / "a_small.png")]
    assert (dest / "small" / "a_small.png").exists()
    remaining = [json.loads(ln) for ln in (dest / UNDO_NAME).read_text().splitlines()]
    assert [e["from"] for e in remaining] == [str(new)]
    new.rename(tmp_path / "elsewhere.png")
    assert undo(dest).restored == 1 and not (dest / UNDO_NAME).exists()


def test_a_failed_move_leaves_a_clean_undo_list(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    report = build_report(root)
    before = snapshot(root)
    real = actions.move_noclobber
    calls = []

    def flaky(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError(errno.EACCES, "Permission denied")
        real(src, dst)

    monkeypatch.setattr(actions, "move_noclobber", flaky)
    dest = tmp_path / "dups"
    res = actions.move_duplicates(report, dest)
    assert res.moved == len(non_kept_paths(report)) - 1
    assert [s["reason"] for s in res.skipped] == ["cannot move: Permission denied"]
    monkeypatch.setattr(actions, "move_noclobber", real)
    back = undo(dest)
    assert back.restored == res.moved and not back.skipped
    assert snapshot(root) == before


def test_destination_that_contains_the_sources_is_refused(tmp_path):
    root = tmp_path / "photos"
    report = build_report(root)
    before = snapshot(root)
    for bad in (root, tmp_path):
        with pytest.raises(PixdexError, match="choose a folder outside"):
            actions.move_duplicates(report, bad)
    assert snapshot(root) == before
    inside = root / "dups"  # a folder inside the root is fine
    assert actions.link_duplicates(report, inside).linked == len(non_kept_paths(report))


def test_bad_action_arguments_are_one_line_errors(tmp_path):
    report = build_report(tmp_path / "photos")
    assert apply_action(report, "none", None) is None
    with pytest.raises(PixdexError, match="unknown action"):
        apply_action(report, "delete", tmp_path)
    with pytest.raises(PixdexError, match="needs a DIR"):
        apply_action(report, "move", None)
    (tmp_path / "f").write_text("x")
    with pytest.raises(PixdexError, match="not a folder"):
        apply_action(report, "move", tmp_path / "f")
    with pytest.raises(PixdexError, match="no undo list"):
        undo(tmp_path)

"""Roots by real path (symbolic links, case), the m006 repair of duplicated rows, `pixdex forget`,
`--exclude` and `.pixdexignore`, and failed files (`status --failed`, `--retry-failed`)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from index_support import assert_consistent, db_rows, faiss_ids, make_images

from pixdex.errors import PixdexError
from pixdex.indexer.run import index_paths
from pixdex.paths import on_disk_case, real_path
from pixdex.storage.status import failed_files, store_status

MODEL = "tiny-vit"
needs_symlinks = pytest.mark.skipif(sys.platform == "win32", reason="symlinks")
REPO = Path(__file__).resolve().parents[1]


def run(paths, store, **kw):
    kw.setdefault("model", MODEL)
    kw.setdefault("json_mode", True)
    kw.setdefault("batch_size", 8)
    return index_paths([Path(p) for p in paths], store_dir=store, **kw)


def cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "pixdex", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# ---------------------------------------------------------------------- real paths


@needs_symlinks
def test_the_same_folder_through_a_link_adds_nothing(tmp_path):
    photos = tmp_path / "photos"
    files = make_images(photos, 5)
    os.symlink(photos, tmp_path / "alias")
    store = tmp_path / "store"
    first = run([photos], store)
    again = run([tmp_path / "alias"], store)
    assert (first["new"], again["new"], again["unchanged"], again["deleted"]) == (5, 0, 5, 0)
    assert again["roots"] == [str(photos)] and again["total"] == 5
    rows = assert_consistent(store, files)
    assert {r["root"] for r in rows.values()} == {str(photos)}
    both = run([photos, tmp_path / "alias"], store)  # given twice in one run: one root
    assert both["roots"] == [str(photos)] and both["total"] == 5


@needs_symlinks
def test_a_linked_folder_inside_a_root_is_followed_once_and_is_no_failure(tmp_path):
    root = tmp_path / "lib"
    files = make_images(root / "2023", 4)
    os.symlink(root / "2023", root / "album")  # sorts after its target
    os.symlink(root / "2023", root / "0-first")  # sorts before it: its files keep their real path
    store = tmp_path / "store"
    s = run([root], store)
    assert (s["new"], s["failed"], s["failures"]) == (4, 0, [])
    assert sorted(Path(n["path"]).name for n in s["notes"]) == ["2023", "album"]
    assert all("already scanned" in n["note"] for n in s["notes"])
    assert_consistent(store, files)


def test_real_path_keeps_a_file_links_own_name(tmp_path):
    make_images(tmp_path / "real", 1)
    target = tmp_path / "real" / "img_00000.png"
    if sys.platform != "win32":
        os.symlink(tmp_path / "real", tmp_path / "via")
        os.symlink(target, tmp_path / "real" / "named.png")
        assert real_path(tmp_path / "via" / "named.png", follow_last=False) == str(
            tmp_path / "real" / "named.png"
        )
        assert real_path(tmp_path / "via" / "named.png") == str(target)
    assert real_path(tmp_path / "real" / ".." / "real") == str(tmp_path / "real")


def test_case_is_normalised_where_the_file_system_ignores_it(tmp_path, monkeypatch):
    """A case-insensitive folder (simulated: names compared casefolded below ``tmp_path``) gets the
    on-disk spelling; a case-sensitive one (this Linux disk) keeps what was given."""
    (tmp_path / "Photos" / "Trip").mkdir(parents=True)
    (tmp_path / "Photos" / "Trip" / "IMG_1.JPG").write_bytes(b"x")
    given = str(tmp_path / "photos" / "TRIP" / "img_1.jpg")
    assert on_disk_case(given) == given  # case-sensitive: another name, left alone

    import pixdex.paths as paths

    def insensitive_key(path: str):
        if not path.startswith(str(tmp_path)):
            return real_key(path)
        cur = str(tmp_path)
        for name in Path(path).relative_to(tmp_path).parts:
            found = [n for n in os.listdir(cur) if n.casefold() == name.casefold()]
            if not found:
                return None
            cur = os.path.join(cur, found[0])
        return real_key(cur)

    real_key = paths._stat_key
    monkeypatch.setattr(paths, "_stat_key", insensitive_key)
    assert on_disk_case(given) == str(tmp_path / "Photos" / "Trip" / "IMG_1.JPG")


# ---------------------------------------------------------------------- the m006 repair


def _old_store_with_duplicates(tmp_path: Path) -> tuple[Path, list[Path], Path]:
    """A store as pixdex before m006 left it: the folder indexed once by its real path and once
    through a link (every photo twice, each row with a vector in FAISS), m006 not recorded."""
    from pixdex.storage.faiss_index import reconcile
    from pixdex.storage.store import Store
    from pixdex.storage.writes import Batch, NewRow, apply_batch, known_files

    photos = tmp_path / "photos"
    files = make_images(photos, 6)
    (photos / "broken.png").write_bytes(b"not an image")
    os.symlink(photos, tmp_path / "alias")
    store = tmp_path / "store"
    run([photos], store)
    with Store.open_writer(store) as st:
        dim = int(st.identity["dim"])
        known = known_files(st)
        link_root = str(tmp_path / "alias")
        batch = Batch()
        for path, k in sorted(known.items()):
            alias = os.path.join(link_root, os.path.basename(path))
            if k.status == "ok":
                batch.inserts.append(
                    NewRow(alias, link_root, k.size, k.mtime_ns, k.content_hash, copy_from=k.id)
                )
            else:
                batch.inserts.append(
                    NewRow(alias, link_root, k.size, k.mtime_ns, k.content_hash, status="failed")
                )
        # a file whose only row is at the link path (indexed only through the link): renamed, kept
        only = make_images(photos, 1, seed=9, start=50)[0]
        st_ = only.stat()
        batch.inserts.append(
            NewRow(
                os.path.join(link_root, only.name),
                link_root,
                st_.st_size,
                st_.st_mtime_ns,
                None,
                vector=np.eye(dim, dtype=np.float32)[0],
            )
        )
        apply_batch(st, batch, dim)
        index, _ = reconcile(st.load_faiss(), dim, st.live_ids(), st.vectors, 50_000)
        st.save_faiss(index)
    con = sqlite3.connect(store / "pixdex.db")
    con.execute("DELETE FROM migrations WHERE name = 'm006_real_paths'")
    con.commit()
    con.close()
    return store, [*files, only], photos


@needs_symlinks
def test_m006_keeps_one_row_per_real_file_and_faiss_agrees(tmp_path):
    store, files, photos = _old_store_with_duplicates(tmp_path)
    before = db_rows(store)
    assert len(before) == 2 * 7 + 1 and faiss_ids(store).size == 2 * 6 + 1
    ok_ids = {r["id"] for p, r in before.items() if r["root"] == str(photos) and r["status"] == "ok"}
    from pixdex.storage.store import Store

    Store.open_writer(store).close()  # the migration runs here, and FAISS is brought in line
    rows = assert_consistent(store, [*files, photos / "broken.png"])
    assert {r["root"] for r in rows.values()} == {str(photos)}
    assert ok_ids <= {r["id"] for r in rows.values()}  # the rows at the real path keep their ids
    assert rows[str(photos / "broken.png")]["status"] == "failed"
    st = store_status(store)
    assert st["faiss"]["agrees"] and st["faiss"]["ntotal"] == 7 and st["indexed"] == 7
    again = run([tmp_path / "alias"], store)  # and indexing through the link now adds nothing
    assert (again["new"], again["deleted"], again["total"]) == (0, 0, 7)


# ---------------------------------------------------------------------- forget


def test_forget_removes_a_roots_rows_and_vectors_and_no_file(tmp_path):
    a = make_images(tmp_path / "a", 4)
    b = make_images(tmp_path / "b", 3, seed=1)
    store = tmp_path / "store"
    run([tmp_path / "a", tmp_path / "b"], store)
    files_before = digest(tmp_path / "a")
    p = cli("forget", tmp_path / "a", "--store", store, "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert (out["root"], out["removed"], out["total"]) == (str(tmp_path / "a"), 4, 3)
    assert_consistent(store, b)
    assert digest(tmp_path / "a") == files_before and all(f.exists() for f in a)
    assert store_status(store)["faiss"]["agrees"]
    p = cli("forget", tmp_path / "a", "--store", store)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "is not a root of the store" in p.stderr and str(tmp_path / "b") in p.stderr


@needs_symlinks
def test_forget_through_a_link_and_a_crash_before_the_faiss_save(tmp_path, monkeypatch):
    from pixdex.storage import roots
    from pixdex.storage.store import Store

    make_images(tmp_path / "a", 3)
    b = make_images(tmp_path / "b", 2, seed=1)
    os.symlink(tmp_path / "a", tmp_path / "link")
    store = tmp_path / "store"
    run([tmp_path / "a", tmp_path / "b"], store)

    def crash(self, index):
        raise KeyboardInterrupt

    monkeypatch.setattr(Store, "save_faiss", crash)
    with pytest.raises(KeyboardInterrupt):
        roots.forget_root(store, str(tmp_path / "link"))
    monkeypatch.undo()
    assert sorted(db_rows(store)) == sorted(map(str, b))  # the rows went in one transaction
    run([tmp_path / "b"], store)  # the next writer repairs FAISS
    assert_consistent(store, b)
    with pytest.raises(PixdexError, match="its roots: " + str(tmp_path / "b")):
        roots.forget_root(store, str(tmp_path / "a"))


# ---------------------------------------------------------------------- exclusions


def test_exclude_is_remembered_per_root_and_pixdexignore_works_like_gitignore(tmp_path):
    root = tmp_path / "lib"
    keep = make_images(root / "keep", 3)
    raw = make_images(root / "raw", 2, seed=1)
    shots = make_images(root / "shots", 3, seed=2)
    store = tmp_path / "store"
    s = run([root], store, exclude=["raw/"])
    assert s["new"] == 6
    assert_consistent(store, keep + shots)
    s = run([root], store)  # remembered
    assert (s["new"], s["excluded"]) == (0, 0)
    # a .pixdexignore deeper in the tree: its patterns are relative to its folder; ! re-includes
    (root / "shots" / ".pixdexignore").write_text("*.png\n!img_00001.png\n")
    s = run([root], store)
    assert (s["excluded"], s["deleted"], s["new"]) == (2, 0, 0)
    assert_consistent(store, keep + [shots[1]])
    s = run([root], store, clear_excludes=True)
    assert s["new"] == 2
    assert_consistent(store, keep + raw + [shots[1]])
    with pytest.raises(PixdexError, match="bad pattern"):
        run([root], store, exclude=["!"])


def test_an_excluded_root_is_not_protected_as_an_unmounted_drive(tmp_path):
    root = tmp_path / "lib"
    make_images(root, 3)
    store = tmp_path / "store"
    run([root], store)
    s = run([root], store, exclude=["*.png"])
    assert (s["excluded"], s["kept_from_empty_roots"], s["total"]) == (3, {}, 0)


# ---------------------------------------------------------------------- failed files


def test_failed_files_are_named_counted_as_failed_and_retried_on_request(tmp_path, monkeypatch, capsys):
    import pixdex.indexer.pipeline as pipeline
    from pixdex.images import DecodeError

    root = tmp_path / "lib"
    good = make_images(root, 3)
    bad = {root / "empty.png": b"", root / "text.jpg": b"hello", root / "zz.png": b"\x89PNG\r\n"}
    for p, data in bad.items():
        p.write_bytes(data)
    flaky = good[0]  # decodes, but not in the first run (a decoder that was missing, say)
    real = pipeline.decode_many

    def failing(data, drafts, name=""):
        if name == str(flaky):
            raise DecodeError("unsupported for now")
        return real(data, drafts, name=name)

    monkeypatch.setattr(pipeline, "decode_many", failing)
    store = tmp_path / "store"
    s = run([root], store, json_mode=False)
    out = capsys.readouterr().out
    failed = sorted(map(str, [*bad, flaky]))
    assert (s["new"], s["failed"]) == (2, 4)
    assert len(s["failed_paths"]) == 3 and {f["path"] for f in s["failed_paths"]} <= set(failed)
    for f in s["failed_paths"]:
        assert f["path"] in out
    assert f"pixdex status --failed --store {store}" in out
    listed = failed_files(store)
    assert [r["path"] for r in listed] == failed
    assert all(r["reason"] and r["since"] for r in listed)
    monkeypatch.setattr(pipeline, "decode_many", real)
    again = run([root], store)
    assert (again["failed"], again["not_retried"], again["hashed"], again["new"]) == (0, 4, 0, 0)
    retried = run([root], store, retry_failed=True)
    readable = sum(1 for f in failed if os.path.getsize(f))  # an empty file has no content hash
    assert (retried["hashed"], retried["failed"], retried["updated"], retried["not_retried"]) == (
        readable,
        3,
        1,
        0,
    )
    assert [r["path"] for r in failed_files(store)] == sorted(map(str, bad))
    assert_consistent(store, [*good, *bad])
    p = cli("status", "--failed", "--json", "--store", store)
    assert p.returncode == 0 and [r["path"] for r in json.loads(p.stdout)] == sorted(map(str, bad))
    assert set(json.loads(p.stdout)[0]) == {"path", "reason", "since"}
    p = cli("status", "--failed", "--store", store)
    assert p.returncode == 0 and all(str(b) in p.stdout for b in bad)

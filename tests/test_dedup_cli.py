"""``pixdex dedup`` through the real CLI: outputs, actions and undo, --against, --image, --calibrate,
errors. One small folder of demo-data images (two or more shapes each) and copies of some of them."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from dedup_support import group_pairs_of, run_cli
from PIL import Image

from pixdex.dedup import perceptual
from pixdex.dedup.transforms import TRANSFORMS
from pixdex.images import decode, read_file

COPY_KINDS = ("jpeg_q30", "downscale_50", "mirror", "crop_center_05")
EXPECTED_MEMBER_KEYS = {"id", "path", "tier", "score", "width", "height", "bytes", "format", "kept"}


def _quality(path: Path) -> int:
    return perceptual.copy_hash_array(decode(read_file(str(path)), perceptual.HASH_DRAFT)[0]).quality


def _demo_folder(root: Path, n_orig: int = 14, n_copied: int = 5, seed: int = 5) -> tuple[list[Path], dict]:
    """``root/orig`` with demo images of 2+ shapes, ``root/orig/copies`` with copies of the first
    ``n_copied`` ones, which are images whose PDQ quality the copy tier trusts (perceptual.MIN_QUALITY:
    many demo images are too flat for it), one exact duplicate; returns (originals, copy path ->
    original path)."""
    from pixdex.training.demo_data import generate

    gen = root.parent / f"{root.name}-gen"
    generate(gen, n=120, seed=seed)
    meta = json.loads((gen / "objects.json").read_text())["images"]
    shapes = [gen / r["image"] for r in meta if len(r["objects"]) >= 2]
    trusted = [p for p in shapes if _quality(p) >= perceptual.MIN_QUALITY]
    assert len(trusted) >= n_copied
    chosen = trusted[:n_copied] + [p for p in shapes if p not in trusted[:n_copied]][: n_orig - n_copied]
    orig = root / "orig"
    orig.mkdir(parents=True)
    originals = []
    for src in chosen:
        shutil.copy2(src, orig / src.name)
        originals.append(orig / src.name)
    shutil.rmtree(gen)
    copies = {}
    (orig / "copies").mkdir()
    for p in originals[:n_copied]:
        with Image.open(p) as im:
            im = im.convert("RGB")
            for t in COPY_KINDS:
                c = orig / "copies" / f"{p.stem}-{t}.jpg"
                TRANSFORMS[t](im).save(c, quality=90)
                copies[str(c)] = str(p)
    exact = orig / f"zz-{originals[0].stem}-same.png"  # sorts after its original: "largest" keeps that
    shutil.copy2(originals[0], exact)
    copies[str(exact)] = str(originals[0])
    return originals, copies


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("dd") / "lib"
    originals, copies = _demo_folder(root)
    store = root.parent / "store"
    rc, _, err = run_cli(
        "index", str(root / "orig"), "--store", str(store), "--model", "pixdex-demo", "--json"
    )
    assert rc == 0, err
    return root, store, originals, copies


def _dedup(store: Path, *args: str) -> dict:
    rc, out, err = run_cli("dedup", "--store", str(store), "--json", *args)
    assert rc == 0, err
    return json.loads(out)


def test_json_shape_and_groups(demo):
    root, store, originals, copies = demo
    doc = _dedup(store)
    s = doc["summary"]
    assert s["tiers"] == ["exact", "copy", "semantic"] and s["mode"] == "store"
    assert set(s["thresholds"]) == {"copy", "semantic"}
    assert s["images"] == len(originals) + len(copies)
    for g in doc["groups"]:
        first, rest = g["members"][0], g["members"][1:]
        assert g["keep"] == first["path"] and first["kept"] and first["tier"] is None
        assert rest and all(not m["kept"] and m["tier"] in ("exact", "copy", "semantic") for m in rest)
        for m in g["members"]:
            assert set(m) == EXPECTED_MEMBER_KEYS
    found = group_pairs_of(doc)
    # every copy is grouped with its original (originals are PNG, so "largest" keeps them)
    for c, o in copies.items():
        assert tuple(sorted((c, o))) in found
    exact = next(m for g in doc["groups"] for m in g["members"] if m["path"].endswith("-same.png"))
    assert exact["tier"] == "exact" and exact["score"] == 1
    assert s["duplicates"] == sum(len(g["members"]) - 1 for g in doc["groups"])


def test_table_csv_and_html(demo, tmp_path):
    root, store, originals, copies = demo
    csv_file, html_file = tmp_path / "d.csv", tmp_path / "d.html"
    rc, out, err = run_cli(
        "dedup",
        "--store",
        str(store),
        "--tiers",
        "exact,copy",
        "--csv",
        str(csv_file),
        "--html",
        str(html_file),
    )
    assert rc == 0, err
    assert "kept" in out and "reclaimable" in out.splitlines()[-1]
    with open(csv_file, newline="") as f:
        rows = list(csv.DictReader(f))
    doc = _dedup(store, "--tiers", "exact,copy")
    assert len(rows) == sum(len(g["members"]) for g in doc["groups"])
    assert {r["path"] for r in rows if r["kept"] == "true"} == {g["keep"] for g in doc["groups"]}
    page = html_file.read_text(encoding="utf-8")
    assert page.count('src="data:image/jpeg;base64,') == len(rows)
    assert "<script" not in page


def test_action_list_move_undo_and_reindex(tmp_path):
    root = tmp_path / "lib"
    originals, copies = _demo_folder(root, n_orig=6, n_copied=2, seed=9)
    store = tmp_path / "store"
    assert run_cli("index", str(root), "--store", str(store), "--model", "pixdex-demo", "--json")[0] == 0
    doc = _dedup(store, "--tiers", "exact,copy")
    dups = {m["path"] for g in doc["groups"] for m in g["members"][1:]}
    assert dups == set(copies)

    lst = tmp_path / "dups.txt"
    rc, out, err = run_cli(
        "dedup", "--store", str(store), "--tiers", "exact,copy", "--action", "list", "--to", str(lst)
    )
    assert rc == 0, err
    assert set(lst.read_text().splitlines()) == dups

    moved = root / "moved"  # inside the indexed root: the files show up there as moved rows
    rc, out, err = run_cli(
        "dedup", "--store", str(store), "--tiers", "exact,copy", "--action", "move", "--to", str(moved)
    )
    assert rc == 0, err
    assert "moved" in out and "--undo" in out
    assert not any(os.path.exists(p) for p in dups)
    assert all(os.path.exists(p) for p in map(str, originals))
    rc, out, _ = run_cli("index", str(root), "--store", str(store), "--json")
    assert rc == 0
    after = _dedup(store, "--tiers", "exact,copy")
    paths = {m["path"] for g in after["groups"] for m in g["members"]}
    assert not paths & dups
    assert {p for p in paths if p.startswith(str(moved))}  # the moved copies are rows at their new place
    assert json.loads(out)["moved"] + json.loads(out)["updated"] >= 1 or json.loads(out)["new"] >= 1

    rc, out, err = run_cli("dedup", "--store", str(store), "--undo", str(moved))
    assert rc == 0, err
    assert all(os.path.exists(p) for p in dups)
    assert run_cli("index", str(root), "--store", str(store), "--json")[0] == 0
    again = _dedup(store, "--tiers", "exact,copy")
    assert {m["path"] for g in again["groups"] for m in g["members"][1:]} == dups


def test_action_needs_to_and_never_deletes(demo, tmp_path):
    _, store, _, _ = demo
    rc, out, err = run_cli("dedup", "--store", str(store), "--action", "move")
    assert rc == 2 and err.count("\n") == 1 and "--to" in err
    rc, out, err = run_cli("dedup", "--store", str(store), "--action", "delete", "--to", str(tmp_path))
    assert rc == 2 and "unknown --action" in err


def test_against_another_store_and_model(demo, tmp_path):
    root, store, originals, copies = demo
    # B: the originals (reference); A: the copies and two unrelated originals
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    for p in originals[:5]:
        shutil.copy2(p, b / p.name)
    for c in copies:
        shutil.copy2(c, a / Path(c).name)
    for p in originals[-2:]:
        shutil.copy2(p, a / p.name)
    for folder in (a, b):
        rc, _, err = run_cli(
            "index",
            str(folder),
            "--store",
            str(tmp_path / f"s{folder.name}"),
            "--model",
            "pixdex-demo",
            "--json",
        )
        assert rc == 0, err
    doc = _dedup(tmp_path / "sA", "--against", str(tmp_path / "sB"), "--tiers", "exact,copy")
    assert doc["summary"]["mode"] == "against"
    for g in doc["groups"]:
        assert g["keep"].startswith(str(b)) and g["members"][0]["kept"]
        assert all(m["path"].startswith(str(a)) for m in g["members"][1:])
    grouped = {m["path"]: g["keep"] for g in doc["groups"] for m in g["members"][1:]}
    assert grouped == {str(a / Path(c).name): str(b / Path(o).name) for c, o in copies.items()}

    # a store on another model (random weights): semantic refused in one line, copy/exact still work
    rc, _, err = run_cli(
        "index",
        str(b),
        "--store",
        str(tmp_path / "sR"),
        "--model",
        "pixdex-demo",
        "--checkpoint",
        "random",
        "--json",
    )
    assert rc == 0, err
    rc, out, err = run_cli(
        "dedup", "--store", str(tmp_path / "sA"), "--against", str(tmp_path / "sR"), "--tiers", "semantic"
    )
    assert rc == 2 and err.count("\n") == 1 and "same model" in err and out == ""
    rc, out, err = run_cli(
        "dedup", "--store", str(tmp_path / "sA"), "--against", str(tmp_path / "sR"), "--json"
    )
    assert rc == 0 and "semantic tier is skipped" in err
    doc2 = json.loads(out)
    assert doc2["summary"]["tiers"] == ["exact", "copy"]
    assert {m["path"] for g in doc2["groups"] for m in g["members"][1:]} == set(grouped)


def test_image_is_this_file_already_here(demo, tmp_path):
    root, store, originals, copies = demo
    src = originals[-1]  # an original without copies in the store
    with Image.open(src) as im:
        q = tmp_path / "new-photo.jpg"
        TRANSFORMS["jpeg_q30"](im.convert("RGB")).save(q)
    stranger = tmp_path / "stranger.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(stranger)
    doc = _dedup(store, "--image", str(q), "--image", str(stranger))
    s = doc["summary"]
    assert s["mode"] == "image" and s["images"] == 2
    assert s["not_found"] == [str(stranger)]
    assert [g["keep"] for g in doc["groups"]] == [str(src)]
    assert [m["path"] for m in doc["groups"][0]["members"][1:]] == [str(q)]
    tiers = {m["tier"] for m in s["matches"][str(q)] if m["path"] == str(src)}
    assert tiers and tiers <= {"copy", "semantic"}
    rc, out, err = run_cli("dedup", "--store", str(store), "--image", str(tmp_path / "missing.jpg"))
    assert rc == 2 and err.count("\n") == 1 and "missing.jpg" in err


def test_calibrate(demo):
    _, store, _, _ = demo
    doc = _dedup(store, "--calibrate", "--sample", "4")
    assert doc["sample"] == 4 and doc["copies"] == 4 * len(TRANSFORMS)
    for tier in ("copy", "semantic"):
        rec = doc["recall"][tier]
        assert set(rec) == set(TRANSFORMS)
        assert all(0.0 <= v["current"] <= 1.0 for v in rec.values())
        fp = doc["false_positives"][tier]
        assert fp["pairs_compared"] == 6 and 0 <= fp["current"] <= 6
        assert "value" in doc["suggested"][tier]
    # the copy tier finds re-encodes and mirrors of the store's own images
    assert doc["recall"]["copy"]["jpeg_q30"]["current"] >= 0.75
    assert doc["recall"]["copy"]["mirror"]["current"] >= 0.75
    rc, out, err = run_cli("dedup", "--store", str(store), "--calibrate", "--sample", "3", "--tiers", "copy")
    assert rc == 0, err
    assert "recall per transform" in out and "suggested: --copy-distance" in out


def test_empty_store_and_missing_copy_hashes(tmp_path):
    rc, out, err = run_cli("dedup", "--store", str(tmp_path / "nothing"))
    assert rc == 2 and err.count("\n") == 1 and "pixdex index" in err
    lib = tmp_path / "lib"
    _demo_folder(lib, n_orig=4, n_copied=1, seed=3)
    store = tmp_path / "old"
    rc, _, err = run_cli(
        "index",
        str(lib),
        "--store",
        str(store),
        "--model",
        "pixdex-demo",
        "--json",
        env={"PIXDEX_COPY_HASHES": "0"},
    )
    assert rc == 0, err
    rc, out, err = run_cli("dedup", "--store", str(store), "--tiers", "copy")
    assert rc == 2 and err.count("\n") == 1 and "pixdex index" in err
    rc, out, err = run_cli("dedup", "--store", str(store), "--json")
    assert rc == 0 and "copy tier is skipped" in err and "pixdex index" in err
    assert json.loads(out)["summary"]["tiers"] == ["exact", "semantic"]
    assert run_cli("index", str(lib), "--store", str(store), "--json")[0] == 0  # the backfill
    doc = _dedup(store, "--tiers", "copy")
    assert doc["groups"] and "warnings" not in doc["summary"]


def test_memory_is_not_quadratic():
    """The semantic tier on 20k vectors keeps its peak allocation far below one N x N float32 matrix."""
    import tracemalloc

    from pixdex.dedup import find

    n, d = 20_000, 64
    rng = np.random.default_rng(0)
    v = rng.standard_normal((n, d)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v[1] = v[0]
    items = find.ItemSet(
        np.arange(n),
        np.full(n, None, dtype=object),
        np.zeros(0, np.int64),
        find.empty_rows(),
        np.arange(n),
        v,
    )
    tracemalloc.start()
    p = find.semantic_within(items, 0.99)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (0, 1) in set(zip(p.i.tolist(), p.j.tolist()))
    assert peak < n * n * 4 / 8, peak

"""The synthetic demo set: deterministic bytes, captions that agree with the pixels and the ground truth."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from pixdex.errors import PixdexError
from pixdex.training import demo_data
from pixdex.training.demo_data import BACKGROUNDS, COLOURS, SHAPES, generate, load_annotations


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "set"
    generate(out, n=60, seed=3, image_size=96)
    return out


def test_same_seed_same_bytes_other_seed_other_images(demo_set, tmp_path):
    generate(tmp_path / "again", n=60, seed=3, image_size=96)
    assert _files(tmp_path / "again") == _files(demo_set)
    generate(tmp_path / "other", n=60, seed=4, image_size=96)
    a = _files(demo_set)
    b = _files(tmp_path / "other")
    same = [name for name in a if name.endswith(".png") and a[name] == b[name]]
    assert not same
    assert (tmp_path / "other" / "manifest.csv").read_bytes() != (demo_set / "manifest.csv").read_bytes()


def test_smaller_n_is_a_prefix(demo_set, tmp_path):
    generate(tmp_path / "small", n=7, seed=3, image_size=96)
    small = _files(tmp_path / "small")
    big = _files(demo_set)
    for i in range(7):
        name = f"img_{i:05d}.png"
        assert small[name] == big[name]
    rows_small = list(csv.DictReader(open(tmp_path / "small" / "manifest.csv")))
    rows_big = list(csv.DictReader(open(demo_set / "manifest.csv")))
    assert {r["image"] for r in rows_small} == {f"img_{i:05d}.png" for i in range(7)}
    assert rows_small == rows_big[: len(rows_small)]


def test_manifest_matches_annotations_and_files(demo_set):
    rows = list(csv.DictReader(open(demo_set / "manifest.csv", newline="")))
    meta = load_annotations(demo_set)
    assert len(meta["images"]) == 60
    assert set(rows[0]) >= {"image", "caption"}
    # one row per caption, an image's rows together, its full caption first
    assert len(rows) == sum(len(rec["captions"]) for rec in meta["images"])
    it = iter(rows)
    for rec in meta["images"]:
        mine = [next(it) for _ in rec["captions"]]
        assert {r["image"] for r in mine} == {rec["image"]}
        assert [r["caption"] for r in mine] == rec["captions"] and rec["captions"][0] == rec["caption"]
        # a lone object gets a second wording, n objects one caption each (+ one naming two of three)
        assert len(rec["captions"]) == {1: 2, 2: 3, 3: 5}[len(rec["objects"])]
        with Image.open(demo_set / rec["image"]) as im:
            assert im.size == (96, 96) and im.mode == "RGB"
    counts = {len(r["objects"]) for r in meta["images"]}
    assert counts == {1, 2, 3}


def test_captions_name_every_object_and_true_relations(demo_set):
    meta = load_annotations(demo_set)
    relations = 0
    for rec in meta["images"]:
        pairs = sorted((o["colour"], o["shape"]) for o in rec["objects"])
        singles = []
        for cap in rec["captions"]:
            named = [o for o in rec["objects"] if f"{o['colour']} {o['shape']}" in cap]
            mentioned = [(c, sh) for c in COLOURS for sh in SHAPES if f"{c} {sh}" in cap]
            assert sorted(mentioned) == sorted((o["colour"], o["shape"]) for o in named), (
                cap
            )  # nothing made up
            assert named, cap
            if len(named) == 1:
                singles.append((named[0]["colour"], named[0]["shape"]))
            if "background" in cap:
                assert f"{rec['background']} background" in cap
            for place, phrase in demo_data.PLACE_PHRASES.items():
                if cap.endswith(phrase) or f" {phrase} " in cap:  # a placed caption names one object
                    assert len(named) == 1 and named[0]["position"] == place, cap
        cap = rec["caption"]
        assert len([p for p in pairs if f"{p[0]} {p[1]}" in cap]) == len(pairs), cap  # the full caption
        assert set(singles) == set(pairs), rec["captions"]  # every object has a caption of its own
        for word in ("above", "below", "to the left of", "to the right of"):
            if f" {word} " in cap:
                relations += 1
                first, second = cap.split(f" {word} ")
                a = next(o for o in rec["objects"] if f"{o['colour']} {o['shape']}" in first)
                b = next(o for o in rec["objects"] if f"{o['colour']} {o['shape']}" in second)
                dx, dy = a["x"] - b["x"], a["y"] - b["y"]
                expect = (
                    ("above" if dy < 0 else "below")
                    if abs(dy) >= abs(dx)
                    else ("to the left of" if dx < 0 else "to the right of")
                )
                assert word == expect, cap
    assert relations > 0
    assert all(
        " a orange" not in c and not c.startswith("a orange") for r in meta["images"] for c in r["captions"]
    )


def test_pixels_agree_with_ground_truth(demo_set):
    meta = load_annotations(demo_set)
    size = meta["image_size"]
    for rec in meta["images"]:
        arr = np.asarray(Image.open(demo_set / rec["image"]).convert("RGB")).astype(int)
        # the most common pixel is the background colour
        colours, counts = np.unique(arr.reshape(-1, 3), axis=0, return_counts=True)
        bg = colours[counts.argmax()]
        assert np.abs(bg - np.array(BACKGROUNDS[rec["background"]])).max() <= 8
        for o in rec["objects"]:
            x, y = int(o["x"] * size), int(o["y"] * size)
            assert np.abs(arr[y, x] - np.array(COLOURS[o["colour"]])).max() <= 16, (rec["image"], o)
            assert o["shape"] in SHAPES


def test_cells_are_distinct_and_pairs_unique(demo_set):
    for rec in load_annotations(demo_set)["images"]:
        objs = rec["objects"]
        assert len({tuple(o["cell"]) for o in objs}) == len(objs)
        for o in objs:  # the object lies inside its own cell
            row, col = o["cell"]
            assert col / 4 <= o["x"] - o["radius"] and o["x"] + o["radius"] <= (col + 1) / 4
            assert row / 4 <= o["y"] - o["radius"] and o["y"] + o["radius"] <= (row + 1) / 4
        assert len({(o["colour"], o["shape"]) for o in objs}) == len(objs)


def test_refuses_a_foreign_folder_and_replaces_an_old_set(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"mine")
    with pytest.raises(PixdexError, match="not empty"):
        generate(foreign, n=3, seed=0)
    assert (foreign / "holiday.jpg").read_bytes() == b"mine"
    out = tmp_path / "set"
    generate(out, n=5, seed=0, image_size=64)
    generate(out, n=2, seed=1, image_size=64)
    assert sorted(p.name for p in out.glob("*.png")) == ["img_00000.png", "img_00001.png"]
    assert json.loads((out / "objects.json").read_text())["seed"] == 1
    with pytest.raises(PixdexError, match="at least 1"):
        generate(tmp_path / "none", n=0, seed=0)


def test_cli_demo_data(tmp_path):
    from typer.testing import CliRunner

    from pixdex.cli import app

    res = CliRunner().invoke(app, ["demo-data", str(tmp_path / "cli"), "--n", "4", "--seed", "5"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(tmp_path / "cli" / "manifest.csv")))
    assert len({r["image"] for r in rows}) == 4 and len(rows) >= 8
    with Image.open(tmp_path / "cli" / rows[0]["image"]) as im:
        assert im.size == (demo_data.DEFAULT_IMAGE_SIZE,) * 2

"""Quality of ``pixdex dedup`` end to end: the real CLI (``pixdex index`` then ``pixdex dedup --json``)
with ``pixdex-demo``, pairs read back from the groups.

- ../shared/data plus copies made by :mod:`pixdex.dedup.transforms` (the goal classes: JPEG
  re-encode, downscale, small crop, mirror): precision >= 0.95 and recall >= 0.90 per class, and no
  group that holds two different scenes (ground truth: bench/dedup_quality.py's ``scene_of``). The
  exact and copy tiers only: pixdex-demo is trained on synthetic shapes, and its cosine between
  different real photos reaches 0.98 (measured), so its semantic tier means nothing on photos.
- demo-data images with pixdex-demo, all tiers (semantic included): the same bars per class, for the
  copies of the images whose PDQ quality the copy tier trusts (``perceptual.MIN_QUALITY``); the
  others (most demo images: a few shapes on a flat background) stay in the folder as distractors, and
  the copy tier leaves them out. Images with a single shape are left out of the folder: a lone shape
  on a flat background is, for a perceptual hash (PDQ distance 2-4 between different ones, quality
  mostly under 20) and for this model (cosine up to 0.999), the same picture as another lone shape of
  the same kind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dedup_support import group_pairs_of, run_cli, shared_ground_truth
from index_support import SHARED_DATA

from pixdex.dedup import perceptual
from pixdex.dedup.transforms import GOAL_KINDS, TRANSFORMS, names_of_kind
from pixdex.images import decode, read_file

GOAL = {kind: names_of_kind(kind) for kind in GOAL_KINDS}
SEP = "~"


def _copies(bases: dict[str, Path], out: Path) -> dict[str, tuple[str, str]]:
    """Write every goal transform of each base image into ``out``: copy path -> (base key, transform)."""
    out.mkdir(parents=True, exist_ok=True)
    made = {}
    for key, path in bases.items():
        img, _ = decode(read_file(str(path)), None, str(path))
        stem = key.replace("/", "__")
        for names in GOAL.values():
            for t in names:
                p = out / f"{stem}{SEP}{t}.jpg"
                TRANSFORMS[t](img).save(p, format="JPEG", quality=95)
                made[str(p)] = (key, t)
    return made


def _index_and_dedup(folders, store: Path, *dedup_args) -> dict:
    rc, out, err = run_cli(
        "index", *map(str, folders), "--store", str(store), "--model", "pixdex-demo", "--json"
    )
    assert rc == 0, err
    rc, out, err = run_cli("dedup", "--store", str(store), "--json", *dedup_args)
    assert rc == 0, err
    return json.loads(out)


def _scores(doc: dict, scene: dict[str, str], copies: dict[str, tuple[str, str]], source_path) -> dict:
    """Per goal class: (precision, recall) of the pairs read from the groups."""
    found = group_pairs_of(doc)
    res = {}
    for kind, names in GOAL.items():
        cps = [p for p, (_, t) in copies.items() if t in names]
        truth = {tuple(sorted((p, source_path(copies[p][0])))) for p in cps}
        hits = len(truth & found)
        touching = [
            (a, b)
            for a, b in found
            if a in copies and copies[a][1] in names or b in copies and copies[b][1] in names
        ]
        true = sum(1 for a, b in touching if scene[a] == scene[b])
        res[kind] = (true / len(touching) if touching else 1.0, hits / len(truth))
    return res


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent")
def test_shared_photos_copies_end_to_end(tmp_path):
    scene_of, neardup_originals = shared_ground_truth()
    data = tmp_path / "data"
    shutil.copytree(SHARED_DATA, data, ignore=shutil.ignore_patterns("*.md"))  # a folder the test owns
    bases = {p.relative_to(data).as_posix(): p for p in sorted((data / "photos").iterdir())}
    bases.update({f"neardup/{r}": data / "neardup" / r for r in neardup_originals})
    copies = _copies(bases, tmp_path / "copies")
    # the default keep policy (largest): a mirrored copy can be the kept item, and crops of the
    # original must still be linked to it directly (star rule)
    doc = _index_and_dedup([data, tmp_path / "copies"], tmp_path / "store", "--tiers", "exact,copy")

    scene = {}
    for p in data.rglob("*"):
        if p.is_file():
            scene[str(p)] = scene_of(p.relative_to(data).as_posix())
    for p, (key, _) in copies.items():
        scene[p] = scene_of(key)
    assert doc["summary"]["tiers"] == ["exact", "copy"]

    merged = [g for g in doc["groups"] if len({scene[m["path"]] for m in g["members"]}) > 1]
    assert merged == [], [[m["path"] for m in g["members"]] for g in merged[:3]]
    scores = _scores(doc, scene, copies, lambda key: str(data / key))
    for kind, (precision, recall) in scores.items():
        assert precision >= 0.95 and recall >= 0.90, (kind, precision, recall, scores)
    # the ground truth's known duplicates among the shared files are found too
    found = group_pairs_of(doc)
    for a, b in (
        ("neardup/bridge-dih/bridge-5-flipx.jpg", "neardup/bridge/aaa-orig.jpg"),
        ("formats/ukbench09380.webp", "photos/ukbench09380.jpg"),
    ):
        assert tuple(sorted((str(data / a), str(data / b)))) in found


def test_demo_data_all_tiers_end_to_end(tmp_path):
    from pixdex.training.demo_data import generate

    gen = tmp_path / "gen"
    generate(gen, n=150, seed=11)
    meta = json.loads((gen / "objects.json").read_text())["images"]
    folder = tmp_path / "demo"
    folder.mkdir()
    bases, scene = {}, {}
    for rec in meta:
        if len(rec["objects"]) >= 2:
            src = gen / rec["image"]
            shutil.copy2(src, folder / src.name)
            scene[str(folder / src.name)] = src.stem
            img = decode(read_file(str(src)), perceptual.HASH_DRAFT)[0]
            if perceptual.copy_hash_array(img).quality >= perceptual.MIN_QUALITY:
                bases[src.stem] = folder / src.name
    assert len(bases) >= 30 and len(scene) > len(bases)  # untrusted images stay as distractors
    copies = _copies(bases, tmp_path / "copies")
    doc = _index_and_dedup([folder, tmp_path / "copies"], tmp_path / "store")
    assert doc["summary"]["tiers"] == ["exact", "copy", "semantic"]

    scene.update({p: key for p, (key, _) in copies.items()})
    scores = _scores(doc, scene, copies, lambda key: str(bases[key]))
    for kind, (precision, recall) in scores.items():
        assert precision >= 0.95 and recall >= 0.90, (kind, precision, recall, scores)
    # every member is within its tier's threshold of the kept item (the star rule)
    th = doc["summary"]["thresholds"]
    for g in doc["groups"]:
        for m in g["members"][1:]:
            if m["tier"] == "copy":
                assert m["score"] <= th["copy"]
            elif m["tier"] == "semantic":
                assert m["score"] >= th["semantic"] - 1e-6

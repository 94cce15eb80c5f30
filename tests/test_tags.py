"""Zero-shot tags on a real store: the bundled pixdex-demo model on fresh demo-data sets.

`pixdex tag` (stored probabilities equal an independent computation through the torch encoder;
incremental; recomputed when the label set, the templates or the cut change; rows go with their images),
`pixdex index --tag`, `search --tag` (a filter, combinable, and alone), `pixdex tags`, the torch-free
path, and the measured figures of issue 14: zero-shot accuracy on single-object images (ensemble and one
template) and tag precision on multi-object images. Seeds 14014-14017 are used by no other test.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("faiss")

from pixdex.errors import PixdexError  # noqa: E402
from pixdex.storage.contract import DB_FILE  # noqa: E402
from pixdex.training.demo_data import COLOURS, SHAPES, generate, load_annotations  # noqa: E402

SEED, SEED_NEW, SEED_SINGLE = 14014, 14015, 14016
COLOUR_SHAPES = [f"{c} {s}" for c in COLOURS for s in SHAPES]
ACCURACY_BAR = 0.95  # issue 14: the shipped model, with the better of ensemble and single template
PRECISION_BAR = 0.8  # measured 0.89 (seed 14014, 300 images); recall 0.83


def _truth(ann: dict) -> dict[str, set[str]]:
    return {a["image"]: {f"{o['colour']} {o['shape']}" for o in a["objects"]} for a in ann["images"]}


def _tags(store: Path) -> dict[str, dict[str, float]]:
    con = sqlite3.connect(store / DB_FILE)
    try:
        rows = con.execute("SELECT images.path, label, prob FROM tags JOIN images ON images.id = image_id")
        out: dict[str, dict[str, float]] = {}
        for path, label, prob in rows:
            out.setdefault(path, {})[label] = prob
        return out
    finally:
        con.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A demo set indexed with pixdex-demo, a labels file of every colour x shape, the encoder."""
    from pixdex.encoders.encoder import load_encoder
    from pixdex.indexer.run import index_paths

    root = tmp_path_factory.mktemp("tags")
    generate(root / "photos", n=160, seed=SEED)
    labels = root / "colour_shapes.txt"
    labels.write_text("# every colour x shape\n" + "".join(f"{x}\n" for x in COLOUR_SHAPES))
    index_paths([root / "photos"], root / "store", model="pixdex-demo", device="cpu", json_mode=True)
    return root, root / "store", labels, load_encoder("pixdex-demo", device="cpu")


def _copy_store(demo, tmp_path) -> Path:
    root, store, _, _ = demo
    dst = tmp_path / "store"
    shutil.copytree(store, dst, ignore=shutil.ignore_patterns("index.lock"))
    return dst


def test_tags_equal_an_independent_computation_and_are_incremental(demo, tmp_path):
    from pixdex.indexer.run import index_paths
    from pixdex.tags.tagger import tag_store

    root, _, labels, enc = demo
    store = _copy_store(demo, tmp_path)
    s1 = tag_store(store, labels=str(labels), templates="builtin:simple", top=3, min_prob=0.05)
    assert s1["recomputed"] and s1["tagged"] == 160 and s1["n_labels"] == 35 and s1["n_templates"] == 1
    got = _tags(store)

    # reference: the torch text tower, the classifier written out here, the stored image vectors
    from pixdex.storage.store import Store

    text = enc.encode_texts([f"a photo of a {x}." for x in COLOUR_SHAPES])
    st = Store.open_readonly(store)
    ids, vecs = st.vectors(st.live_ids())
    rows = st.rows(ids)
    st.close()
    z = np.exp(enc.logit_scale) * vecs.astype(np.float64) @ text.T.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    n_tags = 0
    for i, row in zip(ids, p):
        want = {COLOUR_SHAPES[j]: row[j] for j in np.argsort(-row)[:3] if row[j] >= 0.05}
        have = got.get(rows[int(i)].path, {})
        assert set(have) == set(want)
        assert all(abs(have[k] - want[k]) < 1e-5 for k in want)
        n_tags += len(want)
    assert s1["tags_written"] == n_tags > 160

    # again: nothing new, nothing recomputed, nothing changed
    s2 = tag_store(store)  # the store's last label set, templates, top and cut
    assert (s2["tagged"], s2["recomputed"], s2["labels"]) == (0, False, str(labels))
    assert _tags(store) == got

    # new images: only they are tagged; the old tags stay as they were
    generate(tmp_path / "more", n=12, seed=SEED_NEW)
    index_paths([root / "photos", tmp_path / "more"], store, device="cpu", json_mode=True)
    s3 = tag_store(store)
    assert (s3["tagged"], s3["recomputed"]) == (12, False)
    after = _tags(store)
    assert {k: v for k, v in after.items() if k in got} == got
    assert sum(1 for k in after if "/more/" in k) == 12

    # deleted images take their tags with them
    for f in sorted((tmp_path / "more").glob("*.png"))[:4]:
        f.unlink()
    index_paths([root / "photos", tmp_path / "more"], store, device="cpu", json_mode=True)
    assert sum(1 for k in _tags(store) if "/more/" in k) == 8
    assert tag_store(store)["tagged"] == 0

    # other templates, another cut: everything is recomputed
    s4 = tag_store(store, templates="builtin:openai")
    assert s4["recomputed"] and s4["tagged"] == 168 and s4["n_templates"] == 80
    s5 = tag_store(store, min_prob=0.5)
    assert s5["recomputed"] and s5["tagged"] == 168
    assert all(p >= 0.5 for t in _tags(store).values() for p in t.values())


def test_index_tag_tags_new_images_in_the_same_run(demo, tmp_path):
    from pixdex.indexer.run import index_paths
    from pixdex.tags.tagger import tag_store

    root, _, labels, _ = demo
    store = _copy_store(demo, tmp_path)
    tag_store(store, labels=str(labels), templates="builtin:simple")
    generate(tmp_path / "more", n=5, seed=SEED_NEW)
    summary = index_paths([root / "photos", tmp_path / "more"], store, device="cpu", json_mode=True, tag=True)
    assert summary["new"] == 5 and summary["tags"]["tagged"] == 5 and not summary["tags"]["recomputed"]
    assert summary["tags"]["labels"] == str(labels)  # the store's last label set
    assert sum(1 for k in _tags(store) if "/more/" in k) == 5


def test_search_tag_filter_listing_and_tag_counts(demo, tmp_path):
    from pixdex.search.cli_search import run_search
    from pixdex.tags.commands import tag_counts
    from pixdex.tags.tagger import tag_store

    _, _, labels, _ = demo
    store = _copy_store(demo, tmp_path)
    with pytest.raises(PixdexError, match="no tags yet"):  # nothing tagged yet: say so, not "no match"
        run_search(store, tags=["red circle"])
    tag_store(store, labels=str(labels), templates="builtin:simple", top=3, min_prob=0.05)
    tags = _tags(store)
    red = {p: t["red circle"] for p, t in tags.items() if "red circle" in t}
    assert len(red) >= 3

    # alone: every image tagged "red circle", by probability (case-insensitive label)
    hits = run_search(store, k=1000, tags=["Red Circle"])
    assert [h["path"] for h in hits] == sorted(red, key=lambda p: (-red[p], p))
    assert all(abs(h["score"] - red[h["path"]]) < 1e-6 for h in hits)
    assert all(any(t["label"] == "red circle" for t in h["tags"]) for h in hits)
    assert run_search(store, k=2, tags=["red circle"]) == hits[:2]

    # with a text query: ranked by the query, only tagged images, and combined with --path
    q = run_search(store, "a red circle", k=1000, tags=["red circle"])
    assert {h["path"] for h in q} == set(red)
    assert [h["score"] for h in q] == sorted((h["score"] for h in q), reverse=True)
    one = sorted(red)[0]
    name = Path(one).name
    assert [h["path"] for h in run_search(store, "a red circle", tags=["red circle"], path_glob=name)] == [
        one
    ]
    # two tags: images carrying both; the score is the lower probability
    pair = ("red circle", "blue square")
    both = {p: min(t[x] for x in pair) for p, t in tags.items() if all(x in t for x in pair)}
    hits2 = run_search(store, k=1000, tags=["red circle", "blue square"])
    assert {h["path"]: round(h["score"], 6) for h in hits2} == {p: round(v, 6) for p, v in both.items()}
    assert run_search(store, k=10, tags=["no such label"]) == []

    # pixdex tags: every label with its number of images
    counts = tag_counts(store)
    want: dict[str, int] = {}
    for t in tags.values():
        for label in t:
            want[label] = want.get(label, 0) + 1
    assert {r["label"]: r["count"] for r in counts} == want
    assert [r["count"] for r in counts] == sorted(want.values(), reverse=True)


def test_tag_errors(demo, tmp_path):
    from pixdex.search.cli_search import run_search
    from pixdex.tags.tagger import tag_store

    store = _copy_store(demo, tmp_path)
    with pytest.raises(PixdexError, match="no pixdex store"):
        tag_store(tmp_path / "nowhere")
    with pytest.raises(PixdexError, match="unknown built-in"):
        tag_store(store, labels="builtin:nope")
    with pytest.raises(PixdexError, match="--top"):
        tag_store(store, labels="cat,dog", top=0)
    with pytest.raises(PixdexError, match="no such labels file"):
        tag_store(store, labels="missing/labels.txt")
    # a store never tagged (an empty tags table), and one made before tags existed (no tags table):
    # a clear error naming `pixdex tag`, not "No images match"
    con = sqlite3.connect(store / DB_FILE)
    con.execute("DELETE FROM tags")
    con.commit()
    con.close()
    with pytest.raises(PixdexError, match="no tags yet; run: pixdex tag"):
        run_search(store, "a red circle", tags=["red circle"])
    con = sqlite3.connect(store / DB_FILE)
    con.execute("DROP TABLE tags")
    con.commit()
    con.close()
    with pytest.raises(PixdexError, match="no tags yet"):
        run_search(store, "a red circle", tags=["red circle"])


def test_search_tag_and_tags_do_not_import_torch_or_sqlalchemy(demo, tmp_path):
    from encoder_support import run_fresh_python

    from pixdex.tags.tagger import tag_store

    _, _, labels, _ = demo
    store = _copy_store(demo, tmp_path)
    tag_store(store, labels=str(labels), templates="builtin:simple")
    code = f"""
import sys, io, contextlib
from pixdex.cli import app
out = io.StringIO()
for args in (["search", "--store", {str(store)!r}, "--tag", "red circle", "--json"],
             ["search", "a red circle", "--store", {str(store)!r}, "--tag", "red circle", "--json"],
             ["tags", "--store", {str(store)!r}, "--json"]):
    with contextlib.redirect_stdout(out):
        try:
            app(args)
        except SystemExit as e:
            assert e.code in (0, None), e.code
bad = sorted(m for m in ("torch", "sqlalchemy", "open_clip") if m in sys.modules)
print("IMPORTED", bad)
"""
    r = run_fresh_python(code)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "IMPORTED []" in r.stdout


def test_tag_cli_json(demo, tmp_path):
    from typer.testing import CliRunner

    from pixdex.cli import app

    _, _, labels, _ = demo
    store = _copy_store(demo, tmp_path)
    r = CliRunner().invoke(
        app, ["tag", "--store", str(store), "--labels", str(labels), "--top", "2", "--json"]
    )
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["tagged"] == 160 and s["top"] == 2 and s["templates"] == "builtin:photo"
    r = CliRunner().invoke(app, ["tags", "--store", str(store), "--json"])
    assert r.exit_code == 0 and sum(x["count"] for x in json.loads(r.output)) == s["tags_written"]
    r = CliRunner().invoke(app, ["search", "--store", str(store), "--tag", "red circle", "--json"])
    hits = json.loads(r.output)
    assert r.exit_code == 0 and all("tags" in h for h in hits)


# ----------------------------------------------------------------------------- measured (issue 14)


def test_zero_shot_accuracy_on_single_object_images(tmp_path):
    """Accuracy of `classify` over colour x shape labels with the 80-template ensemble and with one
    template; the better must reach the bar (both are printed: pytest -s)."""
    from pixdex.encoders.encoder import load_encoder
    from pixdex.tags.commands import classify_images

    generate(tmp_path / "demo", n=240, seed=SEED_SINGLE)
    ann = load_annotations(tmp_path / "demo")
    single = [a for a in ann["images"] if len(a["objects"]) == 1]
    assert len(single) >= 60
    files = [str(tmp_path / "demo" / a["image"]) for a in single]
    truth = [f"{a['objects'][0]['colour']} {a['objects'][0]['shape']}" for a in single]
    enc = load_encoder("pixdex-demo", device="cpu")
    acc = {}
    for templates in ("builtin:openai", "builtin:simple"):
        res = classify_images(files, ",".join(COLOUR_SHAPES), templates, top=1, encoder=enc)
        acc[templates] = float(np.mean([r["labels"][0]["label"] == t for r, t in zip(res, truth)]))
    print(f"zero-shot accuracy, {len(single)} single-object images: {acc}")
    assert max(acc.values()) >= ACCURACY_BAR


def test_tag_precision_on_multi_object_images(demo, tmp_path):
    """Default cut (top 5, prob >= 0.1), default templates: tags of images with 2-3 objects."""
    from pixdex.tags.tagger import tag_store

    root, _, labels, _ = demo
    store = _copy_store(demo, tmp_path)
    tag_store(store, labels=str(labels))
    truth = _truth(load_annotations(root / "photos"))
    got = _tags(store)
    right = total = found = objects = 0
    for name, objs in truth.items():
        if len(objs) < 2:
            continue
        t = got.get(str((root / "photos" / name).resolve()), {})
        right += sum(label in objs for label in t)
        total += len(t)
        found += len(objs & set(t))
        objects += len(objs)
    precision, recall = right / total, found / objects
    print(f"tag precision {precision:.3f} ({total} tags), recall {recall:.3f} on multi-object images")
    assert precision >= PRECISION_BAR and recall >= 0.7

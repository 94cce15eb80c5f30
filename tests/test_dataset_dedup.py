"""``pixdex dataset dedup`` / ``pixdex.dataset.dedup`` end to end with the bundled ``pixdex-demo`` model:
per-label precision and recall on a demo-data set with planted rows of every label (tests/dataset_support),
the exact kept/removed rows of a small hand-made manifest through the CLI, ``kept.*`` round trips for
CSV, JSONL, parquet and webdataset, in-memory tables, the embedding store (nothing encoded twice, another
model refused, resume after kill -9), the report in headless Chromium, and the input left untouched.

The default thresholds were calibrated on seeds 11, 23 and 5 of the planted set (bench-style runs of
``build_planted`` + ``dedup``); this test uses seed 31, never used for calibration.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from dataset_support import BOILERPLATE, build_planted, labels_by_key, per_label_figures

from pixdex.errors import PixdexError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SEED = 31
MODEL = "pixdex-demo"


def dedup(*args, **kw):
    from pixdex.dataset import dedup as run

    kw.setdefault("model", MODEL)
    kw.setdefault("progress", False)
    return run(*args, **kw)


def tree_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def cli(*args, timeout=300, env=None) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pixdex", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=e,
        cwd=ROOT,
    )


def no_loader(*_a, **_k):
    raise AssertionError("the encoder was loaded although every vector is in the store")


# ----------------------------------------------------------------------------- planted quality


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    data = build_planted(root / "data", seed=SEED)
    before = tree_hashes(root / "data")
    t = time.monotonic()
    result = dedup(data["train"], out=root / "out", against=data["against"], key_col="id")
    data.update(root=root, result=result, seconds=time.monotonic() - t, before=before)
    return data


def test_planted_labels_reach_precision_and_recall(planted):
    from pixdex.dataset import summary_of

    figures = per_label_figures(labels_by_key(planted["result"]), planted["truth"], planted["ignore"])
    summary = summary_of(planted["result"])
    print(f"\nplanted seed {SEED}, {planted['rows']} rows, {planted['seconds']:.1f} s:")
    for label, f in figures.items():
        print(
            f"  {label:18s} precision {f['precision']:.3f} recall {f['recall']:.3f} ({f['tp']} tp, {f['fp']} fp, {f['fn']} fn)"
        )
    for label, f in figures.items():
        assert f["tp"] + f["fn"] >= 10, f"too few planted {label} rows to measure"
        assert f["precision"] >= 0.95, (label, f)
        assert f["recall"] >= 0.90, (label, f)
    assert summary["rows"] == planted["rows"]
    assert summary["embeddings"]["unreadable"] == 0
    # the boilerplate summary lists the planted texts with their counts
    top = {c["caption"]: c["rows"] for c in summary["top_captions"]}
    assert all(top.get(b) == 4 for b in BOILERPLATE), top


def test_outputs_and_input_untouched(planted):
    out = planted["root"] / "out"
    assert tree_hashes(planted["root"] / "data") == planted["before"]
    result = planted["result"]
    kept = result.column("kept").to_pylist()
    keys = result.column("key").to_pylist()
    with open(out / "kept.csv", newline="", encoding="utf-8") as f:
        kept_rows = list(csv.DictReader(f))
    assert [r["id"] for r in kept_rows] == [k for k, ok in zip(keys, kept) if ok]
    with open(out / "removed.csv", newline="", encoding="utf-8") as f:
        removed = list(csv.DictReader(f))
    assert [r["key"] for r in removed] == [k for k, ok in zip(keys, kept) if not ok]
    assert list(removed[0])[:3] == ["key", "labels", "duplicate_of"]
    # mode pairs: the removed rows are exactly the duplicate pairs and the contaminated rows
    lk = labels_by_key(result)
    assert {r["key"] for r in removed} == {
        k for k, ls in lk.items() if ls & {"duplicate_pair", "contaminated", "unreadable"}
    }
    s = json.loads((out / "summary.json").read_text())
    assert s["kept"] + s["removed"] == s["rows"] and s["files"]["report"].endswith("report.html")


def test_second_run_other_mode_encodes_nothing(planted):
    out = planted["root"] / "out"
    from pixdex.dataset import summary_of

    strict = dedup(
        planted["train"],
        out=planted["root"] / "strict",
        store=out / "store",
        against=planted["against"],
        key_col="id",
        mode="strict",
        image_threshold=0.97,
        encoder_loader=no_loader,
    )
    s = summary_of(strict)
    assert s["embeddings"]["images_encoded"] == 0 and s["embeddings"]["captions_encoded"] == 0
    first = dict(
        zip(planted["result"].column("key").to_pylist(), planted["result"].column("kept").to_pylist())
    )
    lk = labels_by_key(strict)
    for k, ok in zip(strict.column("key").to_pylist(), strict.column("kept").to_pylist()):
        if "duplicate_caption" in lk[k] or "duplicate_image" in lk[k]:
            assert not ok
        elif not first[k]:
            assert not ok or "duplicate_pair" in labels_by_key(planted["result"])[k]


def test_store_refuses_another_model(planted):
    with pytest.raises(PixdexError, match="holds vectors of model 'pixdex-demo'") as e:
        dedup(planted["train"], store=planted["root"] / "out" / "store", key_col="id", model="tiny-vit")
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- resume after kill -9


def _db_images(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=5) as c:
            return c.execute("SELECT count(*) FROM images").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_kill_9_mid_encoding_resumes_with_identical_labels(planted, tmp_path):
    out = tmp_path / "out"
    db = out / "store" / "embeddings.db"
    args = ["dataset", "dedup", planted["train"], "--out", out, "--model", MODEL, "--key-col", "id"]
    args += ["--against", planted["against"], "--json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pixdex", *map(str, args), "--batch-size", "1", "--workers", "1"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while _db_images(db) < 15:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = _db_images(db)
    unique = json.loads((planted["root"] / "out" / "summary.json").read_text())["embeddings"]["images"]
    assert 15 <= done < unique, (done, unique)
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["embeddings"]["images_encoded"] == unique - done
    with open(out / "labels.csv", newline="", encoding="utf-8") as f:
        resumed = list(csv.DictReader(f))
    ref = planted["result"].to_pylist()
    assert [r["key"] for r in resumed] == [r["key"] for r in ref]
    for x, y in zip(resumed, ref):
        for col in ("labels", "duplicate_of", "contaminated_by", "mismatch_with"):
            assert (x[col] or "") == (y[col] or ""), (x["key"], col)
        assert x["kept"] == str(y["kept"])
        if y["clip_score"] is not None:
            assert abs(float(x["clip_score"]) - y["clip_score"]) < 1e-4


# ----------------------------------------------------------------------------- hand-made manifest


@pytest.fixture(scope="module")
def handmade(tmp_path_factory):
    """Eight rows whose labels follow from exact tiers alone (same bytes, same normalised text):

    r1 A "a red circle above a blue square"   kept
    r2 A "A red circle above a blue square!"  duplicate_pair of r1 (same bytes, same normalised text)
    r3 B "a green star"                        kept
    r4 A "a yellow cross on a black background" duplicate_image of r1
    r5 C "Stock Photo"                         kept
    r6 D "stock photo"                         duplicate_caption of r5 (unrelated images)
    r7 missing file                            unreadable
    r8 a text file named .png                  unreadable
    """
    from pixdex.training.demo_data import generate

    root = tmp_path_factory.mktemp("handmade")
    generate(root / "demo", n=40, seed=3, image_size=96)
    items = json.loads((root / "demo" / "objects.json").read_text())["images"]
    by_colours: dict = {}
    for it in items:  # four images of pairwise different colours (unrelated for the demo model)
        cols = frozenset(o["colour"] for o in it["objects"])
        if all(not cols & c for c in by_colours):
            by_colours[cols] = it["image"]
    a, b, c, d = list(by_colours.values())[:4]
    (root / "bad.png").write_text("not an image")
    rows = [
        ("r1", f"demo/{a}", "a red circle above a blue square"),
        ("r2", f"demo/{a}", "A red circle above a blue square!"),
        ("r3", f"demo/{b}", "a green star"),
        ("r4", f"demo/{a}", "a yellow cross on a black background"),
        ("r5", f"demo/{c}", "Stock Photo"),
        ("r6", f"demo/{d}", "stock photo"),
        ("r7", "demo/missing.png", "a purple circle"),
        ("r8", "bad.png", "an orange square"),
    ]
    with open(root / "m.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["key", "image", "caption", "score"])
        w.writerows([(k, i, cap, n * 0.5) for n, (k, i, cap) in enumerate(rows)])
    return root, rows


EXPECTED_REMOVED = {
    "pairs": {"r2", "r7", "r8"},
    "images": {"r2", "r4", "r7", "r8"},
    "strict": {"r2", "r4", "r6", "r7", "r8"},
}


@pytest.mark.parametrize("mode", ["pairs", "images", "strict"])
def test_handmade_manifest_kept_and_removed_through_the_cli(handmade, mode, tmp_path):
    root, rows = handmade
    before = tree_hashes(root)
    store = root.parent / f"{root.name}-store"
    out = tmp_path / "out"
    r = cli(
        "dataset",
        "dedup",
        root / "m.csv",
        "--out",
        out,
        "--model",
        MODEL,
        "--key-col",
        "key",
        "--mode",
        mode,
        "--store",
        store,
        "--json",
    )
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    with open(out / "removed.csv", newline="", encoding="utf-8") as f:
        removed = {row["key"]: row for row in csv.DictReader(f)}
    assert set(removed) == EXPECTED_REMOVED[mode]
    with open(out / "kept.csv", newline="", encoding="utf-8") as f:
        kept = list(csv.DictReader(f))
    assert [k["key"] for k in kept] == [k for k, _, _ in rows if k not in EXPECTED_REMOVED[mode]]
    with open(out / "labels.csv", newline="", encoding="utf-8") as f:
        labels = {row["key"]: row for row in csv.DictReader(f)}
    # (six readable rows are too few for the mismatch statistics: a mismatch label may come on top)
    assert "duplicate_pair" in labels["r2"]["labels"].split(";") and labels["r2"]["duplicate_of"] == "r1"
    assert "duplicate_image" in labels["r4"]["labels"].split(";") and labels["r4"]["duplicate_of"] == "r1"
    assert "duplicate_caption" in labels["r6"]["labels"].split(";") and labels["r6"]["duplicate_of"] == "r5"
    for k in ("r1", "r3", "r5"):
        assert not {"duplicate_pair", "duplicate_image", "duplicate_caption"} & set(
            labels[k]["labels"].split(";")
        )
    assert labels["r7"]["labels"] == "unreadable" and "not found" in labels["r7"]["error"]
    assert labels["r8"]["labels"] == "unreadable" and labels["r8"]["error"]
    assert s["labels"]["unreadable"] == 2 and s["kept"] == 8 - len(EXPECTED_REMOVED[mode])
    assert tree_hashes(root) == before


def test_bad_input_is_one_line_exit_2(handmade, tmp_path):
    root, _ = handmade
    for args in (
        [tmp_path / "nope.csv"],
        [root / "m.csv", "--mode", "everything"],
        [root / "m.csv", "--image-col", "picture"],
        [root / "m.csv", "--image-threshold", "1.5"],
    ):
        r = cli("dataset", "dedup", *args, "--out", tmp_path / "o", "--model", MODEL)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("pixdex: error: ") and r.stderr.count("\n") == 1, r.stderr


# ----------------------------------------------------------------------------- formats round trip


def _formats(root: Path, rows):
    """The hand-made rows as CSV, JSONL and parquet manifests (image bytes in parquet) and as webdataset
    shards, with extra typed columns."""
    recs = [
        {"key": k, "image": img, "caption": cap, "n": i, "w": i * 0.25, "tags": ["x"] * i}
        for i, (k, img, cap) in enumerate(rows)
        if k not in ("r7", "r8")
    ]
    with open(root / "f.jsonl", "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    table = pa.table(
        {
            "key": [r["key"] for r in recs],
            "image": [(root / r["image"]).read_bytes() for r in recs],
            "caption": [r["caption"] for r in recs],
            "n": pa.array([r["n"] for r in recs], pa.int16()),
            "w": pa.array([r["w"] for r in recs], pa.float32()),
            "tags": [r["tags"] for r in recs],
        }
    )
    pq.write_table(table, root / "f.parquet")
    shards = root / "shards"
    shards.mkdir(exist_ok=True)
    for s, part in enumerate((recs[:3], recs[3:])):
        with tarfile.open(shards / f"{s:05d}.tar", "w") as tf:
            for r in part:
                for ext, data in (
                    ("png", (root / r["image"]).read_bytes()),
                    ("txt", r["caption"].encode()),
                    ("json", json.dumps({"n": r["n"]}).encode()),
                ):
                    info = tarfile.TarInfo(f"{r['key']}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return recs, table, shards


def test_kept_round_trips_for_every_format(handmade, tmp_path):
    root, rows = handmade
    recs, table, shards = _formats(tmp_path, [(k, str(root / i), c) for k, i, c in rows])
    store = tmp_path / "store"
    want = [r["key"] for r in recs if r["key"] not in EXPECTED_REMOVED["images"]]
    kw = dict(key_col="key", mode="images", store=store)
    dedup(tmp_path / "f.jsonl", out=tmp_path / "oj", **kw)
    got = [json.loads(line) for line in (tmp_path / "oj" / "kept.jsonl").read_text().splitlines()]
    assert [g["key"] for g in got] == want
    assert got == [r for r in recs if r["key"] in want]  # same fields, same JSON types
    res = dedup(tmp_path / "f.parquet", out=tmp_path / "op", **kw, encoder_loader=no_loader)
    kept = pq.read_table(tmp_path / "op" / "kept.parquet")
    assert kept.schema == table.schema and kept.column("key").to_pylist() == want
    assert kept.equals(table.filter(pa.array([k in want for k in table.column("key").to_pylist()])))
    assert (tmp_path / "op" / "labels.parquet").is_file()
    assert res.column("kept").to_pylist() == [r["key"] in want for r in recs]
    dedup(shards, out=tmp_path / "ow", **{**kw, "key_col": None}, write_shards=True, encoder_loader=no_loader)
    assert (tmp_path / "ow" / "kept.txt").read_text().split() == want
    from pixdex.dataset.readers import open_dataset

    again = [r.key for r in open_dataset(tmp_path / "ow" / "kept").rows()]
    assert again == want
    # an in-memory table (image bytes) gives the same labels as the parquet file it came from
    mem = dedup(table, **kw, encoder_loader=no_loader)
    assert mem.column("labels").to_pylist() == res.column("labels").to_pylist()


def test_pandas_in_pandas_out(handmade, tmp_path):
    pd = pytest.importorskip("pandas")
    root, rows = handmade
    df = pd.DataFrame([{"key": k, "image": str(root / i), "caption": c} for k, i, c in rows])
    out = dedup(df, key_col="key", store=tmp_path / "store")
    assert isinstance(out, pd.DataFrame) and list(out["key"]) == [k for k, _, _ in rows]


# ----------------------------------------------------------------------------- report in a browser

HOSTILE = '<img src=x onerror="window.__pwned=1">'


def test_report_renders_without_injection(browser, handmade, tmp_path):
    root, rows = handmade
    data = tmp_path / HOSTILE.replace("/", "_")
    data.mkdir()
    img = (root / rows[0][1]).read_bytes()
    (data / f"{HOSTILE.replace('/', '_')}.png").write_bytes(img)
    (data / "b.png").write_bytes(img)
    with open(data / "m.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["key", "image", "caption"])
        w.writerow([HOSTILE, f"{HOSTILE.replace('/', '_')}.png", HOSTILE + " a red circle"])
        w.writerow(["k2", "b.png", HOSTILE + " a red circle"])
        w.writerow(["k3", str(root / rows[2][1]), "</style><script>window.__pwned=1</script>"])
        w.writerow(["k4", "missing.png", "x"])
    dedup(data / "m.csv", out=tmp_path / "out", key_col="key", store=tmp_path / "store")
    page_file = tmp_path / "out" / "report.html"
    text = page_file.read_text(encoding="utf-8")
    assert "<script" not in text.lower() and HOSTILE not in text
    assert "http://" not in text and "https://" not in text and "url(" not in text
    assert re.findall(r'src="(?!data:image/jpeg;base64,)', text) == []
    pg = browser.new_page()
    pg.set_default_timeout(15_000)
    pg.goto(page_file.as_uri())
    pg.wait_for_function("() => [...document.images].every(i => i.complete)")
    widths = pg.evaluate("() => [...document.images].map(i => i.naturalWidth)")
    assert len(widths) >= 2 and all(w > 0 for w in widths)
    assert pg.evaluate("() => window.__pwned") is None
    assert pg.evaluate("() => document.querySelectorAll('script').length") == 0
    keys = pg.evaluate("() => [...document.querySelectorAll('figure.card')].map(f => f.dataset.key)")
    assert HOSTILE in keys  # shown as text, intact
    assert pg.locator("section#histograms svg").count() == 3
    assert pg.locator("svg line.mark").count() == 3  # the thresholds and the mismatch cut
    assert pg.locator("section#duplicate_pair figure.card").count() == 2
    assert "no such file" in pg.locator("section#unreadable").inner_text().lower() or "not found" in (
        pg.locator("section#unreadable").inner_text().lower()
    )
    pg.close()


# ----------------------------------------------------------------------------- real photos


def test_real_photos_copies(tmp_path):
    """Real photos (../shared/data/photos, 31 distinct) with one copy each (same bytes, JPEG q40, or
    half size), each copy with its photo's caption (duplicate_pair) or another (duplicate_image)."""
    photos = sorted((SHARED / "photos").glob("*")) if (SHARED / "photos").is_dir() else []
    if not photos:
        pytest.skip("../shared/data is absent")
    rows, truth = [], {"duplicate_pair": set(), "duplicate_image": set()}
    for i, p in enumerate(photos):
        rows.append((f"p{i}", str(p), f"photo number {i} of the collection"))
    for i, p in enumerate(photos):
        variant = ("same", "jpeg", "smaller")[i % 3]
        data = p.read_bytes()
        if variant != "same":
            from pixdex.images import decode

            im = decode(data)[0]
            if variant == "smaller":
                im = im.resize((max(1, im.width // 2), max(1, im.height // 2)))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=40)
            data = buf.getvalue()
        (tmp_path / f"c{i}.jpg").write_bytes(data)
        pair = i % 2 == 0
        rows.append((f"c{i}", str(tmp_path / f"c{i}.jpg"), rows[i][2] if pair else f"a copy, item {i}"))
        truth["duplicate_pair" if pair else "duplicate_image"].add(f"c{i}")
    table = pa.table(
        {"key": [r[0] for r in rows], "image": [r[1] for r in rows], "caption": [r[2] for r in rows]}
    )
    res = dedup(table, key_col="key", store=tmp_path / "store")
    figures = per_label_figures(labels_by_key(res), truth, {})
    print(
        "\nreal photos:", {k: (round(v["precision"], 3), round(v["recall"], 3)) for k, v in figures.items()}
    )
    for label, f in figures.items():
        assert f["precision"] >= 0.95 and f["recall"] >= 0.90, (label, f)


def test_image_bytes_and_paths_give_the_same_vectors(handmade, tmp_path):
    root, rows = handmade
    recs = [(k, root / i, c) for k, i, c in rows if k not in ("r7", "r8")]
    a = pa.table({"image": [str(p) for _, p, _ in recs], "caption": [c for _, _, c in recs]})
    b = pa.table({"image": [p.read_bytes() for _, p, _ in recs], "caption": [c for _, _, c in recs]})
    ra = dedup(a, store=tmp_path / "store")
    rb = dedup(b, store=tmp_path / "store", encoder_loader=no_loader)  # same content hashes: all cached
    assert np.allclose(
        np.array(ra.column("clip_score").to_pylist(), float),
        np.array(rb.column("clip_score").to_pylist(), float),
    )

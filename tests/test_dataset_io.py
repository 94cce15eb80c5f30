"""Dataset readers (CSV, JSONL, parquet, webdataset shards) and writers: rows, keys, errors, and
``kept.*`` round trips with the input's columns and types."""

import csv
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from pixdex.dataset import readers
from pixdex.dataset.readers import open_dataset
from pixdex.dataset.writers import write_kept, write_labels, write_removed
from pixdex.errors import PixdexError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

CAPTIONS = ["a red circle", "a blue square, small", 'a "quoted" star', "a cat\nwith a newline", "ünïcode ✓"]


def png_bytes(i: int, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (40 * i, 10, 200 - 30 * i)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture()
def folder(tmp_path):
    (tmp_path / "imgs").mkdir()
    for i in range(len(CAPTIONS)):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(png_bytes(i))
    return tmp_path


def write_csv(folder, name="m.csv", delimiter=","):
    p = folder / name
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(["id", "image", "caption", "score"])
        for i, c in enumerate(CAPTIONS):
            w.writerow([f"id{i}", f"imgs/{i}.png", c, f"0.{i}"])
            if i == 1:
                w.writerow([])  # blank lines are not rows
    return p


def write_jsonl(folder):
    p = folder / "m.jsonl"
    lines = [
        json.dumps({"image": f"imgs/{i}.png", "caption": c, "n": i, "tags": ["x"] * i})
        for i, c in enumerate(CAPTIONS)
    ]
    p.write_text(lines[0] + "\n\n" + "\n".join(lines[1:]) + "\n", encoding="utf-8")
    return p


def typed_table():
    n = len(CAPTIONS)
    return pa.table(
        {
            "uid": pa.array(range(100, 100 + n), pa.int64()),
            "jpg": pa.array([png_bytes(i) for i in range(n)], pa.binary()),
            "caption": pa.array(CAPTIONS, pa.string()),
            "similarity": pa.array([0.1 * i for i in range(n)], pa.float32()),
            "nsfw": pa.array([i % 2 == 0 for i in range(n)], pa.bool_()),
            "tags": pa.array([["a"] * i for i in range(n)], pa.list_(pa.string())),
            "when": pa.array(np.arange(n).astype("datetime64[s]")),
        },
        metadata={b"origin": b"test"},
    )


def write_tar(path, members):
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def write_shard(folder, name="00000.tar", start=0, count=3):
    members = []
    for i in range(start, start + count):
        key = f"{i:09d}"
        members.append((f"{key}.jpg", png_bytes(i, "JPEG")))
        members.append((f"{key}.txt", CAPTIONS[i].encode()))
        if i % 2 == 0:
            members.append(
                (f"{key}.json", json.dumps({"key": key, "url": f"http://x/{i}", "width": 8}).encode())
            )
    return write_tar(folder / name, members)


# ----------------------------------------------------------------------------- readers


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_text_manifests(folder, fmt):
    p = (
        write_jsonl(folder)
        if fmt == "jsonl"
        else write_csv(folder, f"m.{fmt}", "\t" if fmt == "tsv" else ",")
    )
    rows = list(open_dataset(p).rows())
    assert [r.key for r in rows] == [str(i) for i in range(1, 6)]  # row numbers
    assert [r.caption for r in rows] == CAPTIONS
    assert [r.image for r in rows] == [(folder / "imgs" / f"{i}.png").resolve() for i in range(5)]
    assert [r.index for r in rows] == list(range(5)) and rows[3].image_name == "imgs/3.png"
    if fmt == "jsonl":
        assert rows[2].record == {"image": "imgs/2.png", "caption": CAPTIONS[2], "n": 2, "tags": ["x", "x"]}
    else:
        assert rows[2].record == {"id": "id2", "image": "imgs/2.png", "caption": CAPTIONS[2], "score": "0.2"}
        assert [r.key for r in open_dataset(p, key_col="id").rows()] == [f"id{i}" for i in range(5)]


def test_parquet_streams_in_batches_with_image_bytes(folder, monkeypatch):
    monkeypatch.setattr(readers, "PARQUET_BATCH", 2)  # rows continue across batches
    pq.write_table(typed_table(), folder / "m.parquet", row_group_size=2)
    rows = list(open_dataset(folder / "m.parquet", image_col="jpg", key_col="uid").rows())
    assert [r.key for r in rows] == [str(100 + i) for i in range(5)]
    assert [r.image for r in rows] == [png_bytes(i) for i in range(5)]
    assert [r.caption for r in rows] == CAPTIONS and rows[4].record["tags"] == ["a"] * 4


def test_webdataset_shards_stream_without_extracting(folder):
    shards = folder / "shards"
    shards.mkdir()
    write_shard(shards, "00000.tar", 0, 3)
    write_shard(shards, "00001.tar", 3, 2)
    before = sorted(p.name for p in shards.iterdir())
    rows = list(open_dataset(shards).rows())  # a folder of shards
    assert [r.key for r in rows] == [f"{i:09d}" for i in range(5)]
    assert [r.caption for r in rows] == CAPTIONS
    assert [r.image for r in rows] == [png_bytes(i, "JPEG") for i in range(5)]
    assert rows[2].record == {"key": "000000002", "url": "http://x/2", "width": 8} and rows[1].record == {}
    assert [r.row for r in rows] == [1, 2, 3, 1, 2] and rows[3].source.path.name == "00001.tar"
    with pytest.raises(PixdexError, match=r"00000.tar, row 2 \(sample '000000001'\): no 'url' value"):
        list(open_dataset(shards, key_col="url").rows())  # key from the .json, which sample 1 lacks
    assert sorted(p.name for p in shards.iterdir()) == before  # nothing extracted


@pytest.mark.parametrize(
    "make,match",
    [
        (
            lambda f: write_tar(f / "a.tar", [("k1.txt", b"cap")]),
            r"a.tar, row 1 \(sample 'k1'\): no image member",
        ),
        (lambda f: write_tar(f / "a.tar", [("k1.png", png_bytes(1))]), r"no caption"),
        (lambda f: f / "none.csv", r"does not exist"),
        (lambda f: (f / "x.txt").write_text("hi") and f / "x.txt", r"unknown format '.txt'"),
    ],
)
def test_bad_inputs_name_the_problem(folder, make, match):
    with pytest.raises(PixdexError, match=match):
        list(open_dataset(make(folder)).rows())


def test_bad_rows_and_keys(folder):
    p = write_csv(folder)
    with pytest.raises(PixdexError, match=r"no column 'url'"):
        list(open_dataset(p, key_col="url").rows())
    with pytest.raises(PixdexError, match=r"row 2: key '0.1'|key .* repeats"):
        (folder / "d.csv").write_text("image,caption,k\nimgs/0.png,a,1\nimgs/1.png,b,1\n")
        list(open_dataset(folder / "d.csv", key_col="k").rows())
    (folder / "m2.csv").write_text("image,caption\nimgs/9.png,a\n")
    with pytest.raises(PixdexError, match=r"row 1 \(line 2\): image file .*9.png does not exist"):
        list(open_dataset(folder / "m2.csv").rows())
    with pytest.raises(PixdexError, match="mix formats"):
        open_dataset([p, write_jsonl(folder)])
    two = list(open_dataset([p, write_csv(folder, "n.csv")]).rows())
    assert two[0].key == "m.csv:1" and two[5].key == "n.csv:1"  # row-number keys name their file


# ----------------------------------------------------------------------------- writers

KEEP = np.array([True, False, True, True, False])


def test_kept_csv_and_jsonl_copy_rows_as_they_are(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    for p in (write_csv(folder), write_jsonl(folder)):
        ds = open_dataset(p)
        (kept,) = write_kept(ds, KEEP, [r.key for r in ds.rows()], out)
        assert kept.name == f"kept{p.suffix}"
        want = [r.record for r, k in zip(ds.rows(), KEEP) if k]
        got = list(open_dataset(kept, check_files=False).rows())
        assert [r.record for r in got] == want  # same columns, order and values (JSONL: same types)
        if p.suffix == ".csv":
            assert kept.read_text().splitlines()[0] == "id,image,caption,score"
        else:
            lines = [x for x in p.read_text(encoding="utf-8").splitlines() if x]
            assert kept.read_text(encoding="utf-8").splitlines() == [x for x, k in zip(lines, KEEP) if k]


def test_kept_parquet_keeps_the_schema(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "PARQUET_BATCH", 2)
    table = typed_table()
    pq.write_table(table, folder / "m.parquet", row_group_size=2)
    ds = open_dataset(folder / "m.parquet", image_col="jpg")
    (kept,) = write_kept(ds, KEEP, [str(i) for i in range(5)], tmp_path / "out")
    back, source = pq.read_table(kept), pq.read_table(folder / "m.parquet")
    assert back.schema.equals(source.schema, check_metadata=True)  # arrow types and metadata
    assert pq.ParquetFile(kept).schema.equals(pq.ParquetFile(folder / "m.parquet").schema)  # physical
    assert back.equals(source.filter(pa.array(KEEP)))
    assert back.column("uid").to_pylist() == [100, 102, 103] and back.column("when").type.unit == "ms"


def test_kept_webdataset_key_list_and_shards(folder, tmp_path):
    write_shard(folder, "00000.tar", 0, 3)
    write_shard(folder, "00001.tar", 3, 2)
    ds = open_dataset([folder / "00000.tar", folder / "00001.tar"])
    keys = [r.key for r in ds.rows()]
    assert write_kept(ds, KEEP, keys, tmp_path / "a") == [tmp_path / "a" / "kept.txt"]
    assert (tmp_path / "a" / "kept.txt").read_text().split() == [k for k, x in zip(keys, KEEP) if x]
    files = write_kept(ds, KEEP, keys, tmp_path / "b", write_shards=True)
    assert [f.name for f in files] == ["kept.txt", "00000.tar", "00001.tar"]
    got = list(open_dataset(files[1:]).rows())
    want = [r for r, k in zip(ds.rows(), KEEP) if k]
    assert [(r.key, r.image, r.caption, r.record) for r in got] == [
        (r.key, r.image, r.caption, r.record) for r in want
    ]


def test_kept_refuses_to_overwrite_the_input_and_changed_inputs(folder):
    p = folder / "kept.csv"
    write_csv(folder, "kept.csv")
    ds = open_dataset(p)
    with pytest.raises(PixdexError, match="is an input of this run"):
        write_kept(ds, KEEP, list("abcde"), folder)
    with pytest.raises(PixdexError, match="was it changed"):
        write_kept(ds, KEEP[:3], list("abc"), folder / "o")
    assert not list((folder / "o").glob("*.tmp"))


def test_label_files(tmp_path):
    from pixdex.dataset.labels import LabelOptions, label_dataset
    from pixdex.dedup.semantic import EXACT as exact

    rng = np.random.default_rng(0)
    v = rng.normal(size=(6, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    caps = ["a", "b", "c", "d", "a", "f"]
    v[4] = v[0]  # row 5 repeats row 1's pair
    t = label_dataset(list("kpqrst"), v, v, caps, options=LabelOptions(), finder=exact)
    removed = write_removed(t, tmp_path)
    rows = list(csv.DictReader(open(removed)))
    assert [r["key"] for r in rows] == ["s"] and rows[0]["duplicate_of"] == "k"
    assert list(rows[0])[:3] == ["key", "labels", "duplicate_of"] and "kept" not in rows[0]
    assert rows[0]["labels"] == "duplicate_pair" and rows[0]["mismatch_with"] == ""
    labels = pq.read_table(write_labels(t, tmp_path, parquet=True))
    assert (
        labels.column("key").to_pylist() == list("kpqrst") and labels.column("kept").to_pylist()[4] is False
    )
    assert labels.schema.field("image_score").type == pa.float64()
    assert list(csv.DictReader(open(write_labels(t, tmp_path))))[4]["labels"] == "duplicate_pair"

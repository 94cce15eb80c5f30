"""SearchEngine and `pixdex search` over a real SQLite store + FAISS file (no model: --like queries)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("faiss")

from search_support import DELETED, make_store, unit

from pixdex.errors import PixdexError
from pixdex.search.cli_search import run_search
from pixdex.search.engine import SearchEngine
from pixdex.search.filters import make_filters
from pixdex.storage.contract import STATUS_FAILED, STATUS_OK

N = 400


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    vecs = unit(rng.normal(size=(N, 24)))
    paths = [f"/photos/{'beach' if i % 4 == 0 else 'city'}/IMG_{i:04d}.jpg" for i in range(N)]
    status = [STATUS_OK] * N
    for i in (10, 11, 12):
        status[i] = DELETED  # indexed, then deleted after FAISS was written
    status[13] = STATUS_FAILED
    taken = [None if i % 7 == 0 else f"2023-{1 + i % 12:02d}-{1 + i % 28:02d}T10:00:00" for i in range(N)]
    # IVF with 2 lists: every list is probed, so results must equal exact search (approximation is
    # measured in test_search_retrieval.py and bench/search_latency.py)
    d = make_store(
        tmp_path_factory.mktemp("store") / "s", vecs, paths, status, taken, faiss_kind="ivf", nlist=2
    )
    return d, vecs, paths, status, taken


def exact(vecs, status, q, keep=None):
    s = vecs @ q
    ids = [i for i in np.lexsort((np.arange(N), -s)) if status[i] == STATUS_OK and (keep is None or keep(i))]
    return [int(i) + 1 for i in ids]


def test_like_search_ranks_by_stored_vectors_and_skips_dead_rows(store):
    d, vecs, paths, status, _ = store
    # query like an image whose nearest neighbours include the failed rows
    q_id = 1
    hits = run_search(d, like=[q_id], k=30)
    assert [h["id"] for h in hits] == exact(vecs, status, vecs[q_id - 1])[:30]
    assert hits[0]["id"] == q_id and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    keys = {"rank", "score", "path", "id", "width", "height", "taken_at", "date", "date_source", "tags"}
    assert set(hits[0]) == keys
    assert [h["rank"] for h in hits] == list(range(1, 31))
    assert all(paths[h["id"] - 1] == h["path"] for h in hits)
    dead = {i + 1 for i, s in enumerate(status) if s != STATUS_OK}
    for dead_id in dead:  # even asking for a dead image's own neighbours never returns dead rows
        q = vecs[dead_id - 1]
        e = SearchEngine(d)
        got = [h.id for h in e.search(q, 20)]
        e.close()
        assert not dead & set(got) and got == exact(vecs, status, q)[:20]


def test_path_and_date_filters_fill_k(store):
    d, vecs, paths, status, taken = store
    hits = run_search(d, like=[2], k=25, path_glob="beach/*", after="2023-03-01", before="2023-09")
    f = make_filters("beach/*", "2023-03-01", "2023-09")

    def keep(i):
        from datetime import datetime

        return f.path_ok(paths[i]) and taken[i] is not None and f.date_ok(datetime.fromisoformat(taken[i]))

    want = exact(vecs, status, vecs[1], keep)
    assert len(want) >= 25
    assert [h["id"] for h in hits] == want[:25]
    assert all("/beach/" in h["path"] and "2023-03" <= h["taken_at"] < "2023-09" for h in hits)


def test_min_score_and_no_results(store):
    d, vecs, _, status, _ = store
    hits = run_search(d, like=[5], k=50, min_score=0.2)
    assert hits and all(h["score"] >= 0.2 for h in hits)
    assert [h["id"] for h in hits] == [
        i for i in exact(vecs, status, vecs[4])[:50] if vecs[i - 1] @ vecs[4] >= 0.2
    ]
    assert run_search(d, like=[5], path_glob="/nowhere/*") == []


def test_bad_input_is_one_clear_error(store, tmp_path):
    d = store[0]
    with pytest.raises(PixdexError, match="no store"):
        run_search(tmp_path / "missing", like=[1])
    with pytest.raises(PixdexError, match="not a pixdex store"):
        run_search(tmp_path, like=[1])
    with pytest.raises(PixdexError, match="no indexed image with id 11"):
        run_search(d, like=[11])  # failed
    with pytest.raises(PixdexError, match="-k"):
        run_search(d, like=[1], k=0)
    empty = make_store(tmp_path / "empty", np.zeros((0, 24), np.float32), [], faiss_kind=None)
    with pytest.raises(PixdexError, match="no indexed images"):
        run_search(empty, like=[1])


def test_similar_leaves_the_source_out(store):
    d, vecs, _, status, _ = store
    e = SearchEngine(d)
    try:
        src, hits = e.similar(3, 10)
        assert src.id == 3 and 3 not in [h.id for h in hits]
        assert [h.id for h in hits] == exact(vecs, status, vecs[2])[1:11]
        assert e.similar(11, 10) == (None, [])  # failed
        assert e.similar(10_000, 10) == (None, [])
    finally:
        e.close()


def _cli(*args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "pixdex", "search", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_cli_outputs(store, tmp_path):
    d, vecs, paths, status, _ = store
    r = _cli("--like", "7", "-k", "5", "--store", str(d), "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert [h["id"] for h in got] == exact(vecs, status, vecs[6])[:5]
    r = _cli("--like", "7", "-k", "5", "--store", str(d), "--paths")
    assert r.stdout.splitlines() == [h["path"] for h in got]
    r = _cli("--like", "7", "-k", "3", "--store", str(d))
    assert r.returncode == 0 and all(h["path"] in r.stdout for h in got[:3])
    r = _cli("--like", "7", "--store", str(d), "--path", "/nowhere/*")
    assert r.returncode == 0 and "No images match" in r.stderr and not r.stdout  # a pipe: stdout stays data
    r = _cli("--like", "7", "--store", str(d), "--path", "/nowhere/*", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == []
    r = _cli("--like", "7", "--store", str(tmp_path / "nope"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no store" in r.stderr and not r.stdout


def test_matching_ids_sql_and_python_agree(tmp_path):
    """SQL's answer (with Python's re-check where SQL cannot decide) equals a plain Python reference:
    the path glob by fnmatch, the date as EXIF date else the file's mtime in local time."""
    from datetime import datetime
    from fnmatch import fnmatchcase

    from pixdex.search.store_view import StoreView

    paths = [
        "/p/Été/a.JPG",
        "/p/ete/b.jpg",
        "/p/x/IMG_1.png",
        "/p/x/IMG_2.png",
        "C:\\pics\\c.jpg",
        "/p/y/d.jpg",
        "/p/y/shot.png",
    ]
    taken = [
        "2023-05-01 09:00:00",
        "2023-05-01T23:30:00",
        "2023-04-30T23:59:59",
        None,
        "2023-06-01T00:00:00",
        "2023-05-31 10:00:00",
        None,
    ]
    # the undated rows: modified 2023-05-20 14:30 and 2023-05-31 11:30 (local time)
    mtimes = [None, None, None, int(datetime(2023, 5, 20, 14, 30).timestamp() * 1e9), None, None]
    mtimes.append(int(datetime(2023, 5, 31, 11, 30).timestamp()) * 10**9 + 250_000_000)
    when = [
        datetime.fromisoformat(t) if t else datetime.fromtimestamp(m / 1e9) for t, m in zip(taken, mtimes)
    ]
    d = make_store(tmp_path / "s", unit(np.eye(7, 8)), paths, taken=taken, faiss_kind=None, mtimes=mtimes)
    v = StoreView(d)
    try:
        for pattern, glob, after, before in [
            ("été/*", "*/été/*", None, None),
            ("*.jpg", "*.jpg", None, None),
            ("img_[12].png", "*/img_[12].png", None, None),
            ("pics/*", "*/pics/*", None, None),
            (None, None, "2023-05-01", None),
            (None, None, None, "2023-06-01"),
            (None, None, "2023-05-01T12:00", "2023-06"),
            ("*.jpg", "*.jpg", "2023-05", "2023-05-31T11:00"),
            (None, None, "2023-05-31T11:30", None),
            (None, None, "2023-05-31T11:30:01", None),
            (None, None, "2023-05-20", "2023-05-21"),
            ("/P/?TÉ/*", "/p/?té/*", None, None),
        ]:
            f = make_filters(pattern, after, before)
            lo = datetime.fromisoformat(after if len(after or "") != 7 else after + "-01") if after else None
            hi = (
                datetime.fromisoformat(before if len(before or "") != 7 else before + "-01")
                if before
                else None
            )
            want = [
                i + 1
                for i in range(7)
                if (glob is None or fnmatchcase(paths[i].replace("\\", "/").lower(), glob))
                and (lo is None or when[i] >= lo)
                and (hi is None or when[i] < hi)
            ]
            assert v.matching_ids(f).tolist() == want, (pattern, after, before)
        assert v.matching_ids(make_filters("été/*")).tolist() == [1]
        assert v.matching_ids(make_filters(None, "2023-05-01", "2023-06-01")).tolist() == [1, 2, 4, 6, 7]
        assert v.matching_ids(make_filters(None, "2023-05-20", "2023-05-21")).tolist() == [4]  # by mtime
    finally:
        v.close()


def test_engine_maps_a_replaced_faiss_file(tmp_path):
    from pixdex.search.retrieval import ivf_of
    from pixdex.storage.contract import FAISS_FILE
    from pixdex.storage.faiss_index import VectorIndex

    vecs = unit(np.random.default_rng(3).normal(size=(300, 16)))
    d = make_store(tmp_path / "s", vecs, [f"/p/{i}.jpg" for i in range(300)], faiss_kind="flat")
    e = SearchEngine(d)
    try:
        first = e.index()
        assert ivf_of(first) is None and e.index() is first  # unchanged file: the same mapping
        ivf = VectorIndex.train_ivf(vecs, 4, trained_on=300, use_gpu=False)
        ivf.add(np.arange(1, 301, dtype=np.int64), vecs)
        ivf.save(d / FAISS_FILE)  # storage replaces the file atomically
        assert ivf_of(e.index()) is not None
        hits = e.search(vecs[7], 5)
        assert hits[0].id == 8 and hits[0].score == pytest.approx(1.0, abs=1e-5)
        (d / FAISS_FILE).unlink()  # no FAISS file: exact search over the stored vectors
        assert e.index() is None and e.search(vecs[7], 1)[0].id == 8
    finally:
        e.close()

"""End to end with the bundled pixdex-demo model: `pixdex demo-data` -> `pixdex index` -> `pixdex search`,
the JSON API and the browser UI find the shapes the generator drew (ground truth from objects.json).

Needs the trained demo weights (pixdex/encoders/weights/pixdex-demo.safetensors); skipped without them.
The images come from a seed the model was not trained on.
"""

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from collections import defaultdict

import pytest

pytest.importorskip("torch")
pytest.importorskip("faiss")

from pixdex.encoders.registry import demo_weights_path

pytestmark = pytest.mark.skipif(
    not demo_weights_path().is_file(), reason="pixdex-demo weights are not trained/shipped yet"
)

N_IMAGES = 300
SEED = 90210  # not a training seed
K = 5


def _pixdex(*args, timeout=600):
    r = subprocess.run(
        [sys.executable, "-m", "pixdex", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    photos, store = root / "shapes", root / "store"
    _pixdex("demo-data", str(photos), "--n", str(N_IMAGES), "--seed", str(SEED))
    summary = json.loads(
        _pixdex("index", str(photos), "--store", str(store), "--model", "pixdex-demo", "--json")
    )
    assert summary["failed"] == 0 and summary["total"] == N_IMAGES
    meta = json.loads((photos / "objects.json").read_text())
    truth = defaultdict(set)  # "red circle" -> image file names holding one
    for im in meta["images"]:
        for o in im["objects"]:
            truth[f"{o['colour']} {o['shape']}"].add(im["image"])
    # every colour x shape drawn at least K times in this set is a query
    queries = sorted(q for q, names in truth.items() if len(names) >= K)
    assert len(queries) >= 10
    return photos, store, truth, queries


def _precision(results, names):
    return sum(os.path.basename(r["path"]) in names for r in results[:K]) / K


def _precisions(store, truth, queries):
    from pixdex.search.cli_search import run_search

    return {q: _precision(run_search(store, f"a {q}", k=K), truth[q]) for q in queries}


def test_search_precision_at_5_over_colour_shape_queries(demo):
    photos, store, truth, queries = demo
    precisions = _precisions(store, truth, queries)
    mean = sum(precisions.values()) / len(precisions)
    print(
        f"\npixdex search over {N_IMAGES} demo images (seed {SEED}): precision@{K} {mean:.3f} "
        f"over {len(queries)} colour x shape queries"
    )
    assert mean >= 0.9, (mean, sorted(precisions.items(), key=lambda t: t[1])[:8])


def test_cli_json_matches_the_search_function(demo):
    photos, store, truth, queries = demo
    precisions = _precisions(store, truth, queries[:3])
    for q in queries[:3]:
        hits = json.loads(_pixdex("search", f"a {q}", "--store", str(store), "-k", str(K), "--json"))
        assert [h["rank"] for h in hits] == list(range(1, K + 1))
        assert _precision(hits, truth[q]) == precisions[q]
    # the colour is always right even where the shape is not: every top hit holds an object of that colour
    meta = json.loads((photos / "objects.json").read_text())
    colours = {im["image"]: {o["colour"] for o in im["objects"]} for im in meta["images"]}
    for q in queries[:3]:
        hits = json.loads(_pixdex("search", f"a {q}", "--store", str(store), "-k", "1", "--json"))
        assert q.split()[0] in colours[os.path.basename(hits[0]["path"])], (q, hits)


@pytest.fixture(scope="module")
def served(demo):
    """The demo store served on 127.0.0.1 (ephemeral port) for this module: its base URL."""
    from pixdex.search.serve import make_server, start_in_thread

    photos, store, truth, queries = demo
    srv = make_server(store, "127.0.0.1", 0)
    start_in_thread(srv)
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        srv.engine.close()


def test_api_returns_the_search_results(demo, served):
    from pixdex.search.cli_search import run_search

    photos, store, truth, queries = demo
    for q in queries[:5]:  # the API answers exactly what the search function answers
        url = f"{served}/api/search?q={urllib.parse.quote('a ' + q)}&k={K}"
        with urllib.request.urlopen(url, timeout=30) as r:
            api = [h["id"] for h in json.loads(r.read())["results"]]
        assert api == [h["id"] for h in run_search(store, f"a {q}", k=K)]


def test_browser_shows_the_search_results(demo, served, browser):
    from pixdex.search.cli_search import run_search

    photos, store, truth, queries = demo
    q = queries[0]
    page = browser.new_page()
    try:
        page.set_default_timeout(20_000)
        page.goto(served + "/")
        page.fill("#q", f"a {q}")
        page.press("#q", "Enter")
        page.wait_for_selector("#grid .card")
        titles = [page.locator("#grid .card").nth(i).get_attribute("title") for i in range(K)]
        expected = [os.path.basename(h["path"]) for h in run_search(store, f"a {q}", k=K)]
        assert [os.path.basename(t.split("  (")[0]) for t in titles] == expected, (q, titles)
        page.locator("#grid .card").nth(0).click()
        page.wait_for_selector("#viewer:not([hidden])")
        page.wait_for_function("() => document.querySelector('#viewer-img').naturalWidth > 0")
        page.click("#viewer-like")
        page.wait_for_function("() => location.hash.startsWith('#like=')")
        page.wait_for_function("() => document.querySelector('#status').textContent.includes('like')")
        assert page.locator("#grid .card").count() > 0
    finally:
        page.close()

"""The gallery's filters and image search in headless Chromium, over the dated library (conftest.py:
real EXIF dates and file mtimes, the tiny random-init model): set filters and see the results change to
exactly the images they select; pick a file or drop one and see the images like it; the favicon loads.

Skips when playwright or a Chromium binary is missing, and fails instead under CI=true (the ``browser``
fixture in conftest.py).
"""

import base64
import json
import urllib.request
from datetime import datetime
from fnmatch import fnmatchcase

import pytest

pytest.importorskip("faiss")
pytest.importorskip("torch")


@pytest.fixture
def page(browser):
    pg = browser.new_page()
    pg.set_default_timeout(20_000)
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg, errors
    pg.close()


@pytest.fixture
def site(dated_server):
    srv, store, truth = dated_server
    return f"http://127.0.0.1:{srv.server_address[1]}/", truth


def shown(pg) -> list[str]:
    """The paths of the result cards, in order (each card's title is 'PATH  (SCORE)')."""
    titles = pg.eval_on_selector_all("#grid .card", "cs => cs.map(c => c.title)")
    return [t.rsplit("  (", 1)[0] for t in titles]


def wait_for_results(pg, previous_status=None):
    pg.wait_for_function(
        "prev => { const s = document.querySelector('#status').textContent;"
        " return s !== prev && !s.startsWith('Searching'); }",
        arg=previous_status,
    )
    return pg.text_content("#status")


def api_paths(url, query):
    with urllib.request.urlopen(url + "api/search?" + query, timeout=30) as r:
        return [h["path"] for h in json.loads(r.read())["results"]]


def test_filters_change_the_results(site, page):
    url, truth = site
    pg, errors = page
    pg.goto(url + "#q=a%20photo")
    status = wait_for_results(pg)
    everything = shown(pg)
    assert sorted(everything) == sorted(truth), status  # no filter: all 12

    pg.fill("#f-after", "2021-01-01")
    pg.fill("#f-before", "2023-01-01")
    pg.dispatch_event("#f-before", "change")
    status = wait_for_results(pg, status)
    got = shown(pg)
    want = {p for p, (d, _) in truth.items() if datetime(2021, 1, 1) <= d < datetime(2023, 1, 1)}
    assert set(got) == want and any(p.endswith(".png") for p in got)  # PNGs by their file date
    assert got == [p for p in everything if p in want]  # same ranking, fewer images
    assert "after=2021-01-01" in pg.url and "before=2023-01-01" in pg.url
    assert "from 2021-01-01" in status

    pg.fill("#f-path", "*.png")
    pg.press("#f-path", "Enter")
    status = wait_for_results(pg, status)
    assert set(shown(pg)) == {p for p in want if fnmatchcase(p, "*.png")}
    assert shown(pg) == api_paths(url, "q=a%20photo&k=60&after=2021-01-01&before=2023-01-01&path=*.png")

    pg.click("#f-clear")
    status = wait_for_results(pg, status)
    assert shown(pg) == everything

    # min score: the ranked list cut where the API cuts it
    scores = pg.eval_on_selector_all("#grid .card", "cs => cs.map(c => parseFloat(c.title.split('(').pop()))")
    cut = round((scores[2] + scores[3]) / 2, 6)
    pg.fill("#f-min", str(cut))
    pg.dispatch_event("#f-min", "change")
    status = wait_for_results(pg, status)
    assert shown(pg) == everything[:3]

    # a bad filter value: the server's one-line message in the status line, no results
    pg.fill("#f-min", "")
    pg.fill("#f-path", "")
    pg.evaluate("() => { location.hash = '#q=a%20photo&after=2024-01-01&before=2020-01-01'; }")
    status = wait_for_results(pg, status)
    assert "after (2024-01-01) must be earlier than before (2020-01-01)" in status
    assert pg.locator("#grid .card").count() == 0
    assert not errors


def test_pick_a_file_to_search_with_it(site, page):
    url, truth = site
    pg, errors = page
    target = sorted(truth)[4]
    pg.goto(url)
    pg.set_input_files("#file", target)
    status = wait_for_results(pg)
    got = shown(pg)
    assert got[0] == target and len(got) == len(truth), status  # the image itself ranks first
    assert "your " in status and "#image=" in pg.url

    # a filter re-runs the same image search
    pg.fill("#f-path", "screenshot_*")
    pg.press("#f-path", "Enter")
    status = wait_for_results(pg, status)
    assert set(shown(pg)) == {p for p in truth if "/Screenshot_" in p}
    assert shown(pg) == [p for p in got if "/Screenshot_" in p]
    assert not errors


def test_drop_a_file_to_search_with_it(site, page):
    url, truth = site
    pg, errors = page
    target = [p for p in sorted(truth) if p.endswith(".png")][1]
    data = base64.b64encode(open(target, "rb").read()).decode()
    pg.goto(url)
    pg.evaluate(
        """([b64, name]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, { type: "image/png" }));
            for (const type of ["dragenter", "dragover", "drop"]) {
                document.body.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
            }
        }""",
        [data, "dropped.png"],
    )
    status = wait_for_results(pg)
    assert shown(pg)[0] == target, status
    assert "dropped.png" in status and pg.is_hidden("#drop")

    # a file that is not an image: the server's one-line refusal
    pg.set_input_files(
        "#file", files=[{"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"not a jpeg"}]
    )
    status = wait_for_results(pg, status)
    assert "not an image" in status and pg.locator("#grid .card").count() == 0
    assert not errors


def test_favicon_loads(site, page):
    url, _ = site
    pg, errors = page
    pg.goto(url)
    assert pg.get_attribute("link[rel=icon]", "href") == "/favicon.ico"
    size = pg.evaluate(
        """() => new Promise(done => { const i = new Image();
            i.onload = () => done(i.naturalWidth); i.onerror = () => done(-1); i.src = '/favicon.ico'; })"""
    )
    assert size > 0
    assert pg.request.get(url + "favicon.ico").status == 200
    assert not errors

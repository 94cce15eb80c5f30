"""The web UI in headless Chromium: type a query, see the right thumbnails, open one, "more like this".

Skips cleanly when playwright or a Chromium binary is missing.
"""

import os
import shutil

import pytest

pytest.importorskip("faiss")
sync_api = pytest.importorskip("playwright.sync_api")

from test_serve_api import gallery_server

CHROMIUM = os.environ.get("PIXDEX_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(not CHROMIUM, reason="no chromium binary (apt-get install chromium)")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with gallery_server(tmp_path_factory.mktemp("ui")) as (srv, store, names, status):
        yield f"http://127.0.0.1:{srv.server_address[1]}/", names


@pytest.fixture(scope="module")
def page():
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        except sync_api.Error as e:
            pytest.skip(f"chromium does not start: {str(e).splitlines()[0]}")
        pg = browser.new_page()
        pg.set_default_timeout(15_000)
        errors = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.on("dialog", lambda d: (errors.append("dialog: " + d.message), d.dismiss()))
        yield pg, errors
        browser.close()


def test_search_click_and_more_like_this(site, page):
    url, names = site
    pg, errors = page
    pg.goto(url)
    pg.fill("#q", "something blue")
    pg.press("#q", "Enter")
    pg.wait_for_selector("#grid .card")
    cards = pg.locator("#grid .card")
    n = cards.count()
    assert n == 23  # every live image, ranked
    first8 = [cards.nth(i).get_attribute("title") for i in range(8)]
    assert all("/blue_" in t for t in first8), first8
    # thumbnails really load (decoded images, not broken links)
    pg.wait_for_function(
        "() => [...document.querySelectorAll('#grid img')].slice(0, 8)"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    assert "q=something%20blue" in pg.url

    cards.nth(0).click()
    pg.wait_for_selector("#viewer:not([hidden])")
    assert "/blue_" in pg.text_content("#viewer-name")
    pg.wait_for_function("() => document.querySelector('#viewer-img').naturalWidth > 0")
    pg.click("#viewer-like")
    pg.wait_for_function("() => location.hash.startsWith('#like=')")
    pg.wait_for_function("() => document.querySelector('#status').textContent.includes('like')")
    assert pg.is_hidden("#viewer")
    cards = pg.locator("#grid .card")
    similar = [cards.nth(i).get_attribute("title") for i in range(7)]
    assert all("/blue_" in t for t in similar), similar  # the 7 other blue images come first
    assert not errors


def test_script_file_name_is_shown_as_text(site, page):
    url, names = site
    pg, errors = page
    pg.goto(url + "#q=red")
    pg.wait_for_selector("#grid .card")
    odd = pg.locator('#grid .card[data-id="1"]')
    odd.click()
    pg.wait_for_selector("#viewer:not([hidden])")
    assert pg.text_content("#viewer-name") == str(names[0])
    assert "<script>" in pg.text_content("#viewer-name")
    assert pg.evaluate("() => document.querySelectorAll('script').length") == 1  # only app.js
    assert pg.evaluate("() => window.__pwned === undefined")
    pg.keyboard.press("Escape")
    assert pg.is_hidden("#viewer")
    assert not errors

"""The web UI in headless Chromium: type a query, see the right thumbnails, open one, "more like this";
a file name made of HTML stays text.

Skips when playwright or a Chromium binary is missing, and fails instead under CI=true (the ``browser``
fixture in conftest.py).
"""

import pytest

pytest.importorskip("faiss")

# Waits until an image pointing at "x" (the src of the hostile file name's <img>) has failed to load:
# had the name been parsed as HTML, its own <img src=x> would have failed, and run its handler, by then.
SETTLE = "() => new Promise(done => { const i = new Image(); i.onerror = i.onload = done; i.src = 'x'; })"
PWNED = "() => window.__pwned"


@pytest.fixture
def page(browser):
    pg = browser.new_page()
    pg.set_default_timeout(15_000)
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("dialog", lambda d: (errors.append("dialog: " + d.message), d.dismiss()))
    yield pg, errors
    pg.close()


@pytest.fixture
def site(gallery):
    srv, store, names, status = gallery
    return f"http://127.0.0.1:{srv.server_address[1]}/", names


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


def test_the_hostile_file_name_runs_script_when_parsed_as_html(site, page):
    """Control for the next two tests: in a page without a Content-Security-Policy, the gallery's hostile
    file name put in with innerHTML does set window.__pwned, so their __pwned checks can fail."""
    url, names = site
    pg, _ = page
    pg.set_content("<!doctype html><div id=out></div>")
    assert pg.evaluate(PWNED) is None
    pg.evaluate("name => { document.getElementById('out').innerHTML = name; }", names[0].name)
    pg.wait_for_function("() => window.__pwned === 1")


def test_markup_file_name_is_shown_as_text(site, page):
    url, names = site
    pg, errors = page
    pg.goto(url + "#q=red")
    pg.wait_for_selector("#grid .card")
    odd = pg.locator('#grid .card[data-id="1"]')
    assert names[0].name in odd.text_content()  # the grid label
    odd.click()
    pg.wait_for_selector("#viewer:not([hidden])")
    assert pg.text_content("#viewer-name") == str(names[0])
    assert pg.get_attribute("#viewer-img", "alt") == names[0].name
    assert pg.evaluate("() => document.querySelector('[onerror]')") is None  # no element made from it
    pg.evaluate(SETTLE)
    assert pg.evaluate(PWNED) is None
    pg.keyboard.press("Escape")
    assert pg.is_hidden("#viewer")
    assert not errors


def test_csp_blocks_inline_handlers_even_if_markup_got_in(site, page):
    """The second line of defence: were a file name ever put into the page as HTML, the server's
    Content-Security-Policy (script-src 'self') stops its inline handler from running."""
    url, names = site
    pg, _ = page
    pg.goto(url)
    violations = pg.evaluate(
        """name => new Promise(done => {
            document.addEventListener('securitypolicyviolation', e => done(e.violatedDirective));
            setTimeout(() => done('no violation reported'), 5000);
            const div = document.createElement('div');
            div.innerHTML = name;
            document.body.append(div);
        })""",
        names[0].name,
    )
    assert violations.startswith("script-src")
    assert pg.evaluate("() => document.querySelector('[onerror]') !== null")  # the markup did get in
    pg.evaluate(SETTLE)
    assert pg.evaluate(PWNED) is None


def test_right_to_left_override_in_a_name_is_shown_not_obeyed(site, page):
    """The gallery's SPOOF_NAME holds U+202E (right-to-left override): the grid label, tooltip, alt text,
    viewer name and status line show it as the visible text \\u202e, so the name cannot read as another."""
    from conftest import SPOOF_NAME

    url, names = site
    pg, errors = page
    rlo = "\u202e"
    shown = SPOOF_NAME.replace(rlo, "\\u202e")
    pg.goto(url + "#q=red")
    pg.wait_for_selector("#grid .card")
    card = pg.locator('#grid .card[data-id="7"]')
    assert card.locator(".label").text_content() == shown
    assert card.locator("img").get_attribute("alt") == shown
    assert rlo not in card.get_attribute("title") and shown in card.get_attribute("title")
    texts = pg.evaluate(
        "() => [...document.querySelectorAll('#grid .card')].map(c => c.textContent + c.title)"
    )
    assert not any(rlo in t for t in texts)
    card.click()
    pg.wait_for_selector("#viewer:not([hidden])")
    assert pg.text_content("#viewer-name") == str(names[6]).replace(rlo, "\\u202e")
    pg.click("#viewer-like")
    pg.wait_for_function("() => document.querySelector('#status').textContent.includes('like')")
    assert pg.text_content("#status").endswith("images like " + shown)
    assert not errors

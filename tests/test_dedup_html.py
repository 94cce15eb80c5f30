"""The --html dedup report: self-contained, bounded, names escaped; rendered in headless Chromium.

The browser test skips when playwright or Chromium is missing, except under CI=true where it fails.
"""

import base64
import hashlib
import html
import os
import re
import shutil

import pytest
from dedup_support import build_report

from pixdex.dedup.html import write_html

HOSTILE = (
    'evil/<img src=x onerror="window.__pwned=1">.png',
    'evil/"><script>window.__pwned=1</script>.png',  # a folder named '"><script>...<' holds 'script>.png'
    "evil/it's & <b>bold</b>.png",
)
CHROMIUM = os.environ.get("PIXDEX_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
IN_CI = os.environ.get("CI", "").lower() == "true"


def _unavailable(reason):
    if IN_CI:
        pytest.fail(f"browser check required under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html")
    report = build_report(tmp / "photos", HOSTILE)
    out = tmp / "report.html"
    stats = write_html(report, out)
    return report, out, stats


def test_page_is_self_contained_and_escaped(report_page):
    report, out, stats = report_page
    text = out.read_text(encoding="utf-8")
    members = sum(len(g.members) for g in report.groups)
    assert stats == {"groups_shown": 3, "groups_left_out": 0, "thumbnails": members, "thumbnails_failed": 0}
    # no external resource: every src/href is a data: URI, no URL scheme anywhere
    assert re.findall(r'(?:src|href)="(?!data:image/jpeg;base64,)', text) == []
    assert "http://" not in text and "https://" not in text and "<script" not in text.lower()
    assert "<link" not in text and "@import" not in text and "url(" not in text
    # the CSP allows exactly the one style block, by its hash
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', text).group(1)
    style = re.search(r"<style>(.*?)</style>", text, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in html.unescape(csp)
    assert "default-src 'none'" in html.unescape(csp) and "script-src" not in csp
    for name in HOSTILE:
        base = name.rsplit("/", 1)[1]
        assert html.escape(base) in text
    assert 'onerror="window' not in text and "<b>bold" not in text


def test_huge_reports_are_capped_with_a_note(tmp_path):
    report = build_report(tmp_path / "photos", ("dup/c1.png", "dup/c2.png", "dup/c3.png"))
    out = tmp_path / "r.html"
    stats = write_html(report, out, max_groups=2, max_members=2)
    text = out.read_text(encoding="utf-8")
    assert stats["groups_shown"] == 2 and stats["groups_left_out"] == 1
    assert text.count('<section class="group"') == 2
    assert stats["thumbnails"] == text.count('src="data:image/jpeg') == 4
    assert "1 more groups not shown" in text
    assert "1 more members not shown" in text  # group 1 has three members
    stats = write_html(report, out, max_thumbnails=5)  # groups of 3 and 2 fit, the next one (4) does not
    assert (stats["groups_shown"], stats["thumbnails"]) == (2, 5)
    stats = write_html(report, out, max_thumbnails=1)  # at least one group
    assert (stats["groups_shown"], stats["thumbnails"]) == (1, 3)


def test_unreadable_file_gets_a_placeholder(tmp_path):
    report = build_report(tmp_path / "photos")
    victim = report.groups[0].members[1].path
    with open(victim, "wb") as f:
        f.write(b"not an image")
    stats = write_html(report, tmp_path / "r.html")
    assert stats["thumbnails_failed"] == 1
    assert "no thumbnail:" in (tmp_path / "r.html").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM:
        _unavailable("no chromium binary (apt-get install chromium)")
    try:
        from playwright import sync_api
    except ImportError:
        _unavailable("playwright is not installed")
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        except sync_api.Error as e:
            _unavailable(f"chromium does not start: {str(e).splitlines()[0]}")
        yield b
        b.close()


def _page(browser):
    pg = browser.new_page()
    pg.set_default_timeout(15_000)
    pg.on("dialog", lambda d: d.dismiss())
    return pg


def _check_rendered(pg, report):
    members = sum(len(g.members) for g in report.groups)
    assert pg.locator("section.group").count() == len(report.groups)
    assert pg.locator("figure.member").count() == members
    assert pg.locator("figure.member.kept").count() == len(report.groups)
    pg.wait_for_function(
        "n => { const im = [...document.querySelectorAll('figure img')];"
        " return im.length >= n && im.every(i => i.complete); }",
        arg=members,
    )
    widths = pg.evaluate("() => [...document.querySelectorAll('figure img')].map(i => i.naturalWidth)")
    assert len(widths) == members and all(w > 0 for w in widths)
    titles = pg.evaluate("() => [...document.querySelectorAll('figure.member')].map(f => f.title)")
    assert titles == [m.path for g in report.groups for m in g.members]  # paths shown as text, intact
    kept_titles = pg.evaluate("() => [...document.querySelectorAll('figure.kept')].map(f => f.title)")
    assert kept_titles == [g.keep.path for g in report.groups]
    assert pg.evaluate("() => window.__pwned") is None
    assert pg.evaluate("() => document.querySelectorAll('script').length") == 0


def test_report_renders_in_chromium_without_injection(browser, report_page):
    report, out, _ = report_page
    pg = _page(browser)
    pg.goto(out.as_uri())
    _check_rendered(pg, report)
    pg.close()


def test_escaping_alone_stops_injection(browser, report_page):
    """The same page without its CSP: the escaping must be enough on its own."""
    report, out, _ = report_page
    text = out.read_text(encoding="utf-8")
    bare = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", text)
    assert bare != text
    pg = _page(browser)
    pg.set_content(bare)
    _check_rendered(pg, report)
    pg.close()


def test_the_injection_check_can_fail(browser, report_page):
    """Control: the same names pasted unescaped do run (so the checks above would catch a leak), and
    the page's CSP blocks them even then."""
    _, out, _ = report_page
    raw = "".join(f"<p>{n}</p>" for n in HOSTILE)
    pg = _page(browser)
    pg.set_content(f"<!doctype html><html><body>{raw}</body></html>")
    pg.wait_for_function("() => window.__pwned === 1")
    pg.close()
    csp = re.search(
        r'<meta http-equiv="Content-Security-Policy"[^>]*>', out.read_text(encoding="utf-8")
    ).group(0)
    pg = _page(browser)
    pg.set_content(f"<!doctype html><html><head>{csp}</head><body>{raw}</body></html>")
    pg.wait_for_timeout(300)
    assert pg.evaluate("() => window.__pwned") is None
    pg.close()

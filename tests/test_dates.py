"""An image's date: its EXIF date, else its file's modification time; `pixdex search --json` says which
(``date_source``) and ``--after``/``--before`` match PNGs and screenshots by their mtime.

The expected dates come from how the library was made (conftest.build_dated_library: EXIF dates written
into JPEGs, mtimes set with os.utime on PNGs), not from pixdex.
"""

import json
import os
import subprocess
import sys
from datetime import datetime

import pytest

pytest.importorskip("faiss")


def _search(store, *args):
    r = subprocess.run(
        [sys.executable, "-m", "pixdex", "search", "--like", "1", "-k", "50", "--store", str(store), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_json_results_give_the_date_and_its_source(dated_library):
    store, truth = dated_library
    hits = _search(store, "--json")
    assert len(hits) == len(truth)
    for h in hits:
        when, source = truth[h["path"]]
        assert h["date_source"] == source, h
        assert h["date"] == when.isoformat(timespec="seconds"), h
        assert h["taken_at"] == (when.isoformat() if source == "exif" else None)  # EXIF only, as before


@pytest.mark.parametrize(
    "after,before",
    [
        ("2021", "2023"),
        ("2020-03-15T10:30", None),
        (None, "2020-03-15T10:30:01"),
        ("2024-03-15", "2024-03-16"),
    ],
)
def test_after_and_before_match_images_without_exif_by_mtime(dated_library, after, before):
    store, truth = dated_library
    args = ["--json"] + (["--after", after] if after else []) + (["--before", before] if before else [])
    got = {h["path"] for h in _search(store, *args)}
    lo = datetime.fromisoformat(after if len(after) > 4 else after + "-01-01") if after else None
    hi = datetime.fromisoformat(before if len(before) > 4 else before + "-01-01") if before else None
    want = {p for p, (d, _) in truth.items() if (lo is None or d >= lo) and (hi is None or d < hi)}
    assert any(truth[p][1] == "mtime" for p in want)  # the check covers PNGs found by their mtime
    assert got == want


def test_exif_date_wins_over_a_later_mtime(dated_library):
    """The JPEGs' files were modified in 2025; their EXIF dates (2019-2024) decide."""
    store, truth = dated_library
    got = {h["path"] for h in _search(store, "--json", "--after", "2025")}
    assert got == set()
    got = {h["path"] for h in _search(store, "--json", "--path", "camera/*", "--before", "2020")}
    assert got == {p for p, (d, s) in truth.items() if s == "exif" and d.year < 2020}


def test_effective_date_rule():
    from pixdex.search.dates import date_fields, date_in_range, effective_date

    ns = int(datetime(2022, 2, 3, 4, 5, 6).timestamp()) * 10**9 + 700_000_000
    assert effective_date("2021-01-01 08:00:00", ns) == (datetime(2021, 1, 1, 8), "exif")
    assert effective_date(None, ns) == (datetime(2022, 2, 3, 4, 5, 6, 700_000), "mtime")
    assert effective_date(None, None) == (None, None)
    assert date_fields(None, ns) == {"date": "2022-02-03T04:05:06", "date_source": "mtime"}
    assert date_in_range(None, ns, datetime(2022, 2, 3, 4, 5, 6), None)  # 06.7 >= 06
    assert not date_in_range(None, ns, datetime(2022, 2, 3, 4, 5, 7), None)
    assert not date_in_range(None, None, datetime(2000, 1, 1), None)  # no date at all: left out
    assert date_in_range(None, None, None, None)

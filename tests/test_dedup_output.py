"""Dedup report outputs: the --json shape, the CSV round trip, the table (whole paths when redirected)."""

import csv
import io
import json
import re

from dedup_support import build_report

from pixdex.dedup.model import Member, Report, make_group, make_summary, to_json
from pixdex.dedup.output import print_table, write_csv, write_json

SPEC_MEMBER_KEYS = {"id", "path", "tier", "score", "width", "height", "bytes"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_json_shape_matches_the_spec(tmp_path):
    report = build_report(tmp_path / "photos", ("dup/c_copy.png",))
    doc = to_json(report)
    assert set(doc) == {"groups", "summary"}
    assert len(doc["groups"]) == len(report.groups) == 3
    for g, jg in zip(report.groups, doc["groups"]):
        assert set(jg) == {"keep", "members"}
        assert jg["keep"] == g.keep.path
        assert [m["path"] for m in jg["members"]] == [m.path for m in g.members]
        for m, jm in zip(g.members, jg["members"]):
            assert SPEC_MEMBER_KEYS <= set(jm) <= SPEC_MEMBER_KEYS | {"kept", "format"}
            assert (jm["id"], jm["width"], jm["height"], jm["bytes"]) == (m.id, m.width, m.height, m.bytes)
            assert jm["kept"] is (m.path == g.keep.path)
        kept = jg["members"][0]
        assert kept["path"] == jg["keep"] and kept["tier"] is None and kept["score"] is None
        assert all(jm["tier"] in ("exact", "copy", "semantic") for jm in jg["members"][1:])
    # the copy distance stays an integer, the cosine a number
    tiers = {jm["tier"]: jm["score"] for jg in doc["groups"][:2] for jm in jg["members"][1:]}
    assert tiers["exact"] == 1.0 and tiers["copy"] == 3 and isinstance(tiers["copy"], int)
    assert abs(tiers["semantic"] - 0.95) < 1e-9
    json.dumps(doc)  # serialisable as is


def test_summary_counts_against_the_files(tmp_path):
    report = build_report(tmp_path / "photos", ("dup/c_copy.png", "dup/c_copy2.png"))
    s = report.summary
    dups = [m for g in report.groups for m in g.members[1:]]
    assert s["groups"] == 3 and s["duplicates"] == len(dups) == 5
    assert s["by_tier"] == {"exact": 1, "copy": 3, "semantic": 1}
    # reclaimable bytes measured on disk, not from the members
    assert s["bytes_reclaimable"] == sum(
        (tmp_path / "photos" / p).stat().st_size
        for p in (
            "backup/2020/a.png",
            "small/a_small.png",
            "other/b_similar.png",
            "dup/c_copy.png",
            "dup/c_copy2.png",
        )
    )


def test_streamed_json_is_the_same_document(tmp_path):
    report = build_report(tmp_path / "photos", ('we"ird\\name ü.png',))
    out = io.StringIO()
    write_json(report, out)
    assert json.loads(out.getvalue()) == to_json(report)
    empty = io.StringIO()
    write_json(Report([], make_summary([], images=7)), empty)
    assert json.loads(empty.getvalue()) == {"groups": [], "summary": make_summary([], images=7)}


def test_csv_round_trip(tmp_path):
    odd = 'comma, "quote" and\nnewline.png'
    report = build_report(tmp_path / "photos", (odd,))
    dest = tmp_path / "report.csv"
    write_csv(report, dest)
    with open(dest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    expected = [(gi, g, m) for gi, g in enumerate(report.groups, start=1) for m in g.members]
    assert len(rows) == len(expected)
    assert list(rows[0]) == [
        "group",
        "kept",
        "id",
        "path",
        "tier",
        "score",
        "width",
        "height",
        "bytes",
        "format",
    ]
    for row, (gi, g, m) in zip(rows, expected):
        assert int(row["group"]) == gi
        assert row["path"] == m.path  # commas, quotes and line breaks survive
        assert row["kept"] == ("true" if m is g.keep else "false")
        assert int(row["id"]) == m.id
        assert (int(row["width"]), int(row["height"]), int(row["bytes"])) == (m.width, m.height, m.bytes)
        assert row["format"] == "PNG"
        if m is g.keep:
            assert row["tier"] == "" and row["score"] == ""
        else:
            assert row["tier"] == m.tier and float(row["score"]) == float(m.score)
    assert any(r["path"].endswith(odd) for r in rows)


def test_table_redirected_has_every_full_path(tmp_path):
    deep = "a very long folder name that goes on and on/" * 3 + "and a long file name as well.png"
    report = build_report(tmp_path / "photos", (deep,))
    out = io.StringIO()
    print_table(report, out)
    text = out.getvalue()
    assert "\x1b[" not in text  # no colour codes in a file
    lines = text.splitlines()
    for g in report.groups:
        for m in g.members:
            assert len(m.path) > 0
            hit = [ln for ln in lines if m.path in ln]
            assert len(hit) == 1, m.path  # whole, on one line
            assert ("kept" in hit[0].split()) is (m is g.keep)
    assert any(len(ln) > 200 for ln in lines)  # wider than a terminal rather than cut
    n_dups = sum(len(g.members) - 1 for g in report.groups)
    assert lines[-1].startswith(f"{len(report.groups)} groups, {n_dups} duplicates")


def test_table_on_a_terminal_fits_80_columns_and_shows_names_literally(tmp_path):
    names = ("[bold]not_markup[/bold].png", "x" * 150 + ".png")
    report = build_report(tmp_path / "photos", names)
    out = Tty()
    print_table(report, out, width=80)
    lines = ANSI.sub("", out.getvalue()).splitlines()
    assert max(len(ln) for ln in lines) <= 80
    # the path column, read down the rows (folded paths continue on the next lines)
    start, end = lines[0].index("path"), lines[0].index("tier")
    column = "".join(ln[start:end].strip() for ln in lines[2:])
    for g in report.groups:
        for m in g.members:
            assert m.path.replace(" ", "") in column  # whole, literal (no markup), never cut


def test_control_characters_stay_on_one_line(tmp_path):
    m = Member(2, "/p/evil\nname\x1b[31m.png", "copy", 2, 10, 10, 100)
    report = Report([make_group(Member(1, "/p/keep.png", None, None, 10, 10, 100), [m])], {"groups": 1})
    out = io.StringIO()
    print_table(report, out)
    assert "\x1b" not in out.getvalue()
    assert any("/p/evil\\x0aname\\x1b[31m.png" in ln for ln in out.getvalue().splitlines())


def test_no_duplicates_says_so():
    out = io.StringIO()
    print_table(Report([], make_summary([], images=12)), out)
    assert out.getvalue() == "No duplicates among 12 images.\n"


def test_members_from_two_stores_with_the_same_id_are_both_kept_apart():
    # --against: ids come from two databases and may coincide; paths tell files apart
    keep = Member(5, "/store_a/x.png", None, None, 10, 10, 100)
    other = Member(5, "/store_b/x.png", "exact", 1.0, 10, 10, 100)
    g = make_group(keep, [other])
    assert g.duplicates() == [other]
    assert make_summary([g], images=2)["duplicates"] == 1

"""`pixdex search` output: tab-separated lines with whole paths in a pipe, a table with ids on a terminal.

The reference for every field is the same search's `--json` output."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")

from search_support import make_store, search_probe, unit

from pixdex.search.cli_search import TSV_COLUMNS, print_table

REPO = Path(__file__).resolve().parents[1]
DEEP = "/photos/" + "/".join(f"a rather long folder name {i}" for i in range(6))  # ~170 characters


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(3)
    paths = [f"{DEEP}/IMG_{i:04d} holiday.jpg" for i in range(30)]
    paths[4] = f"{DEEP}/tab\there.jpg"
    paths[5] = f"{DEEP}/new\nline.jpg"
    return make_store(tmp_path_factory.mktemp("out") / "s", unit(rng.normal(size=(30, 16))), paths)


def _search(*args):
    return search_probe(*args)[0]


def test_a_pipe_gets_tab_separated_lines_with_whole_paths(store):
    want = json.loads(_search("--like", "1", "-k", "12", "--store", str(store), "--json").stdout)
    r, heavy = search_probe("--like", "1", "-k", "12", "--store", str(store))
    assert r.returncode == 0, r.stderr
    assert heavy == []  # neither torch, SQLAlchemy nor even rich
    lines = r.stdout.splitlines()
    assert len(lines) == len(want) == 12
    for line, h in zip(lines, want):
        fields = line.split("\t")
        assert len(fields) == len(TSV_COLUMNS) == 4, line
        row = dict(zip(TSV_COLUMNS, fields))
        assert int(row["rank"]) == h["rank"] and int(row["id"]) == h["id"]
        assert float(row["score"]) == pytest.approx(h["score"], abs=5e-5)
        path = h["path"].replace("\t", "\\t").replace("\n", "\\n")
        assert row["path"] == path and len(path) > 150


def test_no_match_in_a_pipe_writes_nothing_on_stdout(store):
    r = _search("--like", "1", "--store", str(store), "--path", "/nowhere/*")
    assert r.returncode == 0 and r.stdout == "" and "No images match" in r.stderr


def test_top_k_and_the_old_long_form_agree(store):
    outs = [
        _search("--like", "2", flag, "7", "--store", str(store)).stdout for flag in ("-k", "--top", "--k")
    ]
    assert len(outs[0].splitlines()) == 7 and outs[0] == outs[1] == outs[2]


def _path_column(table: str) -> list[str]:
    """The path cells of a rendered table, each folded cell joined back."""
    out: list[str] = []
    for line in table.splitlines()[3:]:  # title, header, rule
        cells = [c.strip() for c in line.split("│")]
        if cells[0]:  # a new row (its rank); else the continuation of the previous one
            out.append(cells[3])
        else:
            out[-1] += cells[3]
    return out


@pytest.mark.parametrize("width", [60, 100, 250])
def test_the_terminal_table_has_ids_and_folds_paths_without_cutting_them(store, width):
    import io

    hits = json.loads(_search("--like", "3", "-k", "8", "--store", str(store), "--json").stdout)
    buf = io.StringIO()
    print_table(hits, buf, "pixdex: like #3", width=width)
    text = buf.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= width
    assert re.search(r"rank\s*┃\s*id\s*┃\s*score\s*┃\s*path", text)
    ids = [int(line.split("│")[1]) for line in text.splitlines()[3:] if line.split("│")[0].strip()]
    assert ids == [h["id"] for h in hits]
    shown = [h["path"].replace("\t", "\\u0009").replace("\n", "\\u000a") for h in hits]
    squeeze = lambda s: "".join(s.split())  # noqa: E731 (a wrapped cell loses the spaces it broke at)
    assert [squeeze(p) for p in _path_column(text)] == [squeeze(p) for p in shown]


@pytest.mark.skipif(sys.platform == "win32", reason="a pseudo-terminal")
def test_a_terminal_gets_the_table(store):
    import pty

    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="120", TERM="dumb")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pixdex", "search", "--like", "3", "-k", "4", "--store", str(store)],
            stdout=slave,
            stderr=subprocess.PIPE,
            env=env,
        )
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    finally:
        os.close(master)
    text = b"".join(chunks).decode().replace("\r\n", "\n")
    assert re.search(r"rank\s*┃\s*id\s*┃\s*score\s*┃\s*path", text), text
    assert "\t" not in text and "IMG_" in text

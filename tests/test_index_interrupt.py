"""Ctrl-C during a real `pixdex index` run: it says how many files it kept, exits with INTERRUPTED, the
store stays consistent, and the same command goes on without encoding the kept files again.

The count printed is checked against the database (a fresh store: every ok row is from this run), and
the rerun's own summary says how many it encoded."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from index_support import assert_consistent, db_rows

pytest.importorskip("faiss")

from pixdex.errors import ExitCode  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
N = 500
LINE = re.compile(r"^pixdex: interrupted: (\d+) files indexed and kept; run the same command to continue$")


def _ok_rows(store: Path) -> int:
    try:
        con = sqlite3.connect(f"{(store / 'pixdex.db').as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM images WHERE status = 'ok'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:  # not created yet
        return 0


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a subprocess")
def test_ctrl_c_says_what_was_kept_and_the_same_command_continues(tmp_path):
    from pixdex.training.demo_data import generate

    photos = tmp_path / "photos"
    generate(photos, n=N, seed=21, image_size=96)
    images = sorted(p for p in photos.iterdir() if p.suffix == ".png")
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "pixdex",
        "index",
        str(photos),
        "--store",
        str(store),
        "--model",
        "pixdex-demo",
    ]
    cmd += ["--batch-size", "4", "--workers", "1"]

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 240
        while proc.poll() is None and _ok_rows(store) < 8 and time.monotonic() < end:
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = err.decode(errors="replace")
    assert proc.returncode == ExitCode.INTERRUPTED, err[-2000:]
    assert "Traceback" not in err
    m = LINE.match(err.strip().splitlines()[-1])
    assert m, err[-2000:]
    kept = int(m.group(1))

    rows = db_rows(store)
    ok = {p for p, r in rows.items() if r["status"] == "ok"}
    assert kept == len(ok) and 8 <= kept < N  # the number printed is what the database holds
    assert all(rows[p]["has_vector"] for p in ok)
    con = sqlite3.connect(f"{(store / 'pixdex.db').as_uri()}?mode=ro", uri=True)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()

    done = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == ExitCode.OK, done.stderr[-2000:]
    s = json.loads(done.stdout)
    assert s["unchanged"] == kept and s["encoded"] == N - kept and s["new"] == N - kept
    assert s["total"] == N
    after = assert_consistent(store, images)
    assert all(after[p]["id"] == rows[p]["id"] for p in ok)  # the kept rows were not redone

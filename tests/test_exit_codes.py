"""Exit codes and hints: README's table is the code's, each case exits with its documented code, and a
command suggested in a message names the store it was given and works when run as shown."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("faiss")

from pixdex.errors import ExitCode  # noqa: E402
from pixdex.paths import pixdex_command  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = "pixdex-demo"
HINT = re.compile(r"(pixdex (?:index|tag|search|status|dedup)\b[^)\n]*)")


def _cli(*args, env_extra=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "pixdex", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def _run_hint(hint: str, folder: Path, extra=(), **kw):
    """Run a suggested command as a user would type it, the placeholder FOLDER filled in."""
    words = shlex.split(hint.rstrip(".;, "))
    assert words[0] == "pixdex", hint
    return _cli(*(str(folder) if w == "FOLDER" else w for w in words[1:]), *extra, **kw)


def _one_line(r: subprocess.CompletedProcess, code: ExitCode) -> str:
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    from pixdex.training.demo_data import generate

    out = tmp_path_factory.mktemp("demo") / "photos"
    generate(out, n=12, seed=11)
    return out


# ----------------------------------------------------------------------------- the table


def readme_exit_codes() -> dict[int, str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*`(\w+)`\s*\|", section, re.M)
    return {int(code): name for code, name in rows}


def test_the_readme_table_is_the_code_table():
    assert readme_exit_codes() == {int(c): c.name for c in ExitCode}


def test_the_readme_parser_sees_a_changed_row():
    text = "| code | name |\n|---|---|\n| 0 | `OK` | ran |\n| 4 | `NEW` | x |\n"
    assert re.findall(r"^\|\s*(\d+)\s*\|\s*`(\w+)`\s*\|", text, re.M) == [("0", "OK"), ("4", "NEW")]


# ----------------------------------------------------------------------------- each code


def test_usage_errors_and_bad_input_cannot_run(tmp_path):
    assert _cli("search", "x", "--no-such-option").returncode == ExitCode.CANNOT_RUN
    line = _one_line(_cli("index", tmp_path / "nowhere", "--store", tmp_path / "s"), ExitCode.CANNOT_RUN)
    assert line.startswith("pixdex: error: ")
    assert _cli("--version").returncode == ExitCode.OK


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_a_port_out_of_range_is_a_usage_error_not_a_traceback(port, photos, tmp_path):
    store = tmp_path / "store"
    assert _cli("index", photos, "--store", store, "--model", MODEL, "--json").returncode == 0
    r = _cli("serve", "--store", store, "--port", port)
    assert r.returncode == ExitCode.CANNOT_RUN and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "--port" in r.stderr


def test_ctrl_c_stops_serve_with_the_interrupted_code(photos, tmp_path):
    import signal
    import time

    store = tmp_path / "store"
    assert _cli("index", photos, "--store", store, "--model", MODEL, "--json").returncode == 0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pixdex", "serve", "--store", str(store), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert "serving" in proc.stdout.readline()  # listening: Ctrl-C now reaches serve_forever
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == ExitCode.INTERRUPTED and "stopped" in out and "Traceback" not in err, err


def test_a_second_indexer_on_a_locked_store_exits_locked(photos, tmp_path):
    from pixdex.storage.store import StoreLock

    store = tmp_path / "store"
    store.mkdir()
    lock = StoreLock(store)
    lock.acquire()  # what a running `pixdex index` holds
    try:
        r = _cli("index", photos, "--store", store, "--model", MODEL)
    finally:
        lock.release()
    assert "already running" in _one_line(r, ExitCode.LOCKED)


# ----------------------------------------------------------------------------- hints


def test_a_hint_names_the_given_store_and_works_as_shown(photos, tmp_path):
    store = tmp_path / "my store"  # a space: the hint must quote it
    line = _one_line(_cli("search", "a red circle", "--store", store), ExitCode.CANNOT_RUN)
    hint = HINT.search(line).group(1)
    assert hint == pixdex_command("index", "FOLDER", store_dir=store) and shlex.quote(str(store)) in hint
    # a new store: the model is the user's choice (the default one would be downloaded)
    r = _run_hint(hint, photos, ["--model", MODEL], env_extra={"PIXDEX_HOME": str(tmp_path / "elsewhere")})
    assert r.returncode == ExitCode.OK, r.stderr[-2000:]
    r = _cli("search", "a red circle", "--store", store, "--json")
    assert r.returncode == ExitCode.OK and len(json.loads(r.stdout)) == 12

    # an untagged store: `tags` suggests `tag` for that store, and it works
    r = _cli("tags", "--store", store)
    hint = HINT.search(r.stdout).group(1)
    assert r.returncode == ExitCode.OK and hint == pixdex_command("tag", store_dir=store)
    assert _run_hint(hint, photos).returncode == ExitCode.OK
    r = _cli("tags", "--store", store, "--json")
    assert r.returncode == ExitCode.OK and json.loads(r.stdout)


def test_the_default_store_hint_has_no_store_option(tmp_path):
    home = tmp_path / "home"
    line = _one_line(_cli("status", env_extra={"PIXDEX_HOME": str(home)}), ExitCode.CANNOT_RUN)
    assert HINT.search(line).group(1) == "pixdex index FOLDER"
    line = _one_line(_cli("status", "--store", home / "other"), ExitCode.CANNOT_RUN)
    assert HINT.search(line).group(1) == f"pixdex index FOLDER --store {home / 'other'}"


def test_status_suggests_a_command_that_repairs_what_it_reports(photos, tmp_path):
    store = tmp_path / "store"
    assert _cli("index", photos, "--store", store, "--model", MODEL, "--json").returncode == 0
    (store / "index.faiss").unlink()  # FAISS is derived: status says so and names the fix
    r = _cli("status", "--store", store)
    assert r.returncode == ExitCode.OK and "does not agree" in r.stdout, r.stdout
    hint = HINT.search(" ".join(r.stdout.split())).group(1)
    assert hint == pixdex_command("index", str(photos), store_dir=store)
    fixed = _run_hint(hint, photos)
    assert fixed.returncode == ExitCode.OK, fixed.stderr[-2000:]
    info = json.loads(_cli("status", "--store", store, "--json").stdout)
    assert info["faiss"]["agrees"] and info["indexed"] == 12


def test_the_retry_failed_hint_names_the_folders_and_retries_as_shown(photos, tmp_path):
    import shutil

    folder = tmp_path / "my photos"  # a space: the hint must quote it
    shutil.copytree(photos, folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    store = tmp_path / "store"
    assert _cli("index", folder, "--store", store, "--model", MODEL, "--json").returncode == 0
    r = _cli("index", folder, "--store", store)
    assert r.returncode == ExitCode.OK and "not tried again" in r.stdout, r.stdout
    hint = re.search(r"\((pixdex index .*?) tries them\)", " ".join(r.stdout.split())).group(1)
    assert "FOLDER" not in hint and shlex.quote(str(folder)) in hint and "--retry-failed" in hint
    retried = _run_hint(hint, folder, ["--json"])
    assert retried.returncode == ExitCode.OK, retried.stderr[-2000:]
    summary = json.loads(retried.stdout)
    assert (summary["failed"], summary["not_retried"]) == (1, 0)
    assert summary["failed_paths"][0]["path"] == str((folder / "broken.jpg").resolve())


def test_dedup_on_an_imported_store_suggests_indexing_its_folders_and_that_works(photos, tmp_path):
    src, store = tmp_path / "src", tmp_path / "imported"
    assert _cli("index", photos, "--store", src, "--model", MODEL, "--json").returncode == 0
    assert _cli("export", "--store", src, "--out", tmp_path / "exp").returncode == 0
    assert _cli("import", tmp_path / "exp", "--store", store).returncode == 0  # no copy hashes exported
    line = _one_line(_cli("dedup", "--store", store, "--tiers", "exact,copy"), ExitCode.CANNOT_RUN)
    hint = HINT.search(line).group(1).removesuffix(" to compute them, no re-encoding")
    assert hint == pixdex_command("index", str(photos.resolve()), store_dir=store)
    r = _run_hint(hint, photos, ["--json"])
    assert r.returncode == ExitCode.OK and json.loads(r.stdout)["encoded"] == 0, r.stderr[-2000:]
    r = _cli("dedup", "--store", store, "--tiers", "exact,copy", "--json")
    assert r.returncode == ExitCode.OK, r.stderr[-2000:]

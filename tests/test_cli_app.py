"""Every command's help: `-h` and `--help`, a usage line without type tags, every option described."""

import re
import subprocess
import sys

import pytest
import typer.main
from typer.testing import CliRunner

from pixdex import __version__
from pixdex.cli import app

runner = CliRunner()


def _commands(cmd=None, path=()):
    """(path, click command) for the app, every sub-app and every command, depth first."""
    cmd = cmd or typer.main.get_command(app)
    yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


ALL = list(_commands())
TYPE_TAG = re.compile(r"<[A-Za-z_\[\], |]+>")  # "<bool>", "<list[Path]>": a type, not a value's name


def _usage(text: str) -> str:
    return next(line for line in text.splitlines() if "Usage:" in line)


def test_the_tree_is_what_the_app_registers():
    names = {" ".join(p) for p, _ in ALL}
    assert {"", "index", "search", "status", "dataset", "dataset dedup"} <= names
    assert len(names) > 12


@pytest.mark.parametrize("path,cmd", ALL, ids=[" ".join(p) or "pixdex" for p, _ in ALL])
def test_every_option_and_argument_has_help_and_a_readable_name(path, cmd):
    ctx = typer.main.get_command(app).make_context("pixdex", ["--help"], resilient_parsing=True)
    for param in cmd.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        where = f"pixdex {' '.join(path)} {param.name}"
        assert (getattr(param, "help", None) or "").strip(), f"{where}: no help text"
        assert "<" not in (param.metavar or "") and "{" not in (param.metavar or ""), where


@pytest.mark.parametrize("flag", ["-h", "--help"])
@pytest.mark.parametrize("path,cmd", ALL, ids=[" ".join(p) or "pixdex" for p, _ in ALL])
def test_help_flags_and_clean_usage_lines(path, cmd, flag):
    r = runner.invoke(app, [*path, flag], terminal_width=200)
    assert r.exit_code == 0, r.output
    usage = _usage(r.output)
    assert usage.split("Usage:")[1].split()[: 1 + len(path)] == ["pixdex", *path], usage
    assert "<" not in usage and "{" not in usage, usage
    assert not TYPE_TAG.search(r.output), TYPE_TAG.search(r.output).group()
    for param in cmd.params:  # every option is listed (and so described, see above)
        if param.param_type_name == "option" and not param.hidden:
            assert param.opts[0] in r.output, (path, param.opts)


def test_usage_lines_name_arguments_as_click_does():
    assert "pixdex index [OPTIONS] PATHS..." in _usage(runner.invoke(app, ["index", "-h"]).output)
    assert "pixdex search [OPTIONS] [QUERY]" in _usage(runner.invoke(app, ["search", "-h"]).output)
    out = runner.invoke(app, ["search", "-h"], terminal_width=200).output
    assert re.search(r"-k\b.*--top|--top.*-k\b", out) and "--min-score" in out


def test_version_in_a_fresh_process():
    r = subprocess.run(
        [sys.executable, "-m", "pixdex", "--version"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and r.stdout.strip() == f"pixdex {__version__}", (r.stdout, r.stderr)

"""README.md says what the code does: the options of its command table exist, the install lines use one
torch pin, the browser-test set-up names the lookup the tests use, the demo model's vocabulary is the
generator's."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import typer.main

from pixdex.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _commands() -> dict[str, set[str]]:
    """'index' / 'dataset dedup' -> every option name of that command."""
    out: dict[str, set[str]] = {}

    def walk(cmd, path):
        if path:
            out[" ".join(path)] = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return out


def _table_rows() -> list[str]:
    section = README.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    return [line.split(" | ")[0] for line in section.splitlines() if line.startswith("| `pixdex ")]


def test_every_option_in_the_command_table_exists():
    commands = _commands()
    rows = _table_rows()
    assert len(rows) >= 15
    for row in rows:
        for usage in re.findall(r"`(pixdex [^`]*)`", row):
            words = usage.split()[1:]
            name = " ".join(words[:2]) if " ".join(words[:2]) in commands else words[0]
            assert name in commands, usage
            for opt in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", usage):
                assert opt in commands[name], f"{usage}: pixdex {name} has no {opt}"


def test_the_cpu_install_line_uses_the_same_pins_as_the_quick_start():
    pins = re.findall(r"pip install (torch==\S+ torchvision==\S+)", README)
    assert len(pins) >= 2 and len(set(pins)) == 1, pins
    cpu = re.search(r"pip install torch==\S+ torchvision==\S+ --index-url (\S+)", README)
    assert cpu and cpu.group(1) == "https://download.pytorch.org/whl/cpu"
    ci = (ROOT / ".ci" / "run").read_text()
    assert pins[0] in ci  # CI installs what the README says


def test_the_browser_set_up_names_what_the_tests_look_for():
    import conftest

    source = inspect.getsource(conftest.chromium_path)
    names = re.findall(r'environ\.get\("(\w+)"\)', source) + re.findall(r'which\("([\w-]+)"\)', source)
    assert len(names) >= 2, source
    section = README.split("**The browser tests**", 1)[1].split("\n\n", 1)[0]
    for name in names:
        assert name in section, name


@pytest.mark.parametrize("what", ["colours", "shapes"])
def test_the_demo_model_vocabulary_is_the_generators(what):
    from pixdex.training import demo_data

    m = re.search(r"knows (\d+) colours and (\d+) shapes", README)
    assert m, "README no longer says what pixdex-demo knows"
    n = int(m.group(1) if what == "colours" else m.group(2))
    assert n == len(demo_data.COLOURS if what == "colours" else demo_data.SHAPES)

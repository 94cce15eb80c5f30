"""The module paths and names the documentation cites exist in the tree.

``docs/ARCHITECTURE.md``, ``CONTRIBUTING.md``, ``README.md`` and ``docs/SECURITY.md`` name files
(``pixdex/storage/contract.py``) and dotted names (``pixdex.encoders.int8.speed_up``,
``pixdex.dataset.dedup``). Every file path must exist; every dotted name must resolve to a module (a
``.py`` file or a package) followed by at most a top-level name of it and, for a class, a name defined
in its body. Sources are read with ``ast``: nothing is imported, so the check is fast and torch-free.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("docs/ARCHITECTURE.md", "CONTRIBUTING.md", "README.md", "docs/SECURITY.md")

# Parts built in parallel and described in ARCHITECTURE.md before they are merged: names under these
# prefixes are accepted while the tree lacks them (remove an entry once its part is merged).
PENDING = ()

FILE_RE = re.compile(r"(?<![\w./-])pixdex/[\w/]+\.py\b")
NAME_RE = re.compile(r"(?<![\w./-])pixdex(?:\.[A-Za-z_]\w*)+")
# the store's database file and the name a damaged one is set aside under: files, not modules
NOT_NAMES = {"pixdex.db", "pixdex.db.damaged"}


def _pending(ref: str) -> bool:
    return any(ref == p or ref.startswith(p + ".") for p in PENDING)


@functools.cache
def _names(path: Path) -> tuple[frozenset, dict]:
    """(top-level names of a module, {class name: names defined in its body})."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top, classes = set(), {}

    def targets(node) -> list[str]:
        out = []
        for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
            out += [n.id for n in ast.walk(t) if isinstance(n, ast.Name)]
        return out

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            top.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            top.update(targets(node))
            if any(n == "__all__" for n in targets(node)) and isinstance(node.value, (ast.List, ast.Tuple)):
                top.update(e.value for e in node.value.elts if isinstance(e, ast.Constant))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            top.update((a.asname or a.name).split(".")[0] for a in node.names)
        if isinstance(node, ast.ClassDef):
            body = set()
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    body.add(item.name)
                elif isinstance(item, (ast.Assign, ast.AnnAssign)):
                    body.update(targets(item))
            classes[node.name] = frozenset(body)
    return frozenset(top), classes


def _module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def dotted_name_problem(name: str) -> str | None:
    """None when ``name`` resolves in the tree, else why not."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):  # the longest prefix that is a module
        module = _module_file(parts[:cut])
        if module is not None:
            break
    else:
        return "no such module"
    rest = parts[cut:]
    if not rest:
        return None
    if len(rest) > 2:
        return f"{'.'.join(rest)} is too deep to check in {module.relative_to(ROOT)}"
    top, classes = _names(module)
    if rest[0] not in top:
        return f"{module.relative_to(ROOT)} defines no {rest[0]!r}"
    if len(rest) == 2 and rest[1] not in classes.get(rest[0], ()):
        return f"{module.relative_to(ROOT)} has no {rest[0]}.{rest[1]}"
    return None


def problems(text: str) -> list[str]:
    """Every file path or dotted name in ``text`` that the tree lacks (parallel parts excepted)."""
    out = []
    for ref in sorted(set(FILE_RE.findall(text))):
        if not (ROOT / ref).is_file() and not _pending(ref):
            out.append(f"{ref}: no such file")
    for ref in sorted(set(NAME_RE.findall(text)) - NOT_NAMES):
        why = dotted_name_problem(ref)
        if why and not _pending(ref):
            out.append(f"{ref}: {why}")
    return out


@pytest.mark.parametrize("doc", DOCS)
def test_every_cited_module_path_and_name_exists(doc):
    text = (ROOT / doc).read_text(encoding="utf-8")
    assert problems(text) == []


def test_the_architecture_document_cites_modules_at_all():
    """The check above sees references (a broken pattern would find none and pass on anything)."""
    text = (ROOT / "docs/ARCHITECTURE.md").read_text(encoding="utf-8")
    assert len(set(FILE_RE.findall(text))) >= 5
    assert len(set(NAME_RE.findall(text))) >= 50


def test_missing_files_and_names_are_reported():
    text = (
        "`pixdex/images.py` `pixdex/nowhere.py` `pixdex.images.decode` `pixdex.images.no_such_function` "
        "`pixdex.no_such_package.x` `pixdex.storage.store.Store.open_readonly` `pixdex.storage.store.Store.nope` "
        "`pixdex.dataset.dedup` `pixdex.dedup.run.find_duplicates` `pixdex.db`"
    )
    assert problems(text) == [
        "pixdex/nowhere.py: no such file",
        "pixdex.images.no_such_function: pixdex/images.py defines no 'no_such_function'",
        "pixdex.no_such_package.x: pixdex/__init__.py defines no 'no_such_package'",
        "pixdex.storage.store.Store.nope: pixdex/storage/store.py has no Store.nope",
    ]

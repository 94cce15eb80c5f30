"""Label sets and prompt-template sets for zero-shot tags (``--labels`` / ``--templates``).

``--labels`` is one of:

- ``builtin:NAME``: a data file of this package (``builtin:everyday``, ``builtin:imagenet``; provenance
  in ``pixdex/tags/data/README.md``);
- a file: one class per line, ``label`` or ``label: synonym, synonym`` (the label is the class's first
  name, the synonyms are more names for it); blank lines and lines starting with ``#`` are skipped;
- anything else: labels separated by commas (``"cat,dog,car"``).

``--templates`` is ``builtin:openai`` (the CLIP paper's 80 ImageNet templates), ``builtin:simple``
(``a photo of a {}.``), ``builtin:selected`` (the 7 of the 80 that the CLIP authors selected),
``builtin:photo`` (a few photo templates, the default: cheap on a CPU), a file (one template per line,
``{}`` marks the label), or one template given inline (it must hold ``{}``).

A class named twice (ImageNet lists "missile" and "sunglasses" twice) is one class: its names are merged.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

from pixdex.encoders.zeroshot import PLACEHOLDER
from pixdex.errors import PixdexError

log = logging.getLogger(__name__)

BUILTIN = "builtin:"
BUILTIN_LABELS = {"everyday": "everyday.txt", "imagenet": "imagenet.txt"}
BUILTIN_TEMPLATES = {
    "openai": "templates_openai.txt",
    "simple": "templates_simple.txt",
    "selected": "templates_selected.txt",
    "photo": "templates_photo.txt",
}
DEFAULT_LABELS = "builtin:everyday"
DEFAULT_TEMPLATES = "builtin:photo"
MAX_LABEL_CHARS = 200


@dataclass(frozen=True)
class LabelSet:
    """Classes in order: ``labels[i]`` is shown and stored, ``names[i]`` are embedded (label first)."""

    spec: str
    labels: tuple[str, ...]
    names: tuple[tuple[str, ...], ...]

    def __len__(self) -> int:
        return len(self.labels)


def _data_text(name: str) -> str:
    return resources.files("pixdex.tags").joinpath("data", name).read_text(encoding="utf-8")


def _read_spec_file(spec: str, what: str) -> Optional[str]:
    """The text of the file ``spec`` names, None when ``spec`` is not a file."""
    path = Path(spec).expanduser()
    try:
        is_file = path.is_file()
    except (OSError, ValueError):  # a name too long or with a NUL byte: not a file
        return None
    if not is_file:
        return None
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise PixdexError(f"cannot read the {what} file {spec}: {e}") from e


def _builtin(spec: str, table: dict, what: str) -> Optional[str]:
    if not spec.startswith(BUILTIN):
        return None
    name = spec[len(BUILTIN) :].strip().lower()
    if name not in table:
        known = ", ".join(BUILTIN + k for k in table)
        raise PixdexError(f"unknown built-in {what} {spec!r} (known: {known})")
    return _data_text(table[name])


def _clean(name: str, where: str) -> str:
    name = " ".join(name.split())
    if len(name) > MAX_LABEL_CHARS:
        raise PixdexError(f"{where}: a label is longer than {MAX_LABEL_CHARS} characters")
    return name


def parse_labels(text: str, source: str = "labels") -> list[tuple[str, list[str]]]:
    """``[(label, [names...])]`` from a labels file's text (see the module doc)."""
    out: list[tuple[str, list[str]]] = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        where = f"{source}:{n}"
        label, sep, rest = s.partition(":")
        label = _clean(label, where)
        if not label:
            raise PixdexError(f"{where}: a line with synonyms needs a label before the ':'")
        syn = [_clean(x, where) for x in rest.split(",")] if sep else []
        out.append((label, [label] + [x for x in syn if x]))
    return out


def _merge(spec: str, classes: list[tuple[str, list[str]]]) -> LabelSet:
    merged: dict[str, list[str]] = {}
    shown: dict[str, str] = {}
    for label, names in classes:
        key = label.casefold()
        if key in merged:
            log.debug("%s: label %r appears twice; its names are merged", spec, label)
        shown.setdefault(key, label)
        bucket = merged.setdefault(key, [])
        bucket.extend(n for n in names if n not in bucket)
    if not merged:
        raise PixdexError(f"no labels in {spec!r}")
    return LabelSet(spec, tuple(shown.values()), tuple(tuple(v) for v in merged.values()))


def load_labels(spec: str) -> LabelSet:
    """The label set ``spec`` names (``builtin:NAME``, a file, or comma-separated labels)."""
    spec = (spec or "").strip()
    if not spec:
        raise PixdexError("--labels is empty")
    text = _builtin(spec, BUILTIN_LABELS, "label set")
    if text is None:
        text = _read_spec_file(spec, "labels")
    if text is not None:
        return _merge(spec, parse_labels(text, spec))
    if "/" in spec or spec.endswith(".txt"):
        raise PixdexError(f"no such labels file: {spec}")
    labels = [_clean(x, "--labels") for x in spec.split(",")]
    return _merge(spec, [(x, [x]) for x in labels if x])


def parse_templates(text: str, source: str = "templates") -> tuple[str, ...]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        t = line.strip()
        if not t or t.startswith("#"):
            continue
        if PLACEHOLDER not in t:
            raise PixdexError(f"{source}:{n}: template {t!r} has no {PLACEHOLDER} for the label")
        out.append(t)
    if not out:
        raise PixdexError(f"no templates in {source!r}")
    return tuple(dict.fromkeys(out))


def load_templates(spec: str) -> tuple[str, ...]:
    """The templates ``spec`` names (``builtin:NAME``, a file, or one template holding ``{}``)."""
    spec = (spec or "").strip()
    if not spec:
        raise PixdexError("--templates is empty")
    text = _builtin(spec, BUILTIN_TEMPLATES, "template set")
    if text is None:
        text = _read_spec_file(spec, "templates")
    if text is not None:
        return parse_templates(text, spec)
    if PLACEHOLDER in spec:
        return (spec,)
    raise PixdexError(
        f"--templates {spec!r}: not a built-in set, a file, nor a template with {PLACEHOLDER} for the label"
    )


def label_set_id(labels: LabelSet, templates: tuple[str, ...], model: dict) -> str:
    """What tags depend on: the classes, their names, the templates and the model's identity."""
    from pixdex.storage.contract import IDENTITY_KEYS

    doc = {
        "labels": [[label, list(names)] for label, names in zip(labels.labels, labels.names)],
        "templates": list(templates),
        "model": {k: model.get(k) for k in IDENTITY_KEYS},
    }
    blob = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]

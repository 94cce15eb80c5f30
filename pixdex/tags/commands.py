"""`pixdex classify` (image files, no store) and `pixdex tags` (the store's labels with counts)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from pixdex.errors import PixdexError
from pixdex.paths import pixdex_command
from pixdex.tags.labelsets import DEFAULT_TEMPLATES, load_labels, load_templates

log = logging.getLogger(__name__)

MAX_TOP = 1000
BATCH = 32


def classify_images(
    images: Sequence[str],
    labels: str,
    templates: str = DEFAULT_TEMPLATES,
    top: int = 5,
    model: Optional[str] = None,
    checkpoint: Optional[str] = None,
    device: str = "auto",
    encoder=None,
) -> list[dict]:
    """``[{"path", "labels": [{"label", "prob"}, ...]}]`` per image, most probable label first.

    Images are decoded as the indexer decodes them (:func:`pixdex.images.load_for_model`).
    ``encoder`` replaces loading ``model`` (tests)."""
    from pixdex.encoders.zeroshot import build_classifier
    from pixdex.images import DecodeError, load_for_model

    if not images:
        raise PixdexError("give at least one image file")
    if not 1 <= top <= MAX_TOP:
        raise PixdexError(f"--top must be between 1 and {MAX_TOP}")
    label_set = load_labels(labels)
    template_set = load_templates(templates)
    for f in images:
        if not Path(f).expanduser().is_file():
            raise PixdexError(f"no such image file: {f}")
    if encoder is None:
        from pixdex.encoders.encoder import load_encoder
        from pixdex.encoders.registry import DEFAULT_MODEL

        encoder = load_encoder(model or DEFAULT_MODEL, checkpoint=checkpoint, device=device)
    clf = build_classifier(encoder, label_set.labels, label_set.names, template_set)
    out: list[dict] = []
    for s in range(0, len(images), BATCH):
        chunk = list(images[s : s + BATCH])
        pixels = []
        for f in chunk:
            try:
                img = load_for_model(str(Path(f).expanduser()), encoder.preprocess)
            except (DecodeError, OSError, ValueError) as e:
                raise PixdexError(f"cannot decode image {f}: {e}") from e
            pixels.append(np.asarray(encoder.preprocess(img), dtype=np.float32))
        vecs = encoder.encode_images(np.stack(pixels))
        for f, ranked in zip(chunk, clf.top(vecs, top)):
            out.append({"path": str(f), "labels": [{"label": lab, "prob": round(p, 6)} for lab, p in ranked]})
    return out


def print_classified(results: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table("image", "label", "prob", show_edge=False, pad_edge=False)
    for r in results:
        for n, lab in enumerate(r["labels"]):
            table.add_row(Text(r["path"] if n == 0 else ""), Text(lab["label"]), f"{lab['prob']:.3f}")
    Console(soft_wrap=True).print(table)


def tag_counts(store_dir: Path) -> list[dict]:
    """``[{"label", "count"}]`` of the store's tags, most frequent first (no torch, no SQLAlchemy)."""
    from pixdex.search.store_view import StoreView

    view = StoreView(Path(store_dir))
    try:
        return [{"label": label, "count": n} for label, n in view.tag_counts()]
    finally:
        view.close()


def print_tag_counts(rows: list[dict], store_dir: Path) -> None:
    if not rows:
        sys.stdout.write(
            f"No tags in the store at {store_dir}; run: {pixdex_command('tag', store_dir=store_dir)}\n"
        )
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table("label", "images", show_edge=False, pad_edge=False)
    for r in rows:
        table.add_row(Text(r["label"]), str(r["count"]))
    Console(soft_wrap=True).print(table)

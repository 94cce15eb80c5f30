"""A demo-data image-caption dataset with planted rows of every ``pixdex dataset dedup`` label, and the
planted ground truth (plain helpers, no fixtures; used by tests/test_dataset_dedup.py and
bench/dataset_dedup_calibrate.py).

Base rows are ``pixdex demo-data`` images that are unrelated to each other: their objects' (colour,
shape) sets are not subsets of one another, share at most one object, and none if their colours are
the same (two demo images with the same
objects differ only in where they sit: the same picture for a semantic dedup), each with its full
caption. Every image of the set (fresh images and the evaluation split too) is unrelated in this sense. Planted after them (so ``keep="first"`` keeps the source):

- ``duplicate_pair``: a base image again (the same bytes, JPEG q40, or resized x0.75 / x1.5) with its
  caption again (identical, changed only in case and punctuation, or paraphrased);
- ``duplicate_image``: a base image again (same variants) with another caption of that image (demo-data
  gives each image captions that name single objects);
- ``duplicate_caption``: boilerplate captions, each on several fresh unrelated images (the first of
  each is the kept row; the others are the truth);
- ``mismatch``: fresh images in pairs carrying each other's captions;
- ``contaminated``: items of a separate evaluation split (``against.csv``) leaked into the dataset: the
  item's image (same bytes, JPEG q40, resized) with its caption (identical or case-changed).

A boilerplate caption describes no image either, so boilerplate rows are left out of the ``mismatch``
figures (neither counted right nor wrong): ``ignore["mismatch"]``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from PIL import Image

from pixdex.dataset.labels import normalize_caption

# Texts pixdex-demo tells apart (cosine < 0.6 between any two): most words outside the demo captions'
# vocabulary map close together in its text space ("Stock Photo" and "untitled" are at 0.98).
BOILERPLATE = (
    "Stock Photo",
    "click to enlarge",
    "Royalty-free illustration, download now",
    "an image of some shapes",
)
VARIANTS = ("same", "jpeg", "smaller", "larger")


def _signature(item: dict) -> tuple:
    return tuple(sorted((o["colour"], o["shape"]) for o in item["objects"]))


def _swap_partners(items: list, n: int) -> tuple[list, list]:
    """``n`` items in consecutive pairs sharing no colour and no shape (so that a swapped caption says
    nothing true of its new image), and the items left."""
    chosen, left, pool = [], [], list(items)
    while pool and len(chosen) < n:
        a = pool.pop(0)
        cols = {o["colour"] for o in a["objects"]}
        shapes = {o["shape"] for o in a["objects"]}
        k = next(
            (
                k
                for k, b in enumerate(pool)
                if not cols & {o["colour"] for o in b["objects"]}
                and not shapes & {o["shape"] for o in b["objects"]}
            ),
            None,
        )
        if k is None:
            left.append(a)
            continue
        chosen += [a, pool.pop(k)]
    assert len(chosen) == n, "too few distinct demo images for the swapped pairs"
    return chosen, left + pool


def reencode(data: bytes, variant: str) -> bytes:
    """The bytes of a copy: ``same``, ``jpeg`` (quality 40), ``smaller`` (x0.75), ``larger`` (x1.5)."""
    if variant == "same":
        return data
    im = Image.open(io.BytesIO(data)).convert("RGB")
    quality = 40 if variant == "jpeg" else 90
    if variant in ("smaller", "larger"):
        f = 0.75 if variant == "smaller" else 1.5
        im = im.resize((round(im.width * f), round(im.height * f)), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def caption_variant(caption: str, k: int) -> str:
    """The same caption again: identical, case and punctuation changed (equal once normalised), or a
    paraphrase (articles and the background phrase reworded)."""
    if k % 3 == 0:
        return caption
    if k % 3 == 1:
        return caption.upper() + "!"
    return (
        caption.replace("a small", "one small")
        .replace("a large", "one large")
        .replace(" on a ", " against a ")
    )


def build_planted(root: Path, seed: int, image_size: int = 128, n_base: int = 60) -> dict:
    """Write ``root/train.csv`` and ``root/against.csv`` (columns id, image, caption); return
    ``{"train", "against", "truth": {label: set of ids}, "ignore": {label: set of ids}, "rows": n}``."""
    from pixdex.training.demo_data import generate

    root = Path(root)
    pool = root / "pool"
    generate(pool, n=12 * n_base + 400, seed=seed, image_size=image_size)
    items = json.loads((pool / "objects.json").read_text())["images"]
    # unrelated images: no image's objects are a subset of another's, and no two share two objects
    # (pixdex-demo sees "a purple triangle and a purple circle" and the same plus a purple star as one)
    # and two with the same colours share no object (the tiny model reads colour far better than shape:
    # "a blue star and a blue square" and "a blue square and a blue cross" are cosine 0.96 apart)
    chosen_sigs: list[tuple[set, tuple]] = []
    fresh = []
    for it in items:
        sig = set(_signature(it))
        cols = (it["background"], tuple(sorted(c for c, _ in _signature(it))))
        if all(
            len(sig & o) <= (0 if cols == oc else 1) and not (sig <= o or o <= sig) for o, oc in chosen_sigs
        ):
            chosen_sigs.append((sig, cols))
            fresh.append(it)
    n_pair, n_img, n_boiler_imgs, n_swap, n_eval, n_leak = (
        n_base // 3,
        n_base // 3,
        4 * len(BOILERPLATE),
        n_base // 5 * 2,
        n_base // 2,
        n_base // 4,
    )
    need = n_base + n_boiler_imgs + n_swap + n_eval
    assert len(fresh) >= need, f"only {len(fresh)} distinct demo images, {need} needed"
    base, rest = fresh[:n_base], fresh[n_base:]
    boiler, rest = rest[:n_boiler_imgs], rest[n_boiler_imgs:]
    swap, rest = _swap_partners(rest, n_swap)
    evals = rest[:n_eval]
    assert len(evals) == n_eval, "too few distinct demo images for the evaluation split"
    copies = root / "copies"
    copies.mkdir(parents=True, exist_ok=True)
    truth: dict[str, set] = {k: set() for k in ("duplicate_pair", "duplicate_image", "duplicate_caption")}
    truth.update(mismatch=set(), contaminated=set())
    ignore: dict[str, set] = {"mismatch": set()}
    rows: list[tuple[str, str, str]] = []

    def add(image: str, caption: str, label: str | None = None) -> str:
        rid = f"r{len(rows):04d}"
        rows.append((rid, image, caption))
        if label:
            truth[label].add(rid)
        return rid

    def copy_of(item: dict, variant: str, tag: str) -> str:
        data = (pool / item["image"]).read_bytes()
        if variant == "same":
            return f"pool/{item['image']}"
        name = f"copies/{tag}-{Path(item['image']).stem}-{variant}.jpg"
        (root / name).write_bytes(reencode(data, variant))
        return name

    for it in base:
        add(f"pool/{it['image']}", it["caption"])
    for k in range(n_pair):
        it = base[k]
        add(copy_of(it, VARIANTS[k % 4], f"p{k}"), caption_variant(it["caption"], k), "duplicate_pair")
    # another caption of the same image: one that names one object of several (for a lone object it
    # would say what the full caption says), and no full caption of any image (pool or evaluation)
    full = {normalize_caption(it["caption"]) for it in items}
    with_alt = []
    for it in base[n_pair:]:
        alts = [c for c in it["captions"][1:] if normalize_caption(c) not in full]
        if len(it["objects"]) >= 2 and alts:
            with_alt.append((it, alts[0]))
    assert len(with_alt) >= n_img, "too few base images with a second caption"
    for k, (it, other) in enumerate(with_alt[:n_img]):
        add(copy_of(it, VARIANTS[k % 4], f"i{k}"), other, "duplicate_image")
    for k, it in enumerate(boiler):
        text = BOILERPLATE[k % len(BOILERPLATE)]
        rid = add(f"pool/{it['image']}", text, "duplicate_caption" if k >= len(BOILERPLATE) else None)
        ignore["mismatch"].add(rid)
    for k in range(0, n_swap, 2):
        a, b = swap[k], swap[k + 1]
        add(f"pool/{a['image']}", b["caption"], "mismatch")
        add(f"pool/{b['image']}", a["caption"], "mismatch")
    eval_rows = [(f"e{k:03d}", f"pool/{it['image']}", it["caption"]) for k, it in enumerate(evals)]
    for k in range(n_leak):
        it = evals[k]
        cap = it["caption"] if k % 2 == 0 else it["caption"].capitalize() + "."
        add(copy_of(it, VARIANTS[k % 4], f"e{k}"), cap, "contaminated")
    for name, table in (("train.csv", rows), ("against.csv", eval_rows)):
        with open(root / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "image", "caption"])
            w.writerows(table)
    return {
        "train": root / "train.csv",
        "against": root / "against.csv",
        "truth": truth,
        "ignore": ignore,
        "rows": len(rows),
    }


def per_label_figures(labels_by_key: dict[str, set], truth: dict, ignore: dict) -> dict:
    """``{label: {"precision", "recall", "tp", "fp", "fn"}}`` of the labels found against the truth."""
    out = {}
    for label, want in truth.items():
        skip = ignore.get(label, set())
        got = {k for k, ls in labels_by_key.items() if label in ls and k not in skip}
        want = want - skip
        tp, fp, fn = len(got & want), len(got - want), len(want - got)
        out[label] = {
            "precision": tp / (tp + fp) if tp + fp else 1.0,
            "recall": tp / (tp + fn) if tp + fn else 1.0,
            "tp": tp,
            "fp": fp,
            "fn": fn,
        }
    return out


def labels_by_key(table) -> dict[str, set]:
    """``{key: set of labels}`` from a labels table (pyarrow) returned by ``pixdex.dataset.dedup``."""
    keys = table.column("key").to_pylist()
    labels = table.column("labels").to_pylist()
    return {k: set(filter(None, (ls or "").split(";"))) for k, ls in zip(keys, labels)}

"""``pixdex tag``: zero-shot tags for every indexed image, from the stored vectors (no image re-encoded).

One run:

1. open the store for writing (the indexer's lock: tagging and indexing never interleave);
2. resolve the label set, templates, ``top`` and ``min_prob`` (given, else the store's last ones, else
   ``builtin:everyday`` / ``builtin:photo`` / :data:`DEFAULT_TOP` / :data:`DEFAULT_MIN_PROB`) and their id
   (:func:`pixdex.tags.labelsets.label_set_id`: labels + templates + model identity);
3. class embeddings from the store's numpy text tower (no torch), cached in ``tag_classes.safetensors``;
4. if the label set id, ``top`` or ``min_prob`` changed since the last run, every tag is dropped and
   recomputed; otherwise only images with an id above the last run's high-water mark are tagged (ids are
   never reused and only grow, a moved file keeps its id and vector, a changed file gets a new id);
5. per chunk of images: one matrix product with the class embeddings, the top ``top`` labels with
   probability >= ``min_prob`` written to ``tags`` together with the new high-water mark (one
   transaction per chunk: an interrupted run resumes where it stopped).

The state lives in the ``meta`` row ``tags``: ``{"label_set", "labels", "templates", "top", "min_prob",
"through_id", "n_labels", "n_templates"}``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np
from sqlalchemy import func, select

from pixdex.encoders.zeroshot import ZeroShotClassifier, build_classifier
from pixdex.errors import PixdexError
from pixdex.paths import pixdex_command
from pixdex.storage import contract as c
from pixdex.storage.schema import ImageRow, VectorRow
from pixdex.storage.store import Store
from pixdex.tags.labelsets import (
    DEFAULT_LABELS,
    DEFAULT_TEMPLATES,
    label_set_id,
    load_labels,
    load_templates,
)

log = logging.getLogger(__name__)

DEFAULT_TOP = 5
DEFAULT_MIN_PROB = 0.1
CHUNK = 8192  # images per matrix product and per transaction
MAX_TOP = 100

_INSERT = (
    f"INSERT INTO {c.T_TAGS} ({c.C_TAG_ID}, {c.C_TAG_LABEL}, {c.C_TAG_PROB}, {c.C_TAG_SET}) "
    "VALUES (?, ?, ?, ?)"
)


def _cached_classifier(store_dir: Path, set_id: str) -> Optional[ZeroShotClassifier]:
    from pixdex.encoders.numpy_text import read_safetensors

    path = store_dir / c.TAG_CLASSES_FILE
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            meta = json.loads(f.read(n)).get("__metadata__", {})
        if meta.get("label_set") != set_id:
            return None
        w = np.array(read_safetensors(path, mmap=False)["weights"], dtype=np.float32)
        bias = meta.get("logit_bias")
        return ZeroShotClassifier(
            json.loads(meta["labels"]),
            w,
            meta["kind"],
            float(meta["logit_scale"]),
            None if bias in (None, "", "None") else float(bias),
        )
    except (OSError, ValueError, KeyError, PixdexError) as e:
        log.warning("ignoring the cached class embeddings %s: %s", path, e)
        return None


def _save_classifier(store_dir: Path, set_id: str, clf: ZeroShotClassifier) -> None:
    from pixdex.encoders.numpy_text import write_safetensors

    meta = {
        "label_set": set_id,
        "labels": json.dumps(clf.labels, ensure_ascii=False),
        "kind": clf.kind,
        "logit_scale": repr(clf.logit_scale),
        "logit_bias": "" if clf.logit_bias is None else repr(clf.logit_bias),
    }
    try:
        write_safetensors(store_dir / c.TAG_CLASSES_FILE, {"weights": clf.weights}, metadata=meta)
    except OSError as e:
        log.warning("cannot cache the class embeddings in the store: %s", e)


def classifier_for_store(
    store: Store, labels_spec: str, templates_spec: str
) -> tuple[str, ZeroShotClassifier]:
    """``(label set id, classifier)`` for the store's model, from the cache or its numpy text tower."""
    from pixdex.encoders.textexport import open_text_encoder

    identity = store.identity
    if identity is None:
        raise PixdexError(
            f"the store at {store.dir} has no indexed images; run: "
            f"{pixdex_command('index', 'FOLDER', store_dir=store.dir)}"
        )
    labels = load_labels(labels_spec)
    templates = load_templates(templates_spec)
    set_id = label_set_id(labels, templates, identity)
    clf = _cached_classifier(store.dir, set_id)
    if clf is None:
        enc = open_text_encoder(store.dir, identity, store.get_meta(c.META_CHECKPOINT), need_logits=True)
        n_texts = sum(len(n) for n in labels.names) * len(templates)
        log.info("embedding %d label texts (%d labels x %d templates)", n_texts, len(labels), len(templates))
        clf = build_classifier(enc, labels.labels, labels.names, templates)
        if clf.dim != int(identity["dim"]):
            raise PixdexError(
                f"the text tower gives {clf.dim}-d vectors; the store holds {identity['dim']}-d"
            )
        _save_classifier(store.dir, set_id, clf)
    return set_id, clf


def _ids_after(store: Store, through: int) -> np.ndarray:
    with store.session() as s:
        q = (
            select(ImageRow.id)
            .join(VectorRow, VectorRow.image_id == ImageRow.id)
            .where(ImageRow.status == c.STATUS_OK, ImageRow.id > through)
            .order_by(ImageRow.id)
        )
        return np.fromiter((r[0] for r in s.execute(q)), dtype=np.int64)


def _max_id(store: Store) -> int:
    with store.session() as s:
        return int(s.scalar(select(func.max(ImageRow.id))) or 0)


def tag_with_store(
    store: Store,
    labels: Optional[str] = None,
    templates: Optional[str] = None,
    top: Optional[int] = None,
    min_prob: Optional[float] = None,
) -> dict:
    """Tag the images of an open writer ``store`` (see the module doc); returns the summary dict."""
    t0 = time.monotonic()
    state = store.get_meta(c.META_TAGS) or {}
    labels = labels or state.get("labels") or DEFAULT_LABELS
    templates = templates or state.get("templates") or DEFAULT_TEMPLATES
    top = int(top if top is not None else state.get("top", DEFAULT_TOP))
    min_prob = float(min_prob if min_prob is not None else state.get("min_prob", DEFAULT_MIN_PROB))
    if not 1 <= top <= MAX_TOP:
        raise PixdexError(f"--top must be between 1 and {MAX_TOP}")
    if not 0.0 <= min_prob <= 1.0:
        raise PixdexError("--min-prob must be between 0 and 1")
    set_id, clf = classifier_for_store(store, labels, templates)
    t_text = time.monotonic() - t0
    same = state.get("label_set") == set_id and state.get("top") == top and state.get("min_prob") == min_prob
    through = int(state.get("through_id", 0)) if same else 0
    high = _max_id(store)
    ids = _ids_after(store, through)
    new_state = {
        "label_set": set_id,
        "labels": labels,
        "templates": templates,
        "top": top,
        "min_prob": min_prob,
        "n_labels": len(clf.labels),
        "n_templates": len(load_templates(templates)),
        "through_id": through,
    }
    written = 0
    t1 = time.monotonic()
    with store.session() as s, s.begin():
        if not same:  # another label set, template set, model or cut: recompute everything
            s.connection().exec_driver_sql(f"DELETE FROM {c.T_TAGS}")
        store.set_meta(s, c.META_TAGS, new_state)
    for start in range(0, len(ids), CHUNK):
        chunk_ids, vecs = store.vectors(ids[start : start + CHUNK])
        idx, probs = clf.top_probs(vecs, top)
        keep = probs >= min_prob
        rows = [
            (int(chunk_ids[i]), clf.labels[j], float(p), set_id)
            for i, j, p in zip(np.nonzero(keep)[0], idx[keep], probs[keep])
        ]
        last = int(ids[min(start + CHUNK, len(ids)) - 1])
        new_state["through_id"] = high if start + CHUNK >= len(ids) else last
        with store.session() as s, s.begin():
            if rows:
                s.connection().exec_driver_sql(_INSERT, rows)
            store.set_meta(s, c.META_TAGS, new_state)
        written += len(rows)
    if new_state["through_id"] != high:
        new_state["through_id"] = high
        with store.session() as s, s.begin():
            store.set_meta(s, c.META_TAGS, new_state)
    return {
        "label_set": set_id,
        "labels": labels,
        "templates": templates,
        "n_labels": new_state["n_labels"],
        "n_templates": new_state["n_templates"],
        "top": top,
        "min_prob": min_prob,
        "recomputed": not same,
        "tagged": int(len(ids)),
        "tags_written": written,
        "elapsed_s": round(time.monotonic() - t0, 3),
        "timings_s": {"labels": round(t_text, 3), "tagging": round(time.monotonic() - t1, 3)},
    }


def tag_store(
    store_dir: Path,
    labels: Optional[str] = None,
    templates: Optional[str] = None,
    top: Optional[int] = None,
    min_prob: Optional[float] = None,
) -> dict:
    """``pixdex tag``: open the store for writing and tag it (see :func:`tag_with_store`)."""
    store_dir = Path(store_dir).expanduser()
    if not (store_dir / c.DB_FILE).is_file():
        raise PixdexError(
            f"no pixdex store at {store_dir} (index some photos first: "
            f"{pixdex_command('index', 'FOLDER', store_dir=store_dir)})"
        )
    store = Store.open_writer(store_dir)
    try:
        return tag_with_store(store, labels, templates, top, min_prob)
    finally:
        store.close()


def print_tag_summary(summary: dict) -> None:
    import sys

    sys.stdout.write(
        f"tagged {summary['tagged']} image(s) with {summary['labels']} ({summary['n_labels']} labels) x "
        f"{summary['templates']} ({summary['n_templates']} templates): {summary['tags_written']} tags "
        f"(top {summary['top']}, prob >= {summary['min_prob']}){'; all recomputed' if summary['recomputed'] else ''}"
        f" in {summary['elapsed_s']:.1f} s\n"
    )

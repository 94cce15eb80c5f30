"""Retrieval metrics: held-out recall@k both ways, and the demo set's colour x shape precision@k.

Recall: a retrieved item counts when its caption is identical to the query's own (captions such as
"a red circle" describe many images equally well, so the exact partner is not the only right answer).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)


def recall_at_k(
    image_emb: np.ndarray, text_emb: np.ndarray, captions: Sequence[str], ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """``{"i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"}`` for L2-normalised pairs ``image_emb[i] <-> text_emb[i]``."""
    n = len(captions)
    if image_emb.shape[0] != n or text_emb.shape[0] != n:
        raise ValueError("one caption per image and text embedding")
    # caption id per row: identical captions share an id
    ids: dict[str, int] = {}
    cap = np.asarray([ids.setdefault(c, len(ids)) for c in captions])
    sims = image_emb.astype(np.float32) @ text_emb.astype(np.float32).T
    out: dict[str, float] = {}
    for direction, s in (("i2t", sims), ("t2i", sims.T)):
        # rows: queries; a hit is a retrieved column whose caption id equals the query row's
        kmax = min(max(ks), n)
        top = np.argsort(-s, axis=1, kind="stable")[:, :kmax]
        hit = cap[top] == cap[:, None]
        for k in ks:
            out[f"{direction}_r{k}"] = float(hit[:, : min(k, n)].any(axis=1).mean())
    return out


def colour_shape_precision(encoder, folder, k: int = 5, batch_size: int = 256) -> dict[str, object]:
    """Precision@k of ``"a {colour} {shape}"`` queries over a demo set (``pixdex demo-data``) by plain cosine
    retrieval; an image counts when it holds a shape of that colour and kind. Also full-caption
    text->image recall@1/5 (the query's own image, or one with the identical caption)."""
    from pathlib import Path

    from pixdex.images import load_for_model
    from pixdex.training.demo_data import COLOURS, SHAPES, load_annotations

    meta = load_annotations(folder)
    records = meta["images"]
    folder = Path(folder)
    embs = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        x = np.stack(
            [encoder.preprocess(load_for_model(folder / r["image"], encoder.preprocess)) for r in chunk]
        )
        embs.append(encoder.encode_images(x))
    image_emb = np.concatenate(embs)
    contains = {
        (c, s): np.array([any(o["colour"] == c and o["shape"] == s for o in r["objects"]) for r in records])
        for c in COLOURS
        for s in SHAPES
    }
    queries = [(c, s) for c in COLOURS for s in SHAPES]
    q_emb = encoder.encode_texts([f"a {c} {s}" for c, s in queries])
    per_query: dict[str, float] = {}
    for (c, s), q in zip(queries, q_emb):
        top = np.argsort(-(image_emb @ q), kind="stable")[:k]
        per_query[f"{c} {s}"] = float(contains[(c, s)][top].mean())
    captions = [r["caption"] for r in records]
    text_emb = np.concatenate(
        [encoder.encode_texts(captions[i : i + batch_size]) for i in range(0, len(captions), batch_size)]
    )
    recall = recall_at_k(image_emb, text_emb, captions)
    values: list[float] = list(per_query.values())
    return {
        "precision_at_k": float(np.mean(values)),
        "k": k,
        "per_query": per_query,
        "worst": sorted(per_query.items(), key=lambda kv: kv[1])[:5],
        "caption_t2i_r1": recall["t2i_r1"],
        "caption_t2i_r5": recall["t2i_r5"],
        "caption_i2t_r1": recall["i2t_r1"],
        "caption_i2t_r5": recall["i2t_r5"],
        "n_images": len(records),
    }

"""Query parsing and combination: text, image and stored-image parts, weighted, into one vector.

A query is a list of parts. Each part is text, an image file, or the id of a stored image (``--like``),
with a weight (``2:sunset`` weighs 2; ``--minus`` negates the weight). The query vector is the weighted
sum of the parts' L2-normalised embeddings, renormalised. Nothing here imports torch: text goes through
the numpy text tower, and only image-file parts load the torch image encoder.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from pixdex.errors import PixdexError

log = logging.getLogger(__name__)

_WEIGHT_RE = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*:(.*)$", re.DOTALL)


@dataclass(frozen=True)
class QueryPart:
    kind: str  # text | image | like
    value: Union[str, int]
    weight: float = 1.0


def parse_weighted(spec: str) -> tuple[float, str]:
    """``"2:sunset"`` -> ``(2.0, "sunset")``; ``"sunset"`` -> ``(1.0, "sunset")``.

    Only a leading number followed by ``:`` is a weight; write ``1:10:30 meeting`` to search for text
    that itself starts with a number and a colon.
    """
    m = _WEIGHT_RE.match(spec)
    if m and m.group(2).strip():
        w = float(m.group(1))
        if not math.isfinite(w):
            raise PixdexError(f"query weight must be a finite number: {spec!r}")
        return w, m.group(2).strip()
    return 1.0, spec.strip()


def build_parts(
    query: Optional[str] = None,
    texts: Sequence[str] = (),
    images: Sequence[str] = (),
    like: Sequence[int] = (),
    minus: Sequence[str] = (),
) -> list[QueryPart]:
    """Turn the CLI's options into query parts (the positional query is plain text, unweighted)."""
    parts: list[QueryPart] = []
    if query is not None:
        if not query.strip():
            raise PixdexError("the text query is empty")
        parts.append(QueryPart("text", query.strip(), 1.0))
    for spec in texts:
        w, t = parse_weighted(spec)
        if not t:
            raise PixdexError("--text needs some text")
        parts.append(QueryPart("text", t, w))
    for spec in images:
        w, f = parse_weighted(spec)
        if not f:
            raise PixdexError("--image needs a file")
        parts.append(QueryPart("image", f, w))
    for i in like:
        parts.append(QueryPart("like", int(i), 1.0))
    for spec in minus:
        w, t = parse_weighted(spec)
        if not t:
            raise PixdexError("--minus needs some text")
        parts.append(QueryPart("text", t, -w))
    if not parts:
        raise PixdexError("give a query: TEXT, --text, --image or --like")
    if all(p.weight == 0 for p in parts):
        raise PixdexError("every query part has weight 0")
    if all(p.weight <= 0 for p in parts):
        raise PixdexError("a query needs at least one part with a positive weight (--minus only subtracts)")
    return parts


def normalize(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, np.float32(1e-12))


def combine(weights: Sequence[float], vectors: np.ndarray) -> np.ndarray:
    """Weighted sum of the L2-normalised ``vectors`` (P, D), renormalised to unit length."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(weights) or vectors.shape[0] == 0:
        raise PixdexError("query parts and their embeddings do not match")
    q = np.asarray(weights, dtype=np.float32) @ normalize(vectors)
    n = float(np.linalg.norm(q))
    if not math.isfinite(n) or n < 1e-6:
        raise PixdexError("the query parts cancel out (their weighted sum is zero)")
    return (q / n).astype(np.float32)


def encode_parts(
    parts: Sequence[QueryPart],
    encode_texts: Callable[[list[str]], np.ndarray],
    encode_image_files: Callable[[list[str]], np.ndarray],
    stored_vectors: Callable[[list[int]], np.ndarray],
) -> np.ndarray:
    """Embed every part (each kind in one batch, only the kinds present) and combine them."""
    dim_vectors: list[Optional[np.ndarray]] = [None] * len(parts)
    for kind, fn in (("text", encode_texts), ("image", encode_image_files), ("like", stored_vectors)):
        idx = [i for i, p in enumerate(parts) if p.kind == kind]
        if not idx:
            continue
        vecs = np.asarray(fn([parts[i].value for i in idx]), dtype=np.float32)
        for j, i in enumerate(idx):
            dim_vectors[i] = vecs[j]
    dims = {v.shape[-1] for v in dim_vectors}
    if len(dims) != 1:
        raise PixdexError(f"query parts have different embedding sizes {sorted(dims)}")
    return combine([p.weight for p in parts], np.stack(dim_vectors))

"""Zero-shot classification with prompt-template ensembles (numpy; no torch import).

A class has one or more names (``"receipt"``, ``"till receipt"``); every name is put into every template
(``"a photo of a {}."``, ``{}`` marks the name), the texts are embedded and L2-normalised, and the class
embedding is their mean, renormalised: open_clip's ``build_zero_shot_classifier`` (CLIP paper, sec. 3.1.4),
with several names per class averaged like extra templates.

Probabilities use the model's own learned temperature ``exp(logit_scale)`` (100 for the released CLIP
models) on the cosines of unit image vectors with the class embeddings:

- CLIP: ``softmax(exp(logit_scale) * cos)`` over the classes (they compete: one image, one class);
- SigLIP: ``sigmoid(exp(logit_scale) * cos + logit_bias)`` per class, as SigLIP is trained (a label is
  present or not, independently of the others).

``encode_texts`` is any callable ``list[str] -> (N, D)`` unit vectors: the torch :class:`Encoder` or the
store's numpy text tower (:class:`pixdex.encoders.textexport.TextQueryEncoder`); both expose ``kind``,
``logit_scale`` and ``logit_bias`` (:func:`logit_params`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

from pixdex.errors import PixdexError

log = logging.getLogger(__name__)

KINDS = ("clip", "siglip")
PLACEHOLDER = "{}"
TEXT_BATCH = 256  # texts per call of the text tower


def format_template(template: str, name: str) -> str:
    """``template`` with every ``{}`` replaced by ``name`` (no ``str.format``: names may hold braces)."""
    return template.replace(PLACEHOLDER, name)


def class_embeddings(
    encode_texts: Callable[[list[str]], np.ndarray],
    classes: Sequence[Sequence[str]],
    templates: Sequence[str],
    batch_size: int = TEXT_BATCH,
    progress: Optional[Callable[[int, int], None]] = None,
) -> np.ndarray:
    """``(C, D)`` float32 unit class embeddings: per class, the mean of the L2-normalised embeddings of
    every (name, template) text, renormalised. ``progress(done, total)`` is called after each batch."""
    if not classes:
        raise PixdexError("no labels to classify with")
    if not templates:
        raise PixdexError("no templates to classify with")
    for t in templates:
        if PLACEHOLDER not in t:
            raise PixdexError(f"template {t!r} has no {PLACEHOLDER} for the label")
    texts: list[str] = []
    owner: list[int] = []
    for c, names in enumerate(classes):
        if not names:
            raise PixdexError(f"label {c} has no name")
        for name in names:
            for t in templates:
                texts.append(format_template(t, name))
                owner.append(c)
    sums: Optional[np.ndarray] = None
    owner_arr = np.asarray(owner, dtype=np.int64)
    for s in range(0, len(texts), batch_size):
        emb = np.asarray(encode_texts(texts[s : s + batch_size]), dtype=np.float32)
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), np.float32(1e-12))
        if sums is None:
            sums = np.zeros((len(classes), emb.shape[1]), dtype=np.float64)
        np.add.at(sums, owner_arr[s : s + len(emb)], emb)
        if progress is not None:
            progress(min(s + batch_size, len(texts)), len(texts))
    assert sums is not None
    counts = np.bincount(owner_arr, minlength=len(classes)).astype(np.float64)[:, None]
    mean = sums / counts
    out = mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(out, dtype=np.float32)


def logit_params(encoder) -> tuple[str, float, Optional[float]]:
    """``(kind, logit_scale, logit_bias)`` of a text encoder (torch Encoder or numpy TextQueryEncoder)."""
    kind = getattr(encoder, "kind", None)
    scale = getattr(encoder, "logit_scale", None)
    bias = getattr(encoder, "logit_bias", None)
    if kind not in KINDS or scale is None or (kind == "siglip" and bias is None):
        raise PixdexError("this text encoder does not know its model's temperature (logit_scale)")
    return kind, float(scale), None if bias is None else float(bias)


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=1, keepdims=True)
    return x


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (np.float32(0.5) * (np.float32(1.0) + np.tanh(np.float32(0.5) * x))).astype(np.float32)


@dataclass
class ZeroShotClassifier:
    """Class embeddings + the model's temperature: ``probs(image_vectors)`` for unit image vectors."""

    labels: list[str]
    weights: np.ndarray  # (C, D) float32 unit rows
    kind: str = "clip"
    logit_scale: float = float(np.log(100.0))
    logit_bias: Optional[float] = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PixdexError(f"unknown classifier kind {self.kind!r} (clip or siglip)")
        if self.kind == "siglip" and self.logit_bias is None:
            raise PixdexError("a SigLIP classifier needs its logit_bias")
        self.weights = np.ascontiguousarray(self.weights, dtype=np.float32)
        if self.weights.ndim != 2 or self.weights.shape[0] != len(self.labels):
            raise PixdexError("classifier weights do not match its labels")

    @property
    def dim(self) -> int:
        return int(self.weights.shape[1])

    def logits(self, image_vectors: np.ndarray) -> np.ndarray:
        x = np.asarray(image_vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise PixdexError(f"image vectors of shape {x.shape} for a {self.dim}-d classifier")
        out = (x @ self.weights.T) * np.float32(np.exp(self.logit_scale))
        if self.kind == "siglip":
            out += np.float32(self.logit_bias)
        return out

    def probs(self, image_vectors: np.ndarray) -> np.ndarray:
        """``(N, C)`` probabilities: softmax over classes (CLIP) or a sigmoid per class (SigLIP)."""
        z = self.logits(image_vectors)
        return _softmax(z) if self.kind == "clip" else _sigmoid(z)

    def top_probs(self, image_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, probs)`` of each image's ``k`` most probable classes, most probable first: the
        top-k of the logits (the same order), probabilities computed for those alone."""
        z = self.logits(image_vectors)
        idx, zt = top_k(z, k)
        if self.kind == "siglip":
            return idx, _sigmoid(zt)
        m = z.max(axis=1, keepdims=True)
        z -= m
        np.exp(z, out=z)
        return idx, np.exp(zt - m) / z.sum(axis=1, keepdims=True)

    def top(
        self, image_vectors: np.ndarray, k: int = 5, min_prob: float = 0.0
    ) -> list[list[tuple[str, float]]]:
        """Per image, up to ``k`` ``(label, prob)`` with ``prob >= min_prob``, most probable first."""
        idx, p = self.top_probs(image_vectors, k)
        return [
            [(self.labels[j], float(q)) for j, q in zip(ri, rp) if q >= min_prob] for ri, rp in zip(idx, p)
        ]


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, values)`` of the ``k`` largest entries of each row, largest first (ties: lower index)."""
    n, c = probs.shape
    k = max(0, min(int(k), c))
    if k == 0 or n == 0:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0), probs.dtype)
    part = np.argpartition(probs, c - k, axis=1)[:, c - k :] if k < c else np.tile(np.arange(c), (n, 1))
    vals = np.take_along_axis(probs, part, axis=1)
    order = np.lexsort((part, -vals), axis=-1)
    idx = np.take_along_axis(part, order, axis=1)
    return idx, np.take_along_axis(vals, order, axis=1)


def build_classifier(
    encoder,
    labels: Sequence[str],
    classes: Sequence[Sequence[str]],
    templates: Sequence[str],
    progress: Optional[Callable[[int, int], None]] = None,
) -> ZeroShotClassifier:
    """A classifier for ``labels`` (class ``i`` named by ``classes[i]``) with ``encoder``'s text tower
    and temperature."""
    kind, scale, bias = logit_params(encoder)
    w = class_embeddings(encoder.encode_texts, classes, templates, progress=progress)
    return ZeroShotClassifier(list(labels), w, kind, scale, bias)

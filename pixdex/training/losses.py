"""Contrastive losses for image-text training, each owning its learnable temperature.

- ``ClipLoss``: symmetric InfoNCE (cross-entropy over the rows and over the columns of the
  ``scale * image @ text.T`` logits). Learnable ``logit_scale`` (log of the inverse temperature),
  initialised to ``log(1 / 0.07)`` and clamped to ``<= ln(100)`` after each optimizer step.
- ``SigLipLoss``: the sigmoid loss over all N x N pairs (the diagonal is positive, everything else
  negative), summed and divided by N. Learnable ``logit_scale`` ``t`` (init ``log 10``) and
  ``logit_bias`` ``b`` (init ``-10``).

Both take an optional ``positives`` matrix: ``positives[i, j]`` is true when text ``j`` describes image
``i`` as well as its own (identical captions in one batch, e.g. two images both captioned "a red
circle"); such pairs are not pushed apart. InfoNCE then spreads its target evenly over a row's
positives (which for identical text features gives the textbook value: InfoNCE already splits between
equal logits), the sigmoid loss labels them positive (the textbook one would call them negatives).
Without it (or with the identity) both are the textbook losses.

Features are expected L2-normalised (the trainer normalises). Both losses take an optional
``logit_scale`` / ``logit_bias`` override so that they can be checked against other implementations
with given values.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

CLIP_INIT_LOGIT_SCALE = math.log(1 / 0.07)
SIGLIP_INIT_LOGIT_SCALE = math.log(10.0)
SIGLIP_INIT_LOGIT_BIAS = -10.0
MAX_LOGIT_SCALE = math.log(100.0)


class ClipLoss(nn.Module):
    """Symmetric InfoNCE with a learnable ``logit_scale`` (``exp`` of it multiplies the cosines)."""

    def __init__(
        self, init_logit_scale: float = CLIP_INIT_LOGIT_SCALE, max_logit_scale: float = MAX_LOGIT_SCALE
    ):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.logit_bias = None
        self.max_logit_scale = float(max_logit_scale)

    def logits(
        self, image_features: torch.Tensor, text_features: torch.Tensor, scale: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``(N_images, N_texts)`` logits: ``scale * image @ text.T`` (``scale`` = exp(logit_scale))."""
        if scale is None:
            scale = self.logit_scale.exp()
        return scale * image_features @ text_features.T

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        scale: Optional[torch.Tensor] = None,
        positives: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Mean of the image->text and text->image cross-entropies; the i-th image matches the i-th text
        (and, with ``positives``, every text marked there, the target split evenly among them)."""
        _check_pair(image_features, text_features)
        logits = self.logits(image_features, text_features, scale)
        if positives is None:
            labels = torch.arange(logits.shape[0], device=logits.device)
            return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        target = _positive_matrix(positives, logits).to(logits.dtype)
        rows = target / target.sum(dim=1, keepdim=True)
        cols = target.T / target.T.sum(dim=1, keepdim=True)
        return (F.cross_entropy(logits, rows) + F.cross_entropy(logits.T, cols)) / 2

    @torch.no_grad()
    def clamp_(self) -> None:
        """Keep ``logit_scale`` in ``[0, ln 100]`` (call after each optimizer step)."""
        self.logit_scale.clamp_(0.0, self.max_logit_scale)

    def temperature(self) -> float:
        return float(1.0 / self.logit_scale.detach().exp())


class SigLipLoss(nn.Module):
    """Sigmoid loss over all pairs with a learnable scale ``t`` (``logit_scale``) and bias ``b``."""

    def __init__(
        self,
        init_logit_scale: float = SIGLIP_INIT_LOGIT_SCALE,
        init_logit_bias: float = SIGLIP_INIT_LOGIT_BIAS,
        max_logit_scale: float = MAX_LOGIT_SCALE,
    ):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(init_logit_bias)))
        self.max_logit_scale = float(max_logit_scale)

    def logits(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        scale: Optional[torch.Tensor] = None,
        bias: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if scale is None:
            scale = self.logit_scale.exp()
        if bias is None:
            bias = self.logit_bias
        return scale * image_features @ text_features.T + bias

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        scale: Optional[torch.Tensor] = None,
        bias: Optional[torch.Tensor] = None,
        positives: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``-sum(log sigmoid(z_ij * logit_ij)) / N`` with ``z_ii = 1`` (and ``z_ij = 1`` where
        ``positives`` says so) and ``z_ij = -1`` otherwise."""
        _check_pair(image_features, text_features)
        logits = self.logits(image_features, text_features, scale, bias)
        n = logits.shape[0]
        if positives is None:
            signs = 2 * torch.eye(n, device=logits.device, dtype=logits.dtype) - 1
        else:
            signs = 2 * _positive_matrix(positives, logits).to(logits.dtype) - 1
        return -F.logsigmoid(signs * logits).sum() / n

    @torch.no_grad()
    def clamp_(self) -> None:
        """Keep ``t`` in ``[0, ln 100]``; ``b`` is free."""
        self.logit_scale.clamp_(0.0, self.max_logit_scale)

    def temperature(self) -> float:
        return float(1.0 / self.logit_scale.detach().exp())


class TrainingPair(nn.Module):
    """The model's two towers and the loss as one module (what ``DistributedDataParallel`` wraps, so the
    loss's temperature is kept in step across processes too): ``forward(images, ids)`` gives the
    L2-normalised fp32 features the loss takes (the towers under autocast when ``amp_dtype`` is set)."""

    def __init__(self, model: nn.Module, loss: nn.Module, amp_dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.model = model
        self.loss = loss
        self.amp_dtype = amp_dtype

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type="cuda", dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            ie, te = self.model.encode_image(images), self.model.encode_text(ids)
        # the loss in fp32, outside autocast
        return F.normalize(ie.float(), dim=-1), F.normalize(te.float(), dim=-1)


def make_loss(
    kind: str, init_logit_scale: Optional[float] = None, init_logit_bias: Optional[float] = None
) -> nn.Module:
    """``clip`` or ``siglip``; ``None`` initial values take each loss's defaults."""
    from pixdex.errors import PixdexError

    kind = (kind or "").lower()
    if kind == "clip":
        return ClipLoss(CLIP_INIT_LOGIT_SCALE if init_logit_scale is None else init_logit_scale)
    if kind == "siglip":
        return SigLipLoss(
            SIGLIP_INIT_LOGIT_SCALE if init_logit_scale is None else init_logit_scale,
            SIGLIP_INIT_LOGIT_BIAS if init_logit_bias is None else init_logit_bias,
        )
    raise PixdexError(f"unknown loss {kind!r} (expected clip or siglip)")


def same_caption_matrix(token_ids: torch.Tensor) -> torch.Tensor:
    """``(N, N)`` bool: rows ``i`` and ``j`` of ``token_ids`` are the same caption."""
    return (token_ids[:, None, :] == token_ids[None, :, :]).all(dim=-1)


def _positive_matrix(positives: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    if positives.shape != logits.shape:
        raise ValueError(f"positives must be {tuple(logits.shape)}, got {tuple(positives.shape)}")
    eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    return positives.to(device=logits.device, dtype=torch.bool) | eye  # a pair always matches itself


def _check_pair(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    if image_features.ndim != 2 or image_features.shape != text_features.shape:
        raise ValueError(
            f"image and text features must be two (N, D) tensors of the same shape, "
            f"got {tuple(image_features.shape)} and {tuple(text_features.shape)}"
        )

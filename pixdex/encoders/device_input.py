"""The image tower's input step on its device: uint8 pixels in, normalised float32 out; precision and
batch size for the device.

The decode workers ship each image as the uint8 ``(S, S, 3)`` array of the resized, cropped pixels
(:meth:`pixdex.encoders.preprocess.Preprocessor.pixels`: 4x less to move than float32, and a CUDA copy
from pinned memory runs without a staging copy). Float conversion and ``(x / 255 - mean) / std`` happen
here, on the device, with the same float32 operations in the same order as
:meth:`~pixdex.encoders.preprocess.Preprocessor.normalize`, so the model sees the same numbers.

- :class:`DeviceInput`: ``to_model(batch)`` for a float32 ``(N, 3, S, S)`` or uint8 ``(N, S, S, 3)``
  batch (numpy or torch); on CUDA through a reused pinned host buffer and a non-blocking copy.
- :func:`autocast_dtype`: the reduced precision an encoder runs in on its device (bfloat16 on CUDA,
  float16 where bfloat16 is not supported; none on CPU); ``PIXDEX_AMP`` = ``0`` / ``bf16`` / ``fp16``.
- :func:`auto_batch_size`: a batch size for the device (32 on CPU; on CUDA from free memory).
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)

CPU_BATCH = 32
MIN_CUDA_BATCH = 32
MAX_CUDA_BATCH = 1024
CUDA_MEMORY_SHARE = 0.5  # of the free memory, for one batch's activations


def autocast_dtype(device: str, setting: Optional[str] = None):
    """The autocast dtype for ``device``: None (float32) on CPU and when ``setting`` (default
    ``$PIXDEX_AMP``) is ``0``/``off``/``fp32``; on CUDA bfloat16 where supported, else float16.
    ``bf16`` / ``fp16`` force one (``bf16`` also on CPU, where torch autocasts it too)."""
    import torch

    setting = (setting if setting is not None else os.environ.get("PIXDEX_AMP", "auto")).lower()
    if setting in ("0", "off", "fp32", "float32", "exact"):
        return None
    if setting in ("bf16", "bfloat16"):
        return torch.bfloat16
    if setting in ("fp16", "float16"):
        return torch.float16
    if not str(device).startswith("cuda"):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _activation_bytes(config) -> int:
    """A generous estimate of one image's peak activation memory in the image tower (16-bit)."""
    v = config.vision
    s = int(config.image_size)
    if v.kind in ("vit", "siglip"):
        tokens = (s // int(v.patch_size)) ** 2 + 1
        width = int(v.width)
        hidden = int(width * float(v.mlp_ratio))
        per_layer = tokens * (6 * width + 2 * hidden) + 2 * int(v.heads) * tokens * tokens
        return 2 * per_layer + 3 * s * s * 6  # 16-bit activations; uint8 + float32 input
    return 3 * s * s * 4 * 96  # ResNet: its widest stage holds about 96 input-sized float maps


def auto_batch_size(config, device: str) -> int:
    """The batch size for ``device``: :data:`CPU_BATCH` on CPU; on CUDA, what fits in
    :data:`CUDA_MEMORY_SHARE` of the free memory (a power of two between :data:`MIN_CUDA_BATCH` and
    :data:`MAX_CUDA_BATCH`)."""
    if not str(device).startswith("cuda"):
        return CPU_BATCH
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    n = int(free * CUDA_MEMORY_SHARE) // max(1, _activation_bytes(config))
    batch = MIN_CUDA_BATCH
    while batch * 2 <= min(n, MAX_CUDA_BATCH):
        batch *= 2
    log.info("batch size %d for %s (%.1f GiB free)", batch, device, free / 2**30)
    return batch


class DeviceInput:
    """Moves image batches to ``device`` and normalises uint8 pixels there (see the module doc)."""

    def __init__(self, device: str, mean, std, image_size: int):
        import torch

        self.device = torch.device(device)
        self.size = int(image_size)
        m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
        s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
        self.mean = torch.from_numpy(m).to(self.device)
        self.std = torch.from_numpy(s).to(self.device)
        # a tensor, not a Python number: CUDA divides by a host scalar as a multiplication by its
        # reciprocal, which can differ from numpy's division in the last bit
        self.full = torch.full((1, 1, 1, 1), 255.0, dtype=torch.float32, device=self.device)
        self._host = None  # pinned uint8 buffer, reused (CUDA only)

    @property
    def pinned(self) -> bool:
        return self.device.type == "cuda"

    def _staged(self, x):
        """``x`` (uint8, CPU) in the pinned host buffer, grown when needed."""
        import torch

        n = x.shape[0]
        if self._host is None or self._host.shape[0] < n or self._host.shape[1:] != x.shape[1:]:
            self._host = torch.empty((max(n, 1), *x.shape[1:]), dtype=torch.uint8, pin_memory=True)
        host = self._host[:n]
        host.copy_(x)
        return host

    def check(self, shape: tuple, uint8: bool) -> bool:
        s = self.size
        return len(shape) == 4 and tuple(shape[1:]) == ((s, s, 3) if uint8 else (3, s, s))

    def to_model(self, batch):
        """A batch of preprocessed images -> float32 ``(N, 3, S, S)`` on the device. ``batch``: float32
        ``(N, 3, S, S)`` (normalised) or uint8 ``(N, S, S, 3)`` (the resized pixels), numpy or torch."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch)) if isinstance(batch, np.ndarray) else batch
        if x.dtype != torch.uint8:
            return x.to(self.device, torch.float32, non_blocking=True)
        if self.pinned and x.device.type == "cpu":
            # the buffer is reused: this copy ends before the next batch, as the caller reads the
            # result back (a synchronising copy) before it stages another batch
            x = self._staged(x)
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x.div_(self.full)
        x.sub_(self.mean)
        x.div_(self.std)
        return x

"""Faster CPU inference for the ViT image tower: int8 dynamic quantisation of its linear layers.

On a CPU without fast bf16 (a 2-core AVX2 laptop), a ViT-B/32 spends ~95% of its time in the four
linear layers of each block (qkv, out, fc, proj). fbgemm's dynamic int8 GEMM (weights quantised per
output channel once, activations per batch on the fly, ``reduce_range`` for AVX2) runs them 1.5-2x
faster. Everything else (patch embedding, LayerNorms, attention, GELU) stays float32. Activation scales are
per batch, so an image's int8 embedding varies slightly (cosine > 0.999) with its batch-mates.

Quantisation must not change what a store holds: :class:`QuantizedViT` checks itself on the first real
batch it sees (int8 vs float32 on up to 8 of its images) and falls back to float32 for good if any embedding
is below :data:`MIN_COSINE`. Only used on CPU; ``PIXDEX_FAST=0`` turns it off.

Also: :func:`cpu_threads` picks the torch thread count for a run (tiny test models run faster on one
thread than on two busy cores) and restores it afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Optional

log = logging.getLogger(__name__)

MIN_COSINE = 0.995  # per image, int8 vs float32, on the first batch (the bar is 0.99: keep a margin)
MIN_WIDTH = 256  # narrower towers gain nothing from int8 GEMMs
CHECK_IMAGES = 8  # images of the first batch encoded both ways for the check


def enabled() -> bool:
    return os.environ.get("PIXDEX_FAST", "1").strip().lower() not in ("0", "false", "no", "off")


def _is_plain_vit(visual) -> bool:
    from pixdex.encoders.vit import VisionTransformer

    return isinstance(visual, VisionTransformer) and visual.transformer.width >= MIN_WIDTH


def speed_up(encoder) -> bool:
    """Swap the encoder's ViT image tower for its int8 twin when on CPU. Returns True when swapped."""
    model = getattr(encoder, "model", None)
    visual = getattr(model, "visual", None)
    if (
        not enabled()
        or str(getattr(encoder, "device", "cpu")) != "cpu"
        or visual is None
        or is_quantized(visual)
        or not _is_plain_vit(visual)
    ):
        return False
    try:
        model.visual = QuantizedViT(visual)
    except (RuntimeError, AttributeError) as e:  # no fbgemm/x86 engine in this torch build
        log.info("int8 image tower unavailable (%s); using float32", e)
        return False
    log.info(
        "image tower: int8 dynamic quantisation of %d linear layers (checked on the first batch)",
        4 * len(visual.transformer.resblocks),
    )
    return True


def _engine() -> str:
    import torch

    engines = torch.backends.quantized.supported_engines
    for e in ("x86", "fbgemm"):
        if e in engines:
            return e
    raise RuntimeError(f"no x86/fbgemm quantized engine (have {engines})")


def _pack(weight, bias):
    """Per-output-channel symmetric int8 weights, prepacked for fbgemm's dynamic linear."""
    import torch

    w = weight.detach().float().contiguous()
    scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-8).double()
    zeros = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # quantized tensor creation is deprecated but still the fbgemm path
        warnings.simplefilter("ignore")
        qw = torch.quantize_per_channel(w, scales, zeros, axis=0, dtype=torch.qint8)
        return torch.ops.quantized.linear_prepack(
            qw, None if bias is None else bias.detach().float().contiguous()
        )


def _make_module():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class _QuantizedViT(nn.Module):
        def __init__(self, visual):
            super().__init__()
            torch.backends.quantized.engine = _engine()
            self.float_visual = visual
            self.blocks = []
            for blk in visual.transformer.resblocks:
                a = blk.attn
                self.blocks.append(
                    dict(
                        blk=blk,
                        qkv=_pack(a.in_proj_weight, a.in_proj_bias),
                        out=_pack(a.out_proj.weight, a.out_proj.bias),
                        fc=_pack(blk.mlp.c_fc.weight, blk.mlp.c_fc.bias),
                        proj=_pack(blk.mlp.c_proj.weight, blk.mlp.c_proj.bias),
                    )
                )
            self.checked: Optional[bool] = None  # None: not yet compared with float32; False: fell back
            self.min_cosine: Optional[float] = None

        @staticmethod
        def _lin(x, packed):
            return torch.ops.quantized.linear_dynamic(x, packed, True)

        def forward_int8(self, x):
            v = self.float_visual
            x = v.conv1(x.to(v.conv1.weight.dtype))
            x = x.flatten(2).transpose(1, 2)
            cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
            x = v.ln_pre(x)
            n, length, width = x.shape
            for b in self.blocks:
                blk = b["blk"]
                a = blk.attn
                h = blk.ln_1(x).reshape(n * length, width)
                qkv = self._lin(h, b["qkv"]).view(n, length, 3, a.heads, a.head_dim).permute(2, 0, 3, 1, 4)
                q, k, vv = qkv.unbind(0)
                if a.ln_q is not None:
                    q, k = a.ln_q(q), a.ln_k(k)
                o = F.scaled_dot_product_attention(q, k, vv).transpose(1, 2).reshape(n * length, width)
                o = self._lin(o, b["out"]).view(n, length, width)
                x = x + (blk.ls_1(o) if blk.ls_1 is not None else o)
                h = blk.ln_2(x).reshape(n * length, width)
                m = self._lin(blk.mlp.gelu(self._lin(h, b["fc"])), b["proj"]).view(n, length, width)
                x = x + (blk.ls_2(m) if blk.ls_2 is not None else m)
            x = v.ln_post(x[:, 0])
            return x @ v.proj

        def forward(self, x):
            if self.checked is False or x.device.type != "cpu":
                return self.float_visual(x)
            if self.checked is None:
                probe = x[:CHECK_IMAGES]
                ref = self.float_visual(probe)
                got = self.forward_int8(probe)
                cos = F.cosine_similarity(got.float(), ref.float(), dim=-1)
                self.min_cosine = float(cos.min())
                self.checked = self.min_cosine >= MIN_COSINE
                if not self.checked:
                    log.warning(
                        "int8 image tower off: cosine %.4f < %.3f vs float32 on this model; using float32",
                        self.min_cosine,
                        MIN_COSINE,
                    )
                    return (
                        torch.cat([ref, self.float_visual(x[CHECK_IMAGES:])]) if len(x) > len(probe) else ref
                    )
                return torch.cat([ref, self.forward_int8(x[CHECK_IMAGES:])]) if len(x) > len(probe) else ref
            return self.forward_int8(x)

    return _QuantizedViT


_CLS = None


class QuantizedViT:
    """Factory for the torch module (torch is imported only when it is built)."""

    def __new__(cls, visual):
        global _CLS
        if _CLS is None:
            _CLS = _make_module()
        return _CLS(visual)


def is_quantized(visual) -> bool:
    return _CLS is not None and isinstance(visual, _CLS)


@contextlib.contextmanager
def cpu_threads(encoder, n: Optional[int] = None) -> Iterator[int]:
    """Run with ``n`` torch threads (default: 1 for tiny towers, else unchanged); restore afterwards."""
    import torch

    before = torch.get_num_threads()
    if n is None:
        visual = getattr(getattr(encoder, "model", None), "visual", None)
        width = getattr(getattr(visual, "transformer", None), "width", None) or getattr(
            getattr(getattr(visual, "float_visual", None), "transformer", None), "width", None
        )
        n = 1 if (width is not None and width < MIN_WIDTH) else before
    n = max(1, min(int(n), before if before > 0 else 1))
    if n != before:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if n != before:
            torch.set_num_threads(before)

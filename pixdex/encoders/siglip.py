"""SigLIP: a ViT image tower without class token, pooled by attention (MAP head), and a text transformer
without causal mask, pooled at the last position; sigmoid logits ``exp(logit_scale) * cos + logit_bias``.

pixdex's state-dict names for SigLIP follow the OpenAI/open_clip names used by the CLIP towers (so the
shared :mod:`pixdex.encoders.layers` blocks, the text-tower export and open_clip checkpoints fit as they are)::

    visual.conv1.weight / .bias                     (W, 3, P, P), (W,)   patch embedding (with bias)
    visual.positional_embedding                     (G*G, W)             no class token
    visual.transformer.resblocks.{i}.ln_1 / ln_2    pre-LN blocks
        .attn.in_proj_weight (3W, W), .attn.in_proj_bias (3W,)     q, k, v packed in this order
        .attn.out_proj.weight / .bias
        .attn.ln_q / .attn.ln_k  (weight, bias: head_dim)          only with ``VisionConfig.qk_norm``
        .ls_1.gamma / .ls_2.gamma (W,)                             only with ``VisionConfig.layer_scale_init``
        .mlp.c_fc / .mlp.c_proj
    visual.ln_post                                  LayerNorm over every token before pooling
    visual.attn_pool.probe                          (1, 1, W) learned query
    visual.attn_pool.attn.in_proj_weight / .in_proj_bias / .out_proj.weight / .out_proj.bias
    visual.attn_pool.ln, visual.attn_pool.mlp.c_fc / .c_proj      ``x = a + mlp(ln(a))``
    text.token_embedding.weight (V, W), text.positional_embedding (ctx, W)
    text.transformer.resblocks.{i}...               as above (no qk-norm, no LayerScale)
    text.ln_final, text.text_projection.weight (D, W) / .bias (D,)
    logit_scale, logit_bias                         scalars

Foreign layouts (transformers, open_clip/timm) are mapped to these names by :mod:`pixdex.encoders.siglip_keys`.
Attention runs through ``F.scaled_dot_product_attention``; LayerNorms compute in float32 under fp16/bf16.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from pixdex.encoders.config import ModelConfig, TextConfig, VisionConfig
from pixdex.encoders.layers import (
    LayerNorm,
    MultiheadAttention,
    Transformer,
    TwoTowerModel,
    init_,
    initial,
    mlp,
)
from pixdex.encoders.text import build_text_trunk
from pixdex.errors import PixdexError


class PoolAttention(MultiheadAttention):
    """Cross-attention of a few queries over the tokens: the same packed ``in_proj_weight`` (q, k, v) and
    ``out_proj`` as self-attention, queries taken from the probe."""

    def forward(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        n, lq, width = q.shape
        lk = x.shape[1]
        w_q, w_kv = self.in_proj_weight.split([width, 2 * width])
        b_q, b_kv = self.in_proj_bias.split([width, 2 * width])
        q = F.linear(q, w_q, b_q).view(n, lq, self.heads, self.head_dim).transpose(1, 2)
        kv = F.linear(x, w_kv, b_kv).view(n, lk, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])
        return self.out_proj(out.transpose(1, 2).reshape(n, lq, width))


class AttentionPool(nn.Module):
    """SigLIP's multihead attention pooling (MAP) head: a learned probe attends over the tokens, then
    ``x + mlp(ln(x))``; returns the probe's features ``(N, W)``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, act: str, eps: float):
        super().__init__()
        self.probe = initial((1, 1, width), lambda: torch.randn(1, 1, width) * width**-0.5)
        self.attn = PoolAttention(width, heads)
        self.ln = LayerNorm(width, eps=eps)
        self.mlp = mlp(width, mlp_ratio, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probe = self.probe.to(x.dtype).expand(x.shape[0], -1, -1)
        x = self.attn(probe, x)
        x = x + self.mlp(self.ln(x))
        return x[:, 0]


class SigLIPVisionTower(nn.Module):
    """Patchify (``conv1`` with bias), add ``positional_embedding``, pre-LN ``transformer``, ``ln_post``,
    attention pooling (``attn_pool``). The output width is the tower's width (no projection)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        if cfg.kind != "siglip":
            raise PixdexError(f"the SigLIP model needs a 'siglip' vision tower, not {cfg.kind!r}")
        if cfg.image_size % cfg.patch_size:
            raise PixdexError(f"image size {cfg.image_size} is not a multiple of patch size {cfg.patch_size}")
        if cfg.width % cfg.heads:
            raise PixdexError(f"SigLIP vision width {cfg.width} is not divisible by {cfg.heads} heads")
        width = cfg.width
        layers = int(cfg.layers)
        self.image_size = cfg.image_size
        self.patch_size = cfg.patch_size
        self.grid = cfg.image_size // cfg.patch_size
        self.output_dim = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=True)
        tokens = self.grid * self.grid
        self.positional_embedding = initial((tokens, width), lambda: torch.randn(tokens, width) * 0.02)
        self.transformer = Transformer(
            width, layers, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.ln_eps, cfg.qk_norm, cfg.layer_scale_init
        )
        self.ln_post = LayerNorm(width, eps=cfg.ln_eps)
        self.attn_pool = AttentionPool(width, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.ln_eps)
        scale = width**-0.5
        self.transformer.init_weights(
            proj_std=scale * (2 * layers) ** -0.5, attn_std=scale, fc_std=(2 * width) ** -0.5
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != self.image_size or x.shape[3] != self.image_size:
            raise PixdexError(
                f"SigLIP expects images (N, 3, {self.image_size}, {self.image_size}), got {tuple(x.shape)}"
            )
        x = self.conv1(x.to(self.conv1.weight.dtype))  # (N, W, g, g)
        x = x.flatten(2).transpose(1, 2) + self.positional_embedding.to(x.dtype)
        x = self.transformer(x)
        return self.attn_pool(self.ln_post(x))


class SigLIPTextTower(nn.Module):
    """Token + position embeddings, bidirectional ``transformer``, ``ln_final``, last-token pooling,
    ``text_projection`` (linear with bias)."""

    def __init__(self, cfg: TextConfig, embed_dim: int):
        super().__init__()
        if cfg.kind != "siglip":
            raise PixdexError(f"the SigLIP model needs a 'siglip' text tower, not {cfg.kind!r}")
        if cfg.width % cfg.heads:
            raise PixdexError(f"SigLIP text width {cfg.width} is not divisible by {cfg.heads} heads")
        build_text_trunk(self, cfg, lambda: nn.Linear(cfg.width, embed_dim))
        init_(nn.init.normal_, self.text_projection.weight, std=cfg.width**-0.5)
        init_(nn.init.zeros_, self.text_projection.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(ids).to(self.token_embedding.weight.device, torch.long)
        if ids.ndim != 2 or not 0 < ids.shape[1] <= self.context_length:
            raise PixdexError(f"token ids must be (N, 1..{self.context_length}), got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise PixdexError(f"token ids outside the vocabulary (0..{self.vocab_size - 1})")
        return self.features(ids)

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        """The tower on checked ids (no data-dependent checks: ONNX export traces this)."""
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
        x = self.transformer(x)
        x = self.ln_final(x[:, -1])  # LayerNorm is per token: pooling first gives the same features
        return self.text_projection(x)


class SigLIP(TwoTowerModel):
    """SigLIP with pixdex's key names (see the module docstring); ``encode_image`` / ``encode_text`` return
    unnormalised features of size ``config.embed_dim``."""

    TEXT_ATTRS = ("text",)
    TEXT_KEY_PREFIXES = ("text.",)

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.family != "siglip":
            raise PixdexError(f"model {config.name}: SigLIP needs family 'siglip', not {config.family!r}")
        if config.embed_dim != config.vision.width:
            raise PixdexError(
                f"model {config.name}: SigLIP's embedding dim ({config.embed_dim}) must equal its "
                f"vision width ({config.vision.width}); the image tower has no projection"
            )
        self.config = config
        self.visual: Optional[SigLIPVisionTower] = SigLIPVisionTower(config.vision)
        self.text: Optional[SigLIPTextTower] = SigLIPTextTower(config.text, config.embed_dim)
        bias = config.init_logit_bias if config.init_logit_bias is not None else -10.0
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(bias)))

    def text_features(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text(ids)

    def traceable_text_features(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text.features(ids)

    def forward(self, images: torch.Tensor, ids: torch.Tensor):
        return self.encode_image(images), self.encode_text(ids), self.logit_scale.exp(), self.logit_bias

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Sigmoid-loss logits ``(N_images, N_texts)`` of unnormalised features."""
        img = F.normalize(image_features, dim=-1)
        txt = F.normalize(text_features, dim=-1)
        return img @ txt.t() * self.logit_scale.exp() + self.logit_bias

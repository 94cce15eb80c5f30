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

from collections import OrderedDict
from typing import Iterable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from pixdex.encoders.config import ModelConfig, TextConfig, VisionConfig
from pixdex.encoders.layers import LayerNorm, Transformer, get_activation
from pixdex.errors import PixdexError

TEXT_KEY_PREFIX = "text."
VISUAL_KEY_PREFIX = "visual."


def _mlp(width: int, mlp_ratio: float, act: str) -> nn.Sequential:
    hidden = int(width * mlp_ratio)
    return nn.Sequential(OrderedDict([
        ("c_fc", nn.Linear(width, hidden)),
        ("gelu", get_activation(act)),
        ("c_proj", nn.Linear(hidden, width)),
    ]))


class PoolAttention(nn.Module):
    """Cross-attention of a few queries over the tokens, with a packed ``in_proj_weight`` (q, k, v)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise PixdexError(f"SigLIP width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = width // heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

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
        self.probe = nn.Parameter(torch.randn(1, 1, width) * width ** -0.5)
        self.attn = PoolAttention(width, heads)
        self.ln = LayerNorm(width, eps=eps)
        self.mlp = _mlp(width, mlp_ratio, act)

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
        self.positional_embedding = nn.Parameter(torch.randn(self.grid * self.grid, width) * 0.02)
        self.transformer = Transformer(width, layers, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.ln_eps,
                                       cfg.qk_norm, cfg.layer_scale_init)
        self.ln_post = LayerNorm(width, eps=cfg.ln_eps)
        self.attn_pool = AttentionPool(width, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.ln_eps)
        scale = width ** -0.5
        self.transformer.init_weights(proj_std=scale * (2 * layers) ** -0.5, attn_std=scale,
                                      fc_std=(2 * width) ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != self.image_size or x.shape[3] != self.image_size:
            raise PixdexError(f"SigLIP expects images (N, 3, {self.image_size}, {self.image_size}), "
                              f"got {tuple(x.shape)}")
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
        width = cfg.width
        self.context_length = cfg.context_length
        self.vocab_size = cfg.vocab_size
        self.token_embedding = nn.Embedding(cfg.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, width))
        self.transformer = Transformer(width, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.ln_eps)
        self.ln_final = LayerNorm(width, eps=cfg.ln_eps)
        self.text_projection = nn.Linear(width, embed_dim)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.transformer.init_weights(proj_std=width ** -0.5 * (2 * cfg.layers) ** -0.5, attn_std=width ** -0.5,
                                      fc_std=(2 * width) ** -0.5)
        nn.init.normal_(self.text_projection.weight, std=width ** -0.5)
        nn.init.zeros_(self.text_projection.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(ids).to(self.token_embedding.weight.device, torch.long)
        if ids.ndim != 2 or not 0 < ids.shape[1] <= self.context_length:
            raise PixdexError(f"token ids must be (N, 1..{self.context_length}), got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise PixdexError(f"token ids outside the vocabulary (0..{self.vocab_size - 1})")
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
        x = self.transformer(x)
        x = self.ln_final(x[:, -1])  # LayerNorm is per token: pooling first gives the same features
        return self.text_projection(x)


class SigLIP(nn.Module):
    """SigLIP with pixdex's key names (see the module docstring); ``encode_image`` / ``encode_text`` return
    unnormalised features of size ``config.embed_dim``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.family != "siglip":
            raise PixdexError(f"model {config.name}: SigLIP needs family 'siglip', not {config.family!r}")
        if config.embed_dim != config.vision.width:
            raise PixdexError(f"model {config.name}: SigLIP's embedding dim ({config.embed_dim}) must equal its "
                              f"vision width ({config.vision.width}); the image tower has no projection")
        self.config = config
        self.visual: Optional[SigLIPVisionTower] = SigLIPVisionTower(config.vision)
        self.text: Optional[SigLIPTextTower] = SigLIPTextTower(config.text, config.embed_dim)
        bias = config.init_logit_bias if config.init_logit_bias is not None else -10.0
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(bias)))
        # state-dict key prefixes of towers removed by keep_towers(); checkpoint loading skips them
        self.dropped_key_prefixes: Tuple[str, ...] = ()

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        if self.visual is None:
            raise RuntimeError("this model was loaded without its image tower")
        return self.visual(x)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        if self.text is None:
            raise RuntimeError("this model was loaded without its text tower")
        return self.text(ids)

    def forward(self, images: torch.Tensor, ids: torch.Tensor):
        return self.encode_image(images), self.encode_text(ids), self.logit_scale.exp(), self.logit_bias

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Sigmoid-loss logits ``(N_images, N_texts)`` of unnormalised features."""
        img = F.normalize(image_features, dim=-1)
        txt = F.normalize(text_features, dim=-1)
        return img @ txt.t() * self.logit_scale.exp() + self.logit_bias

    def keep_towers(self, towers: Iterable[str]) -> None:
        """Free the towers not in ``towers`` (``image`` / ``text``)."""
        towers = set(towers)
        dropped = list(self.dropped_key_prefixes)
        if "image" not in towers and self.visual is not None:
            self.visual = None
            dropped.append(VISUAL_KEY_PREFIX)
        if "text" not in towers and self.text is not None:
            self.text = None
            dropped.append(TEXT_KEY_PREFIX)
        self.dropped_key_prefixes = tuple(dropped)

    def text_state_dict(self) -> dict:
        """The text tower's tensors under pixdex's names (``text.token_embedding.weight``, ...)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(TEXT_KEY_PREFIX)}


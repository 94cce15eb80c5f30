"""CLIP VisionTransformer with OpenAI's parameter names (``visual.conv1``, ``class_embedding``, ...)."""

from __future__ import annotations

import torch
from torch import nn

from pixdex.encoders.config import VisionConfig
from pixdex.encoders.layers import LayerNorm, Transformer, initial


class VisionTransformer(nn.Module):
    """Patchify (``conv1``), prepend ``class_embedding``, add ``positional_embedding``, ``ln_pre``,
    ``transformer``, ``ln_post`` on the class token, ``@ proj``."""

    def __init__(self, cfg: VisionConfig, output_dim: int):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image size {cfg.image_size} is not a multiple of patch size {cfg.patch_size}")
        width = cfg.width
        self.image_size = cfg.image_size
        self.patch_size = cfg.patch_size
        self.grid = cfg.image_size // cfg.patch_size
        self.output_dim = output_dim
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = initial((width,), lambda: scale * torch.randn(width))
        tokens = self.grid * self.grid + 1
        self.positional_embedding = initial((tokens, width), lambda: scale * torch.randn(tokens, width))
        self.ln_pre = LayerNorm(width, eps=cfg.ln_eps)
        self.transformer = Transformer(
            width,
            int(cfg.layers),
            cfg.heads,
            cfg.mlp_ratio,
            cfg.act,
            cfg.ln_eps,
            cfg.qk_norm,
            cfg.layer_scale_init,
        )
        self.ln_post = LayerNorm(width, eps=cfg.ln_eps)
        self.proj = initial((width, output_dim), lambda: scale * torch.randn(width, output_dim))
        layers = int(cfg.layers)
        self.transformer.init_weights(
            proj_std=scale * (2 * layers) ** -0.5, attn_std=scale, fc_std=(2 * width) ** -0.5
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x.to(self.conv1.weight.dtype))  # (N, W, g, g)
        x = x.flatten(2).transpose(1, 2)  # (N, g*g, W)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x)
        x = self.ln_post(x[:, 0])
        return x @ self.proj

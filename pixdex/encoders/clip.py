"""CLIP: a ViT or ModifiedResNet image tower (``visual.*``) and a causal text transformer (top-level keys),
with OpenAI's state-dict names; equal to open_clip's ``CLIP`` on the same weights."""

from __future__ import annotations

import torch

from pixdex.encoders.config import ModelConfig
from pixdex.encoders.layers import TwoTowerModel, initial
from pixdex.encoders.text import TEXT_KEY_PREFIXES, build_text_tower, encode_text_tokens


class CLIP(TwoTowerModel):
    # the text tower lives on the model itself, under OpenAI's top-level key names
    TEXT_ATTRS = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
    TEXT_KEY_PREFIXES = TEXT_KEY_PREFIXES

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        v = config.vision
        if v.kind == "vit":
            from pixdex.encoders.vit import VisionTransformer

            self.visual = VisionTransformer(v, config.embed_dim)
        elif v.kind == "resnet":
            from pixdex.encoders.resnet import ModifiedResNet

            self.visual = ModifiedResNet(v, config.embed_dim)
        else:
            raise ValueError(f"CLIP has no {v.kind!r} vision tower (vit or resnet)")
        build_text_tower(self, config.text, config.embed_dim)
        self.logit_scale = initial((), lambda: torch.ones([]) * config.init_logit_scale)
        self.logit_bias = None

    def text_features(self, ids: torch.Tensor) -> torch.Tensor:
        return encode_text_tokens(self, ids)

    def traceable_text_features(self, ids: torch.Tensor) -> torch.Tensor:
        return encode_text_tokens(self, ids, cut=False)

    def forward(self, images: torch.Tensor, ids: torch.Tensor):
        return self.encode_image(images), self.encode_text(ids), self.logit_scale.exp()

"""CLIP: a ViT or ModifiedResNet image tower (``visual.*``) and a causal text transformer (top-level keys),
with OpenAI's state-dict names; equal to open_clip's ``CLIP`` on the same weights."""

from __future__ import annotations

from typing import Iterable, Tuple

import torch
from torch import nn

from pixdex.encoders.config import ModelConfig
from pixdex.encoders.text import TEXT_KEY_PREFIXES, build_text_tower, encode_text_tokens


class CLIP(nn.Module):
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
        self.logit_scale = nn.Parameter(torch.ones([]) * config.init_logit_scale)
        self.logit_bias = None
        # state-dict key prefixes of towers removed by keep_towers(); checkpoint loading skips them
        self.dropped_key_prefixes: Tuple[str, ...] = ()

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        if self.visual is None:
            raise RuntimeError("this model was loaded without its image tower")
        return self.visual(x)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        if self.transformer is None:
            raise RuntimeError("this model was loaded without its text tower")
        return encode_text_tokens(self, ids)

    def forward(self, images: torch.Tensor, ids: torch.Tensor):
        return self.encode_image(images), self.encode_text(ids), self.logit_scale.exp()

    def keep_towers(self, towers: Iterable[str]) -> None:
        """Free the towers not in ``towers`` (``image`` / ``text``)."""
        towers = set(towers)
        dropped = list(self.dropped_key_prefixes)
        if "image" not in towers and self.visual is not None:
            self.visual = None
            dropped.append("visual.")
        if "text" not in towers and self.transformer is not None:
            self.token_embedding = None
            self.positional_embedding = None
            self.transformer = None
            self.ln_final = None
            self.text_projection = None
            dropped.extend(TEXT_KEY_PREFIXES)
        self.dropped_key_prefixes = tuple(dropped)

    def text_state_dict(self) -> dict:
        """The text tower's tensors under OpenAI's key names."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(TEXT_KEY_PREFIXES)}

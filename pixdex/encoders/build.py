"""``build_model(config)``: a randomly initialised torch model for a ModelConfig."""

from __future__ import annotations

from pixdex.encoders.config import ModelConfig


def build_model(config: ModelConfig):
    """CLIP (ViT or ResNet image tower) or SigLIP, with random weights; load a checkpoint afterwards."""
    if config.family == "clip":
        from pixdex.encoders.clip import CLIP

        return CLIP(config)
    if config.family == "siglip":
        from pixdex.encoders.siglip import SigLIP

        return SigLIP(config)
    from pixdex.errors import PixdexError

    raise PixdexError(f"model {config.name}: unknown family {config.family!r} (expected clip or siglip)")

"""Named model configs (CLIP here, SigLIP merged from ``siglip_configs``) and model-spec parsing.

No torch import: the registry is read on the fast text-search path.
A model spec is a registry name (``ViT-B-32``), ``name:pretrained_tag``, ``pixdex-demo`` or a directory
written by ``pixdex train`` (``config.json`` + ``model.safetensors``).
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import Optional

from pixdex.encoders.config import ModelConfig, PreprocessConfig, TextConfig, TokenizerConfig, VisionConfig
from pixdex.errors import PixdexError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-32-256:datacomp_s34b_b86k"  # what `pixdex index` uses for a new store
# the pretrained tag used when a spec names a model without one (and no --checkpoint is given)
DEFAULT_TAGS: dict[str, str] = {
    "ViT-B-32-256": "datacomp_s34b_b86k",
    "ViT-B-32": "laion2b_s34b_b79k",
    "ViT-B-32-quickgelu": "openai",
    "ViT-B-16": "laion2b_s34b_b88k",
    "ViT-L-14": "laion2b_s32b_b82k",
    "RN50": "openai",
}
# configs whose random initialisation is a usable model (tests); every other model needs weights
RANDOM_INIT_OK = frozenset({"tiny-vit", "tiny-rn"})
DEMO_MODEL = "pixdex-demo"


def _clip(
    name: str,
    embed_dim: int,
    vision: VisionConfig,
    text: Optional[TextConfig] = None,
    act: str = "gelu",
    context_length: int = 77,
) -> ModelConfig:
    text = text or TextConfig()
    vision = VisionConfig(**{**vision.__dict__, "act": act})
    text = TextConfig(**{**text.__dict__, "act": act, "context_length": context_length})
    return ModelConfig(
        name=name,
        family="clip",
        embed_dim=embed_dim,
        vision=vision,
        text=text,
        preprocess=PreprocessConfig(image_size=vision.image_size),
        tokenizer=TokenizerConfig(kind="clip_bpe", context_length=context_length),
    )


def _vit(image_size: int, patch: int, width: int = 768, layers: int = 12) -> VisionConfig:
    return VisionConfig(
        kind="vit", image_size=image_size, patch_size=patch, width=width, layers=layers, heads=width // 64
    )


def _clip_configs() -> dict[str, ModelConfig]:
    large_text = TextConfig(width=768, heads=12, layers=12)
    cfgs = [
        _clip(
            "RN50",
            1024,
            VisionConfig(
                kind="resnet",
                image_size=224,
                width=64,
                layers=(3, 4, 6, 3),
                patch_size=0,
                heads=32,
                head_width=64,
            ),
        ),
        _clip("ViT-B-32", 512, _vit(224, 32)),
        _clip("ViT-B-32-quickgelu", 512, _vit(224, 32), act="quick_gelu"),
        _clip("ViT-B-32-256", 512, _vit(256, 32)),
        _clip("ViT-B-16", 512, _vit(224, 16)),
        _clip("ViT-L-14", 768, _vit(224, 14, width=1024, layers=24), text=large_text),
        _clip(
            "tiny-vit",
            32,
            VisionConfig(kind="vit", image_size=32, patch_size=8, width=64, layers=2, heads=2),
            text=TextConfig(width=64, heads=2, layers=2),
        ),
        _clip(
            "tiny-rn",
            32,
            VisionConfig(
                kind="resnet",
                image_size=64,
                width=16,
                layers=(1, 1, 1, 1),
                patch_size=0,
                heads=8,
                head_width=64,
            ),
            text=TextConfig(width=64, heads=2, layers=2),
        ),
        # patch 16 keeps CPU training within budget (pixdex demo-data puts one object per 16-px patch);
        # text width 64 keeps the 49408-token embedding, and so the bundled float16 file, under 10 MB
        _clip(
            DEMO_MODEL,
            128,
            VisionConfig(kind="vit", image_size=64, patch_size=16, width=128, layers=4, heads=4),
            text=TextConfig(width=64, heads=4, layers=4),
            act="quick_gelu",
            context_length=32,
        ),
    ]
    return {c.name: c for c in cfgs}


@lru_cache(maxsize=1)
def _configs() -> dict[str, ModelConfig]:
    cfgs = _clip_configs()
    try:
        from pixdex.encoders import siglip_configs
    except ModuleNotFoundError as e:  # the SigLIP configs are optional
        if e.name != "pixdex.encoders.siglip_configs":
            raise
        siglip_configs = None
    SIGLIP_CONFIGS = getattr(siglip_configs, "SIGLIP_CONFIGS", {})
    for name, tag in getattr(siglip_configs, "SIGLIP_DEFAULT_TAGS", {}).items():
        DEFAULT_TAGS.setdefault(name, tag)
    for name, cfg in SIGLIP_CONFIGS.items():
        if name in cfgs:
            log.warning("SigLIP config %s shadows a CLIP config of the same name", name)
        cfgs[name] = cfg
    return cfgs


def list_models() -> list[str]:
    return list(_configs())


def get_config(name: str) -> ModelConfig:
    """The registered ModelConfig for ``name`` (case-sensitive, with a case-insensitive fallback)."""
    cfgs = _configs()
    if name in cfgs:
        return cfgs[name]
    lower = {k.lower(): k for k in cfgs}
    if name.lower() in lower:
        return cfgs[lower[name.lower()]]
    raise PixdexError(
        f"unknown model {name!r}; known models: {', '.join(cfgs)} (or a directory written by `pixdex train`)"
    )


def is_model_dir(spec: str) -> bool:
    return os.path.isdir(os.path.expanduser(str(spec)))


def parse_spec(spec: str) -> tuple[str, Optional[str]]:
    """``"ViT-B-32-256:datacomp_s34b_b86k"`` -> ``("ViT-B-32-256", "datacomp_s34b_b86k")``.

    A directory (or anything that looks like a path) is returned whole with tag None.
    """
    spec = str(spec).strip()
    if not spec:
        raise PixdexError("empty model spec")
    if is_model_dir(spec) or "/" in spec or os.sep in spec:
        return spec, None
    name, sep, tag = spec.partition(":")
    if sep and not tag:
        raise PixdexError(f"model spec {spec!r}: empty pretrained tag after ':'")
    return name, (tag or None)


def demo_weights_path():
    from pathlib import Path

    return Path(__file__).resolve().parent / "weights" / f"{DEMO_MODEL}.safetensors"


def describe_models() -> list[dict]:
    """One row per registered model for ``pixdex models``: pretrained tags and which are cached."""
    from pixdex.encoders.pretrained import cached_tags, pretrained_tags

    rows = []
    for name, cfg in _configs().items():
        if name == DEMO_MODEL:
            tags = ["bundled"]
            cached = ["bundled"] if demo_weights_path().exists() else []
        elif name in RANDOM_INIT_OK:
            tags, cached = [], []
        else:
            tags = pretrained_tags(cfg)
            cached = cached_tags(cfg, tags)
        rows.append(
            {
                "name": name,
                "family": cfg.family,
                "dim": cfg.embed_dim,
                "image_size": cfg.image_size,
                "pretrained": tags,
                "cached": cached,
                "default_tag": DEFAULT_TAGS.get(name),
            }
        )
    return rows

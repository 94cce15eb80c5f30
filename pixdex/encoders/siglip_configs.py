"""SigLIP model configs for the registry, and configs read from Hugging Face ``config.json`` files.

No torch import here (configs are read on the text-search path).

The numbers follow open_clip's ``model_configs/*.json`` and the timm models they name:

- ``ViT-B-16-SigLIP``: timm ``vit_base_patch16_siglip_224`` (patch 16, width 768, 12 layers, 12 heads,
  no class token, MAP pooling); text width 768 / 12 layers / 12 heads, vocab 32000, context 64.
- ``ViT-SO400M-14-SigLIP``: timm ``vit_so400m_patch14_siglip_224`` (patch 14, width 1152, 27 layers,
  16 heads, mlp ratio 3.7362); text width 1152 / 27 layers / 16 heads, context 16.

Both towers use LayerNorm eps 1e-6. The activation is the *exact* GELU in both towers: that is what open_clip
runs for these tags (timm's ViT default, and no ``act_kwargs`` in the text config), and pixdex matches
open_clip on open_clip's weights. Checkpoints in the Hugging Face layout carry their own ``config.json``
(``hidden_act: gelu_pytorch_tanh``); :func:`config_from_hf` turns it into a ModelConfig with ``gelu_tanh``.
Preprocessing: squash resize, bicubic, mean = std = 0.5. Logits: ``exp(log 10) * cos + (-10)`` at init.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Optional, Union

from pixdex.encoders.config import (
    SIGLIP_MEAN,
    SIGLIP_STD,
    ModelConfig,
    PreprocessConfig,
    TextConfig,
    TokenizerConfig,
    VisionConfig,
)
from pixdex.errors import PixdexError

SIGLIP_INIT_LOGIT_SCALE = math.log(10.0)
SIGLIP_INIT_LOGIT_BIAS = -10.0
SIGLIP_TOKENIZER_REPO = "timm/ViT-B-16-SigLIP"  # the c4-en sentencepiece model of open_clip's SigLIP tags


def _siglip(
    name: str,
    embed_dim: int,
    image_size: int,
    patch_size: int,
    width: int,
    layers: int,
    heads: int,
    mlp_ratio: float,
    text_width: int,
    text_layers: int,
    text_heads: int,
    context_length: int,
    vocab_size: int = 32000,
    act: str = "gelu",
    hf_repo: Optional[str] = SIGLIP_TOKENIZER_REPO,
    clean: str = "canonicalize",
) -> ModelConfig:
    return ModelConfig(
        name=name,
        family="siglip",
        embed_dim=embed_dim,
        vision=VisionConfig(
            kind="siglip",
            image_size=image_size,
            patch_size=patch_size,
            width=width,
            layers=layers,
            heads=heads,
            mlp_ratio=mlp_ratio,
            act=act,
            ln_eps=1e-6,
        ),
        text=TextConfig(
            kind="siglip",
            vocab_size=vocab_size,
            context_length=context_length,
            width=text_width,
            heads=text_heads,
            layers=text_layers,
            mlp_ratio=mlp_ratio,
            act=act,
            ln_eps=1e-6,
            pad_id=1,
        ),
        preprocess=PreprocessConfig(
            image_size=image_size,
            mean=SIGLIP_MEAN,
            std=SIGLIP_STD,
            resize_mode="squash",
            interpolation="bicubic",
        ),
        tokenizer=TokenizerConfig(
            kind="sentencepiece", context_length=context_length, hf_repo=hf_repo, lowercase=True, clean=clean
        ),
        init_logit_scale=SIGLIP_INIT_LOGIT_SCALE,
        init_logit_bias=SIGLIP_INIT_LOGIT_BIAS,
    )


SIGLIP_CONFIGS: dict[str, ModelConfig] = {
    "ViT-B-16-SigLIP": _siglip("ViT-B-16-SigLIP", 768, 224, 16, 768, 12, 12, 4.0, 768, 12, 12, 64),
    "ViT-SO400M-14-SigLIP": _siglip(
        "ViT-SO400M-14-SigLIP", 1152, 224, 14, 1152, 27, 16, 3.7362, 1152, 27, 16, 16
    ),
    # a few-kB model for tests: same structure, tiny numbers (its tokenizer comes from the checkpoint dir)
    "tiny-siglip": _siglip(
        "tiny-siglip",
        32,
        32,
        8,
        32,
        2,
        4,
        2.0,
        32,
        2,
        4,
        16,
        vocab_size=512,
        act="gelu_tanh",
        hf_repo=None,
        clean="siglip",
    ),
}

# pretrained tag used when a spec names one of these models without a tag (open_clip's pretrained registry)
SIGLIP_DEFAULT_TAGS: dict[str, str] = {"ViT-B-16-SigLIP": "webli", "ViT-SO400M-14-SigLIP": "webli"}

_HF_ACTS = {
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
    "quick_gelu": "quick_gelu",
}


def _hf_act(name: str, where: str) -> str:
    if name not in _HF_ACTS:
        raise PixdexError(f"{where}: unsupported activation {name!r} (expected one of {sorted(_HF_ACTS)})")
    return _HF_ACTS[name]


def _mlp_ratio(intermediate: int, width: int) -> float:
    """The ratio for which ``int(width * ratio) == intermediate`` (how pixdex, timm and open_clip size MLPs)."""
    ratio = intermediate / width
    for _ in range(8):
        if int(width * ratio) >= intermediate:
            break
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def config_from_hf(hf_config: Union[Mapping, str, Path], name: Optional[str] = None) -> ModelConfig:
    """A ModelConfig for a transformers ``SiglipModel`` from its ``config.json`` (a dict or the file's path).

    Missing sub-config fields take transformers' ``SiglipTextConfig`` / ``SiglipVisionConfig`` defaults. The
    tokenizer is transformers' ``SiglipTokenizer`` (``spiece.model`` beside the weights, ``clean='siglip'``).
    """
    where = "Hugging Face SigLIP config"
    if not isinstance(hf_config, Mapping):
        path = Path(hf_config)
        where = str(path)
        try:
            hf_config = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise PixdexError(f"cannot read {path}: {e.strerror or e}") from e
        except ValueError as e:
            raise PixdexError(f"{path}: not a JSON file ({e})") from e
    if not isinstance(hf_config, Mapping):
        raise PixdexError(f"{where}: expected a JSON object")
    model_type = hf_config.get("model_type", "siglip")
    if model_type != "siglip":
        raise PixdexError(f"{where}: model_type {model_type!r} is not a SigLIP model")
    v = dict(hf_config.get("vision_config") or {})
    t = dict(hf_config.get("text_config") or {})
    v_width = int(v.get("hidden_size", 768))
    t_width = int(t.get("hidden_size", 768))
    image_size = v.get("image_size", 224)
    patch_size = v.get("patch_size", 16)
    if isinstance(image_size, (list, tuple)) or isinstance(patch_size, (list, tuple)):
        sizes = set(image_size if isinstance(image_size, (list, tuple)) else [image_size])
        patches = set(patch_size if isinstance(patch_size, (list, tuple)) else [patch_size])
        if len(sizes) != 1 or len(patches) != 1:
            raise PixdexError(f"{where}: only square images and patches are supported")
        image_size, patch_size = sizes.pop(), patches.pop()
    embed_dim = int(t.get("projection_size") or t_width)
    if not v.get("vision_use_head", True):
        raise PixdexError(
            f"{where}: a SigLIP vision tower without its attention-pooling head has no embedding"
        )
    if embed_dim != v_width:
        raise PixdexError(
            f"{where}: text projection size {embed_dim} differs from the vision width {v_width}"
        )
    context = int(t.get("max_position_embeddings", 64))
    return ModelConfig(
        name=name or hf_config.get("_name_or_path") or "siglip-hf",
        family="siglip",
        embed_dim=embed_dim,
        vision=VisionConfig(
            kind="siglip",
            image_size=int(image_size),
            patch_size=int(patch_size),
            width=v_width,
            layers=int(v.get("num_hidden_layers", 12)),
            heads=int(v.get("num_attention_heads", 12)),
            mlp_ratio=_mlp_ratio(int(v.get("intermediate_size", 3072)), v_width),
            act=_hf_act(v.get("hidden_act", "gelu_pytorch_tanh"), where),
            ln_eps=float(v.get("layer_norm_eps", 1e-6)),
        ),
        text=TextConfig(
            kind="siglip",
            vocab_size=int(t.get("vocab_size", 32000)),
            context_length=context,
            width=t_width,
            heads=int(t.get("num_attention_heads", 12)),
            layers=int(t.get("num_hidden_layers", 12)),
            mlp_ratio=_mlp_ratio(int(t.get("intermediate_size", 3072)), t_width),
            act=_hf_act(t.get("hidden_act", "gelu_pytorch_tanh"), where),
            ln_eps=float(t.get("layer_norm_eps", 1e-6)),
            pad_id=int(t.get("pad_token_id", 1) or 0),
        ),
        preprocess=PreprocessConfig(
            image_size=int(image_size),
            mean=SIGLIP_MEAN,
            std=SIGLIP_STD,
            resize_mode="squash",
            interpolation="bicubic",
        ),
        tokenizer=TokenizerConfig(
            kind="sentencepiece",
            context_length=context,
            sp_model_file="spiece.model",
            hf_repo=None,
            lowercase=True,
            clean="siglip",
        ),
        init_logit_scale=SIGLIP_INIT_LOGIT_SCALE,
        init_logit_bias=SIGLIP_INIT_LOGIT_BIAS,
    )

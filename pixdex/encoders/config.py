"""Frozen dataclass configs for CLIP and SigLIP models.

A ``ModelConfig`` fully describes a model: its towers, its preprocessing and its tokenizer, so that a
registry entry (or a ``config.json`` written by ``pixdex train``) is enough to build, feed and load it.
No torch import here: configs are read on the fast text-search path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Union

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class VisionConfig:
    """Image tower.

    kind: ``vit`` (CLIP VisionTransformer), ``resnet`` (CLIP ModifiedResNet) or ``siglip`` (SigLIP
    vision tower: no class token, attention-pooling head).
    """

    kind: str = "vit"
    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: Union[int, tuple[int, ...]] = 12  # tuple of 4 stage depths for ``resnet``
    heads: int = 12
    mlp_ratio: float = 4.0
    act: str = "gelu"  # gelu | quick_gelu | gelu_tanh
    ln_eps: float = 1e-5
    qk_norm: bool = False  # LayerNorm on per-head queries and keys (newer ViTs)
    layer_scale_init: Optional[float] = None  # LayerScale on both residual branches when set
    head_width: int = 64  # ``resnet`` only: width per attention-pool head

    def __post_init__(self):
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))


@dataclass(frozen=True)
class TextConfig:
    """Text tower.

    kind ``clip``: causal mask, pooling at the EOT token (argmax id), ``text_projection`` matrix.
    kind ``siglip``: no causal mask, last-token pooling, linear ``head`` with bias.
    """

    kind: str = "clip"
    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    act: str = "gelu"
    ln_eps: float = 1e-5
    pad_id: int = 0


@dataclass(frozen=True)
class PreprocessConfig:
    image_size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resize_mode: str = "shortest"  # shortest (resize short side + center crop) | squash
    interpolation: str = "bicubic"

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(self.mean))
        object.__setattr__(self, "std", tuple(self.std))


@dataclass(frozen=True)
class TokenizerConfig:
    kind: str = "clip_bpe"  # clip_bpe | sentencepiece
    context_length: int = 77
    # sentencepiece: file name looked up beside the checkpoint (HF layout) ...
    sp_model_file: str = "spiece.model"
    # ... or a Hugging Face repo id whose tokenizer comes with open_clip's pretrained SigLIP.
    hf_repo: Optional[str] = None
    lowercase: bool = False
    clean: str = "whitespace"  # whitespace | canonicalize (open_clip SigLIP) | siglip (transformers)


@dataclass(frozen=True)
class ModelConfig:
    name: str
    family: str  # clip | siglip
    embed_dim: int
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    init_logit_scale: float = 2.659260036932778  # log(1/0.07)
    init_logit_bias: Optional[float] = None  # SigLIP: -10
    # open_clip model name whose pretrained registry lists this model's weights (None: same as name)
    open_clip_name: Optional[str] = None

    @property
    def image_size(self) -> int:
        return self.preprocess.image_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        vision = VisionConfig(**d.pop("vision", {}))
        text = TextConfig(**d.pop("text", {}))
        pre = PreprocessConfig(**d.pop("preprocess", {}))
        tok = TokenizerConfig(**d.pop("tokenizer", {}))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(vision=vision, text=text, preprocess=pre, tokenizer=tok, **d)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

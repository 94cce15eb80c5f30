"""How a checkpoint wraps its tensors and which key layout they use: the one rule every reader applies.

- :func:`unwrap_nested`: training scripts save ``{"state_dict": ...}``, ``{"model": ...}``,
  ``{"model_state_dict": ...}`` or ``{"module": ...}`` (nested up to three deep) around the tensors;
- :func:`wrapper_prefix` / :func:`strip_wrappers`: DDP (``module.``), ``torch.compile``
  (``_orig_mod.``) and Lightning-style (``model.``) key prefixes, removed only when *every* key has them;
- :func:`detect_layout`: ``hf_siglip`` (transformers ``SiglipModel``: ``vision_model.`` /
  ``text_model.``), ``open_clip_siglip`` (open_clip's timm trunk: ``visual.trunk.``), ``pixdex_siglip``
  (pixdex's own SigLIP names) or None (pixdex's CLIP names, which are OpenAI's, or unknown keys).
  Layouts in :data:`FOREIGN_LAYOUTS` need key conversion (:mod:`pixdex.encoders.siglip_keys`).

No torch import: the functions only look at keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Optional

NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module")
NESTED_DEPTH = 3
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")

HF_SIGLIP = "hf_siglip"
OPEN_CLIP_SIGLIP = "open_clip_siglip"
PIXDEX_SIGLIP = "pixdex_siglip"
FOREIGN_LAYOUTS = (HF_SIGLIP, OPEN_CLIP_SIGLIP)


def unwrap_nested(obj):
    """The mapping of tensors inside a training checkpoint's wrapper dicts (``obj`` itself if none)."""
    for _ in range(NESTED_DEPTH):
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in NESTED_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            break
        obj = inner
    return obj


def wrapper_prefix(keys: Iterable[str]) -> str:
    """The wrapper prefixes (:data:`WRAPPER_PREFIXES`, in that order) that every key carries, joined."""
    keys = list(keys)
    prefix = ""
    for p in WRAPPER_PREFIXES:
        if keys and all(k.startswith(prefix + p) for k in keys):
            prefix += p
    return prefix


def strip_wrappers(state_dict: Mapping[str, object]) -> dict[str, object]:
    """``state_dict`` without the wrapper prefix that all its keys share."""
    n = len(wrapper_prefix(state_dict))
    return {k[n:]: v for k, v in state_dict.items()} if n else dict(state_dict)


def detect_layout(keys: Iterable[str]) -> Optional[str]:
    """:data:`HF_SIGLIP`, :data:`OPEN_CLIP_SIGLIP`, :data:`PIXDEX_SIGLIP` or None (see the module doc).
    Wrapper prefixes are ignored."""
    keys = list(keys)
    n = len(wrapper_prefix(keys))
    keys = [k[n:] for k in keys]
    if any(k.startswith(("vision_model.", "text_model.")) for k in keys):
        return HF_SIGLIP
    if any(k.startswith("visual.trunk.") for k in keys):
        return OPEN_CLIP_SIGLIP
    if any(k.startswith(("visual.attn_pool.", "text.transformer.resblocks.")) for k in keys):
        return PIXDEX_SIGLIP
    return None


# The parameters of one transformer block (``transformer.resblocks.{i}.`` + these), in OpenAI's names;
# the SigLIP key mapping and the text-tower export both walk them.
RESBLOCK_PARAM_KEYS = (
    "ln_1.weight",
    "ln_1.bias",
    "attn.in_proj_weight",
    "attn.in_proj_bias",
    "attn.out_proj.weight",
    "attn.out_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
)

"""State-dict key mapping from foreign SigLIP layouts to pixdex's names (see :mod:`pixdex.encoders.siglip`).

``convert_state_dict(state_dict, config) -> dict`` for the layouts that
:func:`pixdex.encoders.state_dict_layout.detect_layout` tells apart (``hf_siglip``, ``open_clip_siglip``,
``pixdex_siglip``). One explicit table per format: each rule names the
pixdex key, the foreign key(s) it is made of and how (``copy``, ``cat`` = packed q/k/v, ``flat`` = drop a
leading 1-dim, ``scalar``). ``{i}`` stands for a block index. Keys no rule consumes are passed through under
their own names, so the strict loader reports them as unexpected (and the keys they should have become as
missing) in its one error; only known buffers (``position_ids``) are dropped.

No torch import at module level: tensors are concatenated with torch or numpy, whichever they are.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence

from pixdex.encoders.state_dict_layout import (
    HF_SIGLIP,
    OPEN_CLIP_SIGLIP,
    PIXDEX_SIGLIP,
    RESBLOCK_PARAM_KEYS,
    detect_layout,
    strip_wrappers,
)
from pixdex.errors import PixdexError

log = logging.getLogger(__name__)

Rule = tuple[str, tuple[str, ...], str]  # (pixdex key, foreign keys, op)


def _block_rules(dst: str, src: str, names: Sequence[tuple[str, tuple[str, ...], str]]) -> list[Rule]:
    return [(f"{dst}.{d}", tuple(f"{src}.{s}" for s in srcs), op) for d, srcs, op in names]


# ----------------------------------------------------------------------------- transformers (HF) SiglipModel

_HF_BLOCK = [
    ("ln_1.weight", ("layer_norm1.weight",), "copy"),
    ("ln_1.bias", ("layer_norm1.bias",), "copy"),
    (
        "attn.in_proj_weight",
        ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
        "cat",
    ),
    ("attn.in_proj_bias", ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"), "cat"),
    ("attn.out_proj.weight", ("self_attn.out_proj.weight",), "copy"),
    ("attn.out_proj.bias", ("self_attn.out_proj.bias",), "copy"),
    ("ln_2.weight", ("layer_norm2.weight",), "copy"),
    ("ln_2.bias", ("layer_norm2.bias",), "copy"),
    ("mlp.c_fc.weight", ("mlp.fc1.weight",), "copy"),
    ("mlp.c_fc.bias", ("mlp.fc1.bias",), "copy"),
    ("mlp.c_proj.weight", ("mlp.fc2.weight",), "copy"),
    ("mlp.c_proj.bias", ("mlp.fc2.bias",), "copy"),
]

HF_TABLE: list[Rule] = [
    ("visual.conv1.weight", ("vision_model.embeddings.patch_embedding.weight",), "copy"),
    ("visual.conv1.bias", ("vision_model.embeddings.patch_embedding.bias",), "copy"),
    ("visual.positional_embedding", ("vision_model.embeddings.position_embedding.weight",), "copy"),
    *_block_rules("visual.transformer.resblocks.{i}", "vision_model.encoder.layers.{i}", _HF_BLOCK),
    ("visual.ln_post.weight", ("vision_model.post_layernorm.weight",), "copy"),
    ("visual.ln_post.bias", ("vision_model.post_layernorm.bias",), "copy"),
    ("visual.attn_pool.probe", ("vision_model.head.probe",), "copy"),
    ("visual.attn_pool.attn.in_proj_weight", ("vision_model.head.attention.in_proj_weight",), "copy"),
    ("visual.attn_pool.attn.in_proj_bias", ("vision_model.head.attention.in_proj_bias",), "copy"),
    ("visual.attn_pool.attn.out_proj.weight", ("vision_model.head.attention.out_proj.weight",), "copy"),
    ("visual.attn_pool.attn.out_proj.bias", ("vision_model.head.attention.out_proj.bias",), "copy"),
    ("visual.attn_pool.ln.weight", ("vision_model.head.layernorm.weight",), "copy"),
    ("visual.attn_pool.ln.bias", ("vision_model.head.layernorm.bias",), "copy"),
    ("visual.attn_pool.mlp.c_fc.weight", ("vision_model.head.mlp.fc1.weight",), "copy"),
    ("visual.attn_pool.mlp.c_fc.bias", ("vision_model.head.mlp.fc1.bias",), "copy"),
    ("visual.attn_pool.mlp.c_proj.weight", ("vision_model.head.mlp.fc2.weight",), "copy"),
    ("visual.attn_pool.mlp.c_proj.bias", ("vision_model.head.mlp.fc2.bias",), "copy"),
    ("text.token_embedding.weight", ("text_model.embeddings.token_embedding.weight",), "copy"),
    ("text.positional_embedding", ("text_model.embeddings.position_embedding.weight",), "copy"),
    *_block_rules("text.transformer.resblocks.{i}", "text_model.encoder.layers.{i}", _HF_BLOCK),
    ("text.ln_final.weight", ("text_model.final_layer_norm.weight",), "copy"),
    ("text.ln_final.bias", ("text_model.final_layer_norm.bias",), "copy"),
    ("text.text_projection.weight", ("text_model.head.weight",), "copy"),
    ("text.text_projection.bias", ("text_model.head.bias",), "copy"),
    ("logit_scale", ("logit_scale",), "scalar"),
    ("logit_bias", ("logit_bias",), "scalar"),
]
HF_IGNORED = ("vision_model.embeddings.position_ids", "text_model.embeddings.position_ids")

# ----------------------------------------------------------------------------- open_clip (timm trunk) SigLIP

_TIMM_BLOCK = [
    ("ln_1.weight", ("norm1.weight",), "copy"),
    ("ln_1.bias", ("norm1.bias",), "copy"),
    ("attn.in_proj_weight", ("attn.qkv.weight",), "copy"),  # timm packs q, k, v like in_proj
    ("attn.in_proj_bias", ("attn.qkv.bias",), "copy"),
    ("attn.ln_q.weight", ("attn.q_norm.weight",), "copy"),
    ("attn.ln_q.bias", ("attn.q_norm.bias",), "copy"),
    ("attn.ln_k.weight", ("attn.k_norm.weight",), "copy"),
    ("attn.ln_k.bias", ("attn.k_norm.bias",), "copy"),
    ("attn.out_proj.weight", ("attn.proj.weight",), "copy"),
    ("attn.out_proj.bias", ("attn.proj.bias",), "copy"),
    ("ls_1.gamma", ("ls1.gamma",), "copy"),
    ("ln_2.weight", ("norm2.weight",), "copy"),
    ("ln_2.bias", ("norm2.bias",), "copy"),
    ("mlp.c_fc.weight", ("mlp.fc1.weight",), "copy"),
    ("mlp.c_fc.bias", ("mlp.fc1.bias",), "copy"),
    ("mlp.c_proj.weight", ("mlp.fc2.weight",), "copy"),
    ("mlp.c_proj.bias", ("mlp.fc2.bias",), "copy"),
    ("ls_2.gamma", ("ls2.gamma",), "copy"),
]

OPEN_CLIP_TABLE: list[Rule] = [
    ("visual.conv1.weight", ("visual.trunk.patch_embed.proj.weight",), "copy"),
    ("visual.conv1.bias", ("visual.trunk.patch_embed.proj.bias",), "copy"),
    ("visual.positional_embedding", ("visual.trunk.pos_embed",), "flat"),
    *_block_rules("visual.transformer.resblocks.{i}", "visual.trunk.blocks.{i}", _TIMM_BLOCK),
    ("visual.ln_post.weight", ("visual.trunk.norm.weight",), "copy"),
    ("visual.ln_post.bias", ("visual.trunk.norm.bias",), "copy"),
    ("visual.attn_pool.probe", ("visual.trunk.attn_pool.latent",), "copy"),
    (
        "visual.attn_pool.attn.in_proj_weight",
        ("visual.trunk.attn_pool.q.weight", "visual.trunk.attn_pool.kv.weight"),
        "cat",
    ),  # kv packs k, v
    (
        "visual.attn_pool.attn.in_proj_bias",
        ("visual.trunk.attn_pool.q.bias", "visual.trunk.attn_pool.kv.bias"),
        "cat",
    ),
    ("visual.attn_pool.attn.out_proj.weight", ("visual.trunk.attn_pool.proj.weight",), "copy"),
    ("visual.attn_pool.attn.out_proj.bias", ("visual.trunk.attn_pool.proj.bias",), "copy"),
    ("visual.attn_pool.ln.weight", ("visual.trunk.attn_pool.norm.weight",), "copy"),
    ("visual.attn_pool.ln.bias", ("visual.trunk.attn_pool.norm.bias",), "copy"),
    ("visual.attn_pool.mlp.c_fc.weight", ("visual.trunk.attn_pool.mlp.fc1.weight",), "copy"),
    ("visual.attn_pool.mlp.c_fc.bias", ("visual.trunk.attn_pool.mlp.fc1.bias",), "copy"),
    ("visual.attn_pool.mlp.c_proj.weight", ("visual.trunk.attn_pool.mlp.fc2.weight",), "copy"),
    ("visual.attn_pool.mlp.c_proj.bias", ("visual.trunk.attn_pool.mlp.fc2.bias",), "copy"),
    # open_clip's SigLIP text tower already uses pixdex's names
    ("text.token_embedding.weight", ("text.token_embedding.weight",), "copy"),
    ("text.positional_embedding", ("text.positional_embedding",), "copy"),
    *_block_rules(
        "text.transformer.resblocks.{i}",
        "text.transformer.resblocks.{i}",
        [(k, (k,), "copy") for k in RESBLOCK_PARAM_KEYS],
    ),
    ("text.ln_final.weight", ("text.ln_final.weight",), "copy"),
    ("text.ln_final.bias", ("text.ln_final.bias",), "copy"),
    ("text.text_projection.weight", ("text.text_projection.weight",), "copy"),
    ("text.text_projection.bias", ("text.text_projection.bias",), "copy"),
    ("logit_scale", ("logit_scale",), "scalar"),
    ("logit_bias", ("logit_bias",), "scalar"),
]
OPEN_CLIP_IGNORED = ("text.attn_mask",)

TABLES: dict[str, tuple[list[Rule], tuple[str, ...]]] = {
    HF_SIGLIP: (HF_TABLE, HF_IGNORED),
    OPEN_CLIP_SIGLIP: (OPEN_CLIP_TABLE, OPEN_CLIP_IGNORED),
}

# ----------------------------------------------------------------------------- ops


def _cat(parts):
    if hasattr(parts[0], "detach"):
        import torch

        return torch.cat(list(parts), dim=0)
    import numpy as np

    return np.concatenate(parts, axis=0)


def _flat(t):
    if t.ndim == 3 and t.shape[0] == 1:
        return t.reshape(t.shape[1:])
    return t  # a wrong shape is reported by the strict loader


def _scalar(t):
    if getattr(t, "ndim", 0) > 0 and t.shape == (1,):
        return t.reshape(())
    return t


_OPS: dict[str, Callable] = {
    "copy": lambda parts: parts[0],
    "cat": _cat,
    "flat": lambda parts: _flat(parts[0]),
    "scalar": lambda parts: _scalar(parts[0]),
}

# ----------------------------------------------------------------------------- conversion


def _pattern(key: str) -> re.Pattern:
    return re.compile("^" + re.escape(key).replace(re.escape("{i}"), r"(\d+)") + "$")


def apply_table(
    state_dict: Mapping[str, object], table: Sequence[Rule], ignored: Sequence[str] = ()
) -> dict[str, object]:
    """Map ``state_dict`` through ``table``; leftovers keep their names (they surface as unexpected)."""
    src = dict(state_dict)
    out: dict[str, object] = {}
    for dst, srcs, op in table:
        if "{i}" in srcs[0]:
            pat = _pattern(srcs[0])
            indices = sorted({m.group(1) for m in map(pat.match, src) if m}, key=int)
            instances = [(dst.replace("{i}", i), tuple(s.replace("{i}", i) for s in srcs)) for i in indices]
        else:
            instances = [(dst, srcs)]
        for d, ss in instances:
            if all(s in src for s in ss):
                if d in out:
                    raise PixdexError(f"checkpoint maps two tensors to {d}")
                out[d] = _OPS[op]([src.pop(s) for s in ss])
    for k in ignored:
        src.pop(k, None)
    for k, v in src.items():  # unknown or incomplete (e.g. q without k/v): left for the strict loader
        if k in out:
            raise PixdexError(f"checkpoint has both a foreign and a pixdex tensor named {k}")
        out[k] = v
    if src:
        log.debug("unmapped SigLIP checkpoint keys: %s", sorted(src)[:8])
    return out


def convert_state_dict(state_dict: Mapping[str, object], config=None) -> dict[str, object]:
    """``state_dict`` under pixdex's SigLIP names. ``config`` (the target ModelConfig) is accepted for the
    loader's hook signature; shapes are checked by the strict loader. Unknown layouts raise PixdexError."""
    sd = strip_wrappers(state_dict)
    fmt = detect_layout(sd)
    if fmt is None:
        sample = ", ".join(sorted(sd)[:4]) or "no tensors"
        raise PixdexError(f"not a SigLIP checkpoint (keys: {sample}, ...)")
    if fmt == PIXDEX_SIGLIP:
        return {k: (_scalar(v) if k in ("logit_scale", "logit_bias") else v) for k, v in sd.items()}
    table, ignored = TABLES[fmt]
    return apply_table(sd, table, ignored)

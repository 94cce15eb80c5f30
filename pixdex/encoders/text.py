"""The CLIP text tower, attached to the model itself so that its keys stay top-level like OpenAI's
(``token_embedding.weight``, ``positional_embedding``, ``transformer.resblocks.N``, ``ln_final``,
``text_projection``)."""

from __future__ import annotations

import torch
from torch import nn

from pixdex.encoders.config import TextConfig
from pixdex.encoders.layers import LayerNorm, Transformer, init_, on_meta

# state-dict keys (prefixes) that belong to the CLIP text tower
TEXT_KEY_PREFIXES = (
    "token_embedding.",
    "positional_embedding",
    "transformer.",
    "ln_final.",
    "text_projection",
)


def build_text_trunk(owner: nn.Module, cfg: TextConfig, projection) -> None:
    """Token and position embeddings, ``transformer``, ``ln_final`` and ``text_projection`` (made by
    ``projection()``) on ``owner``, with OpenAI's initialisation of the trunk; the caller initialises the
    projection. Shared by the CLIP tower and SigLIP's."""
    width = cfg.width
    owner.context_length = cfg.context_length
    owner.vocab_size = cfg.vocab_size
    owner.token_embedding = (  # nn.Embedding's own init is a normal_ (see layers.on_meta)
        nn.Embedding(cfg.vocab_size, width, _weight=torch.empty(cfg.vocab_size, width))
        if on_meta()
        else nn.Embedding(cfg.vocab_size, width)
    )
    owner.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, width))
    owner.transformer = Transformer(width, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.ln_eps)
    owner.ln_final = LayerNorm(width, eps=cfg.ln_eps)
    owner.text_projection = projection()
    init_(nn.init.normal_, owner.token_embedding.weight, std=0.02)
    init_(nn.init.normal_, owner.positional_embedding, std=0.01)
    owner.transformer.init_weights(
        proj_std=width**-0.5 * (2 * cfg.layers) ** -0.5, attn_std=width**-0.5, fc_std=(2 * width) ** -0.5
    )


def build_text_tower(owner: nn.Module, cfg: TextConfig, embed_dim: int) -> None:
    """Create the CLIP text tower's modules on ``owner`` (``text_projection`` a bare matrix)."""
    if cfg.kind != "clip":
        raise ValueError(f"the CLIP model needs a 'clip' text tower, not {cfg.kind!r}")
    build_text_trunk(owner, cfg, lambda: nn.Parameter(torch.empty(cfg.width, embed_dim)))
    init_(nn.init.normal_, owner.text_projection, std=cfg.width**-0.5)


def encode_text_tokens(owner: nn.Module, ids: torch.Tensor, cut: bool = True) -> torch.Tensor:
    """Unnormalised text features of token ids ``(N, ctx)``, pooled at the EOT token (highest id).

    The mask is causal, so positions after the last EOT in the batch cannot change the pooled features:
    with ``cut`` the sequence is cut there, and a short query runs on a handful of positions instead of
    the context. ``cut=False`` (ONNX export: the cut depends on the data) runs the whole sequence.
    """
    ids = ids.to(owner.token_embedding.weight.device, torch.long)
    if ids.ndim != 2 or ids.shape[1] > owner.positional_embedding.shape[0]:
        raise ValueError(
            f"token ids must be (N, <= {owner.positional_embedding.shape[0]}), got {tuple(ids.shape)}"
        )
    eot = ids.argmax(dim=-1)
    if cut:
        length = int(eot.max()) + 1 if ids.shape[0] else 1
        ids = ids[:, :length]
    x = owner.token_embedding(ids) + owner.positional_embedding[: ids.shape[1]]
    x = owner.transformer(x, is_causal=True)
    x = owner.ln_final(x[torch.arange(x.shape[0], device=x.device), eot])
    return x @ owner.text_projection

"""Transformer building blocks shared by the CLIP and SigLIP towers.

Parameter names follow OpenAI's CLIP (``attn.in_proj_weight``, ``attn.out_proj``, ``mlp.c_fc``,
``mlp.c_proj``, ``ln_1``/``ln_2``, ``resblocks.N``) so that OpenAI and open_clip checkpoints load without
renaming. Optional extras use open_clip's names: ``ls_1.gamma`` / ``ls_2.gamma`` (LayerScale) and
``attn.ln_q`` / ``attn.ln_k`` (qk-norm). Activations are batch-first ``(N, L, C)``; attention goes through
``torch.nn.functional.scaled_dot_product_attention``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def on_meta() -> bool:
    """Whether modules are being built on the meta device (``with torch.device("meta")``): no memory and
    no initial values, the checkpoint's tensors are assigned afterwards. Random or scaled initial values
    are skipped there (:func:`initial`, :func:`init_`): torch's meta kernels for ``randn``, ``normal_`` or
    a tensor times a number are Python code whose first use imports torch._dynamo and sympy, seconds of
    start-up for values nobody reads."""
    return torch.empty(()).is_meta


def initial(shape: tuple[int, ...], make: Callable[[], torch.Tensor]) -> nn.Parameter:
    """A parameter holding ``make()`` (its initial values), or an empty one of ``shape`` on the meta
    device. ``make`` is called exactly as before otherwise, so seeded random initialisation is unchanged."""
    return nn.Parameter(torch.empty(shape) if on_meta() else make())


def init_(fn: Callable, *args, **kwargs) -> None:
    """``fn(*args, **kwargs)`` (an in-place ``nn.init`` function) unless building on the meta device."""
    if not on_meta():
        fn(*args, **kwargs)


class LayerNorm(nn.LayerNorm):
    """LayerNorm that always normalises in float32 and casts back (safe under fp16/bf16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    """OpenAI's sigmoid approximation of GELU: ``x * sigmoid(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def get_activation(name: str) -> nn.Module:
    """``gelu`` (exact), ``quick_gelu`` (OpenAI) or ``gelu_tanh`` (SigLIP's approximate GELU)."""
    if name == "gelu":
        return nn.GELU()
    if name == "quick_gelu":
        return QuickGELU()
    if name in ("gelu_tanh", "gelu_pytorch_tanh"):
        return nn.GELU(approximate="tanh")
    raise ValueError(f"unknown activation {name!r} (expected gelu, quick_gelu or gelu_tanh)")


def mlp(width: int, mlp_ratio: float, act: str) -> nn.Sequential:
    """``c_fc`` -> activation -> ``c_proj`` (OpenAI's MLP names)."""
    hidden = int(width * mlp_ratio)
    return nn.Sequential(
        OrderedDict(
            [
                ("c_fc", nn.Linear(width, hidden)),
                ("gelu", get_activation(act)),
                ("c_proj", nn.Linear(hidden, width)),
            ]
        )
    )


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.gamma = initial((dim,), lambda: init_value * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class MultiheadAttention(nn.Module):
    """Self-attention with a packed ``in_proj_weight`` (3C, C) like ``torch.nn.MultiheadAttention``."""

    def __init__(self, width: int, heads: int, qk_norm: bool = False, eps: float = 1e-5):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = width // heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        # Optional stand-in module for the packed in-projection ``F.linear(x, in_proj_weight, in_proj_bias)``
        # (int8 inference puts a quantised Linear of those weights here); not in the state dict.
        self.in_proj: Optional[nn.Module] = None
        if qk_norm:
            self.ln_q = LayerNorm(self.head_dim, eps=eps)
            self.ln_k = LayerNorm(self.head_dim, eps=eps)
        else:
            self.ln_q = self.ln_k = None
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def drop_key_bias_grad(self) -> None:
        """Zero the key bias's gradient, which is exactly zero in exact arithmetic: the bias adds
        ``q . b_k`` to every key's score of a query alike, and softmax ignores that. Computed, it is
        rounding noise that Adam would turn into steps of the learning rate's size (a different noise
        with every summation order, so N processes and one would train different key biases). Not with
        qk-norm, where the keys are normalised after the bias."""
        grad = self.in_proj_bias.grad
        if grad is not None and self.ln_k is None:
            width = grad.shape[0] // 3
            grad[width : 2 * width] = 0

    def forward(
        self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False
    ) -> torch.Tensor:
        n, length, width = x.shape
        if self.in_proj is None:
            qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        else:
            qkv = self.in_proj(x)
        qkv = qkv.view(n, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (N, heads, L, head_dim)
        if self.ln_q is not None:
            q, k = self.ln_q(q), self.ln_k(k)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        x = x.transpose(1, 2).reshape(n, length, width)
        return self.out_proj(x)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``, optional LayerScale on both."""

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float = 4.0,
        act: str = "gelu",
        eps: float = 1e-5,
        qk_norm: bool = False,
        layer_scale_init: Optional[float] = None,
    ):
        super().__init__()
        self.ln_1 = LayerNorm(width, eps=eps)
        self.attn = MultiheadAttention(width, heads, qk_norm=qk_norm, eps=eps)
        self.ln_2 = LayerNorm(width, eps=eps)
        self.mlp = mlp(width, mlp_ratio, act)
        if layer_scale_init is not None:
            self.ls_1 = LayerScale(width, layer_scale_init)
            self.ls_2 = LayerScale(width, layer_scale_init)
        else:
            self.ls_1 = self.ls_2 = None

    def forward(
        self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False
    ) -> torch.Tensor:
        a = self.attn(self.ln_1(x), attn_mask=attn_mask, is_causal=is_causal)
        x = x + (self.ls_1(a) if self.ls_1 is not None else a)
        m = self.mlp(self.ln_2(x))
        return x + (self.ls_2(m) if self.ls_2 is not None else m)


class Transformer(nn.Module):
    """A stack of :class:`ResidualAttentionBlock` under ``resblocks.N``; batch-first input."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float = 4.0,
        act: str = "gelu",
        eps: float = 1e-5,
        qk_norm: bool = False,
        layer_scale_init: Optional[float] = None,
    ):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(
            [
                ResidualAttentionBlock(width, heads, mlp_ratio, act, eps, qk_norm, layer_scale_init)
                for _ in range(layers)
            ]
        )

    def forward(
        self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False
    ) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask=attn_mask, is_causal=is_causal)
        return x

    def init_weights(self, proj_std: float, attn_std: float, fc_std: float) -> None:
        """OpenAI's initialisation of the block weights (none on the meta device)."""
        if on_meta():
            return
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


class TwoTowerModel(nn.Module):
    """What CLIP and SigLIP share around their towers: ``encode_image`` / ``encode_text`` with a clear
    error for a tower left out, ``keep_towers`` (free a tower; checkpoint loading then skips its keys,
    listed in ``dropped_key_prefixes``) and ``text_state_dict``. A subclass names its text tower's
    attributes (``TEXT_ATTRS``) and state-dict key prefixes (``TEXT_KEY_PREFIXES``) and implements
    ``text_features``."""

    TEXT_ATTRS: tuple[str, ...] = ()
    TEXT_KEY_PREFIXES: tuple[str, ...] = ()
    VISUAL_KEY_PREFIX = "visual."

    def __init__(self):
        super().__init__()
        self.dropped_key_prefixes: tuple[str, ...] = ()

    def text_features(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def traceable_text_features(self, ids: torch.Tensor) -> torch.Tensor:
        """``text_features`` without data-dependent control flow (for ``torch.export`` / ONNX): the
        same features on full-context ids."""
        return self.text_features(ids)

    def _has_text(self) -> bool:
        return all(getattr(self, a, None) is not None for a in self.TEXT_ATTRS)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        if self.visual is None:
            raise RuntimeError("this model was loaded without its image tower")
        return self.visual(x)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        if not self._has_text():
            raise RuntimeError("this model was loaded without its text tower")
        return self.text_features(ids)

    def keep_towers(self, towers: Iterable[str]) -> None:
        """Free the towers not in ``towers`` (``image`` / ``text``)."""
        towers = set(towers)
        dropped = list(self.dropped_key_prefixes)
        if "image" not in towers and self.visual is not None:
            self.visual = None
            dropped.append(self.VISUAL_KEY_PREFIX)
        if "text" not in towers and self._has_text():
            for a in self.TEXT_ATTRS:
                setattr(self, a, None)
            dropped.extend(self.TEXT_KEY_PREFIXES)
        self.dropped_key_prefixes = tuple(dropped)

    def text_state_dict(self) -> dict:
        """The text tower's tensors under the model's own key names."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(self.TEXT_KEY_PREFIXES)}

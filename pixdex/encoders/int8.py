"""Int8 dynamic quantisation of the ViT image tower's Linear layers, for faster CPU inference.

On a CPU without fast bf16 (a 2-core AVX2 laptop), a ViT-B/32 spends ~95% of its time in the four
linear layers of each block (qkv, out, fc, proj). fbgemm's dynamic int8 GEMM (weights quantised per
output channel once, activations per batch on the fly) runs them 2-3x faster.

The int8 tower is the float tower's own module tree with only those layers swapped: a copy of the
modules that shares every float tensor, whose ``nn.Linear`` layers ``torch.ao``'s ``quantize_dynamic``
replaces with dynamically quantised ones, and whose packed attention in-projection goes through the
attention module's ``in_proj`` slot (a Linear over the same weights, quantised alike). Every ``forward``
that runs is the model's own (:mod:`pixdex.encoders.vit`, :mod:`pixdex.encoders.layers`); patch
embedding, LayerNorms, attention and GELU stay float32. Activation scales are per batch, so an image's
int8 embedding varies slightly (cosine > 0.999) with its batch-mates.

Quantisation must not change what a store holds: :class:`Int8Tower` checks itself on the first real
batch it sees (int8 vs float32 on up to :data:`CHECK_IMAGES` of its images) and falls back to float32 for
good if any embedding is below :data:`MIN_COSINE`. The check's outcome (the minimum cosine) is
remembered per weights file, model and torch build in the user cache dir (:data:`CHECKS_FILE`), so only
the first run with a given checkpoint pays for the float32 probe (about as long as encoding the batch);
randomly initialised models, which have no weights file, are checked on every run. Only used on CPU;
``PIXDEX_FAST=0`` turns it off.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

MIN_COSINE = 0.999  # per image, fast path vs float32, on the first batch
MIN_WIDTH = 256  # narrower towers gain nothing from int8 GEMMs
CHECK_IMAGES = 8  # images of the first batch encoded both ways for the check
CHECKS_FILE = "int8_checks.json"  # in the user cache dir: check key -> minimum cosine seen


def enabled() -> bool:
    return os.environ.get("PIXDEX_FAST", "1").strip().lower() not in ("0", "false", "no", "off")


def is_wide_transformer(visual) -> bool:
    """A transformer image tower (CLIP ViT or SigLIP's) wide enough to gain from int8."""
    from pixdex.encoders.siglip import SigLIPVisionTower
    from pixdex.encoders.vit import VisionTransformer

    return (
        isinstance(visual, (VisionTransformer, SigLIPVisionTower)) and visual.transformer.width >= MIN_WIDTH
    )


def speed_up(encoder) -> bool:
    """Swap the encoder's ViT image tower for an :class:`Int8Tower` when on CPU. True when swapped."""
    model = getattr(encoder, "model", None)
    visual = getattr(model, "visual", None)
    if (
        not enabled()
        or str(getattr(encoder, "device", "cpu")) != "cpu"
        or visual is None
        or is_quantized(visual)
        or not is_wide_transformer(visual)
    ):
        return False
    key, known = remembered_check(encoder, "int8")
    if known is not None and known < MIN_COSINE:
        return False
    try:
        tower = Int8Tower(visual, check_key=key)
    except (RuntimeError, AttributeError) as e:  # no fbgemm/x86 engine in this torch build
        log.info("int8 image tower unavailable (%s); using float32", e)
        return False
    if known is not None:
        tower.checked, tower.min_cosine = True, known
    model.visual = tower
    log.info(
        "image tower: int8 dynamic quantisation of %d linear layers (%s)",
        count_quantized(tower.int8_visual),
        f"min cosine {known:.4f} vs float32 when checked before"
        if known is not None
        else "checked on the first batch",
    )
    return True


def remembered_check(encoder, label: str) -> tuple[Optional[str], Optional[float]]:
    """(key, minimum cosine) of the ``label`` fast path's first-batch check remembered for this encoder's
    weights (None, None without a weights file; key, None when not checked yet). A remembered failure is
    logged here: the caller then keeps float32."""
    key = _check_key(encoder)
    if key is None:
        return None, None
    key = key if label == "int8" else f"{key}|{label}"
    known = _checks().get(key)
    if known is not None and known < MIN_COSINE:
        log.info(
            "%s image tower off: cosine %.4f < %.3f vs float32 on this model before", label, known, MIN_COSINE
        )
    return key, known


def _check_key(encoder) -> Optional[str]:
    """What a remembered check is valid for: the weights file's SHA-256, the model and the torch build;
    None (check every run) without a weights file."""
    if getattr(encoder, "weights_path", None) is None:
        return None
    try:
        sha = encoder.checkpoint_sha256()
    except (OSError, AttributeError):
        return None
    return f"{getattr(encoder, 'name', '')}|{sha}|torch {torch.__version__}|{_engine()}"


def _checks_path():
    from pixdex.encoders.checksum import cache_dir

    root = cache_dir()
    return root / CHECKS_FILE if root is not None else None


def _checks() -> dict:
    path = _checks_path()
    try:
        d = json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in d.items() if isinstance(v, (int, float))} if isinstance(d, dict) else {}


def _remember(key: str, min_cosine: float) -> None:
    from pixdex.fsutil import atomic_write

    path = _checks_path()
    if path is None:
        return
    d = _checks()
    d[key] = min_cosine
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(d, indent=0), durable=False)
    except OSError as e:
        log.debug("cannot remember the int8 check in %s: %s", path, e)


def is_quantized(visual) -> bool:
    """Whether ``visual`` is already a checked fast tower (int8, or ONNX Runtime's)."""
    return isinstance(visual, CheckedTower)


def _engine() -> str:
    engines = torch.backends.quantized.supported_engines
    for e in ("x86", "fbgemm"):
        if e in engines:
            return e
    raise RuntimeError(f"no x86/fbgemm quantized engine (have {engines})")


def _linear_over(weight: nn.Parameter, bias: Optional[nn.Parameter]) -> nn.Linear:
    """An ``nn.Linear`` whose parameters are ``weight`` / ``bias`` themselves (no copy, no random init)."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    lin.weight = weight
    if bias is not None:
        lin.bias = bias
    return lin


def int8_twin(visual: nn.Module) -> nn.Module:
    """A copy of the ViT ``visual`` whose Linear layers (attention in/out projections, MLP) are
    dynamically quantised to int8; every other module and tensor is ``visual``'s own, shared."""
    torch.backends.quantized.engine = _engine()
    shared = {id(t): t for t in itertools.chain(visual.parameters(), visual.buffers())}
    twin = copy.deepcopy(visual, shared)  # new module objects, the same tensors
    for block in twin.transformer.resblocks:
        block.attn.in_proj = _linear_over(block.attn.in_proj_weight, block.attn.in_proj_bias)
    with warnings.catch_warnings():  # torch.ao eager quantisation is deprecated but still the fbgemm path
        warnings.simplefilter("ignore")
        _swap_linears(twin)
    return twin


def _swap_linears(module: nn.Module) -> None:
    for name, child in module.named_children():
        if type(child) is nn.Linear:
            setattr(module, name, int8_linear(child))
        else:
            _swap_linears(child)


def int8_linear(lin: nn.Linear) -> nn.Module:
    """``torch.ao``'s dynamic int8 Linear of ``lin``, as ``quantize_dynamic`` with the per-channel dynamic
    qconfig makes it (the same weight observer, qparams and rounding: identical outputs), without its
    constructor's packing of a full-size placeholder weight first (a third of the conversion time)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    observer = per_channel_dynamic_qconfig.weight()
    observer(lin.weight)
    scale, zero_point = observer.calculate_qparams()
    qweight = torch.quantize_per_channel(
        lin.weight.float(), scale.to(torch.double), zero_point.to(torch.int64), observer.ch_axis, torch.qint8
    )
    q = DynamicQuantizedLinear(1, 1, dtype=torch.qint8)  # a 1x1 placeholder, replaced just below
    q.in_features, q.out_features = lin.in_features, lin.out_features
    q.set_weight_bias(qweight, lin.bias)
    return q


def count_quantized(module: nn.Module) -> int:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return sum(isinstance(m, DynamicQuantizedLinear) for m in module.modules())


class CheckedTower(nn.Module):
    """A float32 image tower and a faster approximation of it (``fast_visual``: the int8 twin, an ONNX
    Runtime session, ...), with the first-batch self-check: on the first CPU batch both run on up to
    :data:`CHECK_IMAGES` images; below :data:`MIN_COSINE` on any of them the fast path is off for good."""

    label = "fast"

    def __init__(self, visual: nn.Module, fast: nn.Module, check_key: Optional[str] = None):
        super().__init__()
        self.float_visual = visual
        # Not registered as a submodule: the model's state dict stays the float tower's (the fast path is
        # derived from it, and unpacking int8 weights on every ``state_dict()`` would cost ~0.4 s).
        object.__setattr__(self, "fast_visual", fast)
        self.checked: Optional[bool] = None  # None: not yet compared with float32; False: fell back
        self.min_cosine: Optional[float] = None
        self.check_key = check_key  # where the check's outcome is remembered (None: not remembered)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checked is False or x.device.type != "cpu":
            return self.float_visual(x)
        if self.checked is None:
            probe = x[:CHECK_IMAGES]
            ref = self.float_visual(probe)
            got = self.fast_visual(probe)
            cos = F.cosine_similarity(got.float(), ref.float(), dim=-1)
            self.min_cosine = float(cos.min())
            self.checked = self.min_cosine >= MIN_COSINE
            if self.check_key is not None:
                _remember(self.check_key, self.min_cosine)
            rest = x[CHECK_IMAGES:]
            if not self.checked:
                log.warning(
                    "%s image tower off: cosine %.4f < %.3f vs float32 on this model; using float32",
                    self.label,
                    self.min_cosine,
                    MIN_COSINE,
                )
                return torch.cat([ref, self.float_visual(rest)]) if len(rest) else ref
            return torch.cat([ref, self.fast_visual(rest)]) if len(rest) else ref
        return self.fast_visual(x)


class Int8Tower(CheckedTower):
    """The float32 tower and its int8 twin (:func:`int8_twin`), with the first-batch self-check."""

    label = "int8"

    def __init__(self, visual: nn.Module, check_key: Optional[str] = None):
        super().__init__(visual, int8_twin(visual), check_key)

    @property
    def int8_visual(self) -> nn.Module:
        return self.fast_visual

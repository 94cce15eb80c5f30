"""CLIP and SigLIP text towers in numpy: the torch-free half of a text query.

`pixdex search "a dog"` must answer without `import torch` (which alone costs seconds). The text tower's
weights are exported into the store by :mod:`pixdex.encoders.textexport` as a safetensors file with the
canonical key names below; this module memory-maps that file (so only the token-embedding rows a query
uses are ever read) and runs the transformer with numpy matmuls.

Canonical keys (``W`` = text width, ``D`` = embedding dim)::

    token_embedding            (vocab, W)
    positional_embedding       (ctx, W)
    blocks.{i}.ln_1.weight/.bias, blocks.{i}.ln_2.weight/.bias           (W,)
    blocks.{i}.attn.in_proj_weight (3W, W), blocks.{i}.attn.in_proj_bias (3W,)
    blocks.{i}.attn.out_proj.weight (W, W), blocks.{i}.attn.out_proj.bias (W,)
    blocks.{i}.mlp.c_fc.weight (H, W), .bias (H,); blocks.{i}.mlp.c_proj.weight (W, H), .bias (W,)
    ln_final.weight/.bias      (W,)
    proj                       (W, D)     pooled @ proj
    proj_bias                  (D,)       SigLIP only

CLIP (``kind="clip"``): causal mask, pooled at the EOT token (the highest id in each row). Because the
mask is causal, tokens after the last EOT in a batch cannot change the pooled features, so the sequence
is cut there: a short query runs on a handful of positions instead of the full context.
SigLIP (``kind="siglip"``): no mask, pooled at the last position, projection with bias.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Optional

import numpy as np

from pixdex.errors import PixdexError
from pixdex.fsutil import atomic_write

log = logging.getLogger(__name__)

_ST_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "F64": np.float64,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def read_safetensors(path: Path, mmap: bool = True) -> dict[str, np.ndarray]:
    """Read a safetensors file into numpy arrays without the safetensors or torch packages.

    With ``mmap`` the arrays are read-only views of a memory map: nothing is read until used.
    BF16 tensors are widened to float32 (a copy).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise PixdexError(f"{path}: not a safetensors file (too short)")
            n = int.from_bytes(head, "little")
            if n <= 0 or n > 100_000_000:
                raise PixdexError(f"{path}: not a safetensors file (bad header length)")
            header = json.loads(f.read(n))
    except OSError as e:
        raise PixdexError(f"cannot read {path}: {e.strerror or e}") from e
    except ValueError as e:
        raise PixdexError(f"{path}: not a safetensors file ({e})") from e
    base = 8 + n
    if mmap:
        buf = np.memmap(path, dtype=np.uint8, mode="r")
    else:
        buf = np.fromfile(path, dtype=np.uint8)
    out: dict[str, np.ndarray] = {}
    try:
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = (int(x) for x in info["data_offsets"])
            if not 0 <= begin <= end or base + end > buf.size:
                raise PixdexError(
                    f"{path}: truncated or damaged (tensor {name} ends at byte {base + end}, "
                    f"the file has {buf.size})"
                )
            raw = buf[base + begin : base + end]
            shape = tuple(int(d) for d in info["shape"])
            dt = info["dtype"]
            if dt == "BF16":
                arr = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
            elif dt in _ST_DTYPES:
                arr = raw.view(_ST_DTYPES[dt])
            else:
                raise PixdexError(f"{path}: unsupported tensor dtype {dt} for {name}")
            out[name] = arr.reshape(shape)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a header that lies about its tensors
        raise PixdexError(f"{path}: damaged safetensors header ({e})") from e
    return out


def write_safetensors(path: Path, tensors: Mapping[str, np.ndarray], metadata: Optional[dict] = None) -> None:
    """Write numpy arrays as a safetensors file (readable by `safetensors.numpy.load_file`), atomically."""
    names = {np.dtype(v): k for k, v in _ST_DTYPES.items()}
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    arrays = []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        if a.dtype not in names:
            raise PixdexError(f"cannot write tensor {name} of dtype {a.dtype}")
        header[name] = {
            "dtype": names[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + a.nbytes],
        }
        offset += a.nbytes
        arrays.append(a)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)  # keep the data 8-byte aligned

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(len(hb).to_bytes(8, "little"))
            f.write(hb)
            for a in arrays:
                f.write(a.tobytes())

    atomic_write(path, write)


# ----------------------------------------------------------------------------- numerics


def _erf(x: np.ndarray) -> np.ndarray:
    """erf for float32 arrays (Abramowitz & Stegun 7.1.26; absolute error < 1.5e-7)."""
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return s * (1.0 - y * np.exp(-a * a))


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x * np.float32(1.0 / math.sqrt(2.0))))


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    c = np.float32(math.sqrt(2.0 / math.pi))
    return 0.5 * x * (1.0 + np.tanh(c * (x + np.float32(0.044715) * x * x * x)))


def _quick_gelu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(np.float32(-1.702) * x))


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gelu": _gelu,
    "gelu_tanh": _gelu_tanh,
    "quick_gelu": _quick_gelu,
}


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(axis=-1, keepdims=True)
    return xc / np.sqrt(var + np.float32(eps)) * w + b


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


# ----------------------------------------------------------------------------- tower


class NumpyTextTower:
    """A CLIP/SigLIP text transformer over numpy arrays with canonical key names.

    ``kind``: ``clip`` or ``siglip``; ``heads``: attention heads; ``act``: gelu | gelu_tanh | quick_gelu.
    """

    def __init__(
        self,
        tensors: Mapping[str, np.ndarray],
        kind: str = "clip",
        heads: int = 8,
        act: str = "gelu",
        ln_eps: float = 1e-5,
    ):
        if kind not in ("clip", "siglip"):
            raise PixdexError(f"unknown text tower kind {kind!r} (expected clip or siglip)")
        if act not in ACTIVATIONS:
            raise PixdexError(f"unknown activation {act!r} (expected one of {sorted(ACTIVATIONS)})")
        missing = [
            k
            for k in ("token_embedding", "positional_embedding", "ln_final.weight", "ln_final.bias", "proj")
            if k not in tensors
        ]
        if missing:
            raise PixdexError(f"text tower weights are missing {missing}")
        self.t = tensors
        self.kind = kind
        self.heads = int(heads)
        self.act = ACTIVATIONS[act]
        self.eps = float(ln_eps)
        self.layers = 0
        while f"blocks.{self.layers}.ln_1.weight" in tensors:
            self.layers += 1
        if self.layers == 0:
            raise PixdexError("text tower weights have no transformer blocks")
        self.width = int(tensors["token_embedding"].shape[1])
        self.context_length = int(tensors["positional_embedding"].shape[0])
        self.dim = int(tensors["proj"].shape[1])
        if self.width % self.heads:
            raise PixdexError(f"text width {self.width} is not divisible by {self.heads} heads")

    def _block(self, i: int, x: np.ndarray, mask: Optional[np.ndarray]) -> np.ndarray:
        t = self.t
        p = f"blocks.{i}."
        n, L, W = x.shape
        h = self.heads
        hd = W // h
        y = _layer_norm(x, t[p + "ln_1.weight"], t[p + "ln_1.bias"], self.eps)
        qkv = y @ t[p + "attn.in_proj_weight"].T + t[p + "attn.in_proj_bias"]
        qkv = qkv.reshape(n, L, 3, h, hd).transpose(2, 0, 3, 1, 4)  # (3, n, h, L, hd)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q * np.float32(1.0 / math.sqrt(hd))) @ k.transpose(0, 1, 3, 2)
        if mask is not None:
            scores = scores + mask
        att = _softmax(scores) @ v  # (n, h, L, hd)
        att = att.transpose(0, 2, 1, 3).reshape(n, L, W)
        x = x + (att @ t[p + "attn.out_proj.weight"].T + t[p + "attn.out_proj.bias"])
        y = _layer_norm(x, t[p + "ln_2.weight"], t[p + "ln_2.bias"], self.eps)
        y = self.act(y @ t[p + "mlp.c_fc.weight"].T + t[p + "mlp.c_fc.bias"])
        return x + (y @ t[p + "mlp.c_proj.weight"].T + t[p + "mlp.c_proj.bias"])

    def features(self, ids: np.ndarray) -> np.ndarray:
        """Unnormalised text features (N, D) float32 for token ids (N, ctx)."""
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise PixdexError(f"token ids must be 2-D (N, ctx), got shape {ids.shape}")
        if ids.shape[1] > self.context_length:
            raise PixdexError(
                f"token ids are longer ({ids.shape[1]}) than the context ({self.context_length})"
            )
        vocab = self.t["token_embedding"].shape[0]
        if ids.size and (ids.min() < 0 or ids.max() >= vocab):
            raise PixdexError(f"token ids outside the vocabulary (0..{vocab - 1})")
        if self.kind == "clip":
            eot = ids.argmax(axis=-1)
            L = int(eot.max()) + 1 if ids.shape[0] else 1
            ids = ids[:, :L]  # causal mask: later positions cannot reach the EOT token
            mask = np.triu(np.full((L, L), -np.inf, dtype=np.float32), 1)
        else:
            L = ids.shape[1]
            mask = None
        x = np.asarray(self.t["token_embedding"][ids.ravel()], dtype=np.float32).reshape(ids.shape[0], L, -1)
        x = x + self.t["positional_embedding"][:L]
        for i in range(self.layers):
            x = self._block(i, x, mask)
        x = _layer_norm(x, self.t["ln_final.weight"], self.t["ln_final.bias"], self.eps)
        if self.kind == "clip":
            pooled = x[np.arange(x.shape[0]), eot]
        else:
            pooled = x[:, -1]
        out = pooled @ self.t["proj"]
        if "proj_bias" in self.t:
            out = out + self.t["proj_bias"]
        return np.ascontiguousarray(out, dtype=np.float32)

    def encode_ids(self, ids: np.ndarray) -> np.ndarray:
        """L2-normalised embeddings (N, D) float32."""
        f = self.features(ids)
        norm = np.linalg.norm(f, axis=1, keepdims=True)
        return f / np.maximum(norm, np.float32(1e-12))


def from_safetensors(
    path: Path, kind: str = "clip", heads: int = 8, act: str = "gelu", ln_eps: float = 1e-5
) -> NumpyTextTower:
    """Memory-map a canonical text-tower safetensors file into a :class:`NumpyTextTower`."""
    return NumpyTextTower(read_safetensors(path), kind=kind, heads=heads, act=act, ln_eps=ln_eps)

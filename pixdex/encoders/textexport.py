"""Export a model's text tower into a store so that text queries run without torch.

``export_text_tower(encoder, store_dir)`` (torch side: the indexer calls it when a store is bound to a
model) writes two files into the store:

- ``text_tower.safetensors``: the text transformer's weights in float32 under the canonical key names of
  :mod:`pixdex.encoders.numpy_text` (loadable with ``safetensors.numpy.load_file`` too);
- ``text_tower.json``: format version, the encoder's identity (the store is bound to it), the full
  ModelConfig (for the tokenizer) and the tower's hyper-parameters;
- for SentencePiece tokenizers (SigLIP), a copy of the tokenizer model file, so the store works offline.

``load_text_encoder(store_dir, identity)`` (numpy side, no torch import) returns a
:class:`TextQueryEncoder` if the exported tower belongs to ``identity``, else None.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import numpy as np

from pixdex.encoders.state_dict_layout import RESBLOCK_PARAM_KEYS
from pixdex.errors import PixdexError
from pixdex.fsutil import atomic_write
from pixdex.paths import pixdex_command
from pixdex.storage.contract import TEXT_TOWER_FILE, TEXT_TOWER_FORMAT, TEXT_TOWER_META, same_model

log = logging.getLogger(__name__)

_BLOCK_KEYS = RESBLOCK_PARAM_KEYS
_BLOCK_RE = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_IGNORED = {"attn_mask", "logit_scale", "logit_bias"}


def _np(v) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor (export runs on the torch side)
        v = v.detach().cpu().float().numpy()
    return np.ascontiguousarray(np.asarray(v, dtype=np.float32))


def canonical_text_weights(state: Mapping[str, object]) -> dict[str, np.ndarray]:
    """Map a text-tower state dict (OpenAI/open_clip names, optional ``text.`` prefix) to canonical keys."""
    out: dict[str, np.ndarray] = {}
    unexpected: list[str] = []
    for key, value in state.items():
        k = key[5:] if key.startswith("text.") else key
        m = _BLOCK_RE.match(k)
        if m and m.group(2) in _BLOCK_KEYS:
            out[f"blocks.{m.group(1)}.{m.group(2)}"] = _np(value)
        elif k == "token_embedding.weight":
            out["token_embedding"] = _np(value)
        elif k in ("positional_embedding", "ln_final.weight", "ln_final.bias"):
            out[k] = _np(value)
        elif k == "text_projection":  # a (width, dim) matrix: pooled @ proj
            out["proj"] = _np(value)
        elif k in ("text_projection.weight", "head.weight", "proj.weight"):  # nn.Linear (dim, width)
            out["proj"] = _np(value).T.copy()
        elif k in ("text_projection.bias", "head.bias", "proj.bias"):
            out["proj_bias"] = _np(value)
        elif k.split(".")[-1] in _IGNORED or k in _IGNORED:
            continue
        else:
            unexpected.append(key)
    if unexpected:
        raise PixdexError(f"cannot export the text tower: unexpected weights {sorted(unexpected)[:8]}")
    layers = sorted({int(k.split(".")[1]) for k in out if k.startswith("blocks.")})
    missing = [
        k
        for k in ("token_embedding", "positional_embedding", "ln_final.weight", "ln_final.bias", "proj")
        if k not in out
    ]
    missing += [
        f"blocks.{i}.{b}" for i in range(len(layers)) for b in _BLOCK_KEYS if f"blocks.{i}.{b}" not in out
    ]
    if not layers or layers != list(range(len(layers))) or missing:
        raise PixdexError(
            f"cannot export the text tower: missing weights {missing[:8] or ['transformer blocks']}"
        )
    return out


def export_text_tower(encoder, store_dir: Path, force: bool = False) -> Path:
    """Write the encoder's text tower into ``store_dir``; returns the weights path.

    Skips the work when the store already holds a loadable tower of the same identity (unless ``force``).
    """
    store_dir = Path(store_dir)
    identity = encoder.identity()
    weights_path = store_dir / TEXT_TOWER_FILE
    if not force and text_tower_problem(store_dir, identity) is None:
        return weights_path
    meta_path = store_dir / TEXT_TOWER_META
    config = encoder.config
    if config.text.kind not in ("clip", "siglip"):
        raise PixdexError(f"cannot export a {config.text.kind!r} text tower")
    tensors = canonical_text_weights(encoder.text_state_dict())
    store_dir.mkdir(parents=True, exist_ok=True)
    from pixdex.encoders.numpy_text import write_safetensors

    write_safetensors(
        weights_path, tensors, metadata={"format": TEXT_TOWER_FORMAT, "model": identity.get("model")}
    )
    # A SentencePiece model file (SigLIP) travels with the tower: the store must work offline.
    sp_file = getattr(getattr(encoder, "tokenizer", None), "model_file", None)
    if config.tokenizer.kind == "sentencepiece" and sp_file:
        dst = store_dir / Path(config.tokenizer.sp_model_file).name
        atomic_write(dst, lambda tmp: shutil.copyfile(sp_file, tmp))
    meta = {
        "format": TEXT_TOWER_FORMAT,
        "identity": identity,
        "config": config.to_dict(),
        "tower": {
            "kind": config.text.kind,
            "heads": config.text.heads,
            "act": config.text.act,
            "ln_eps": config.text.ln_eps,
            "dim": int(tensors["proj"].shape[1]),
            # the model's temperature, for zero-shot probabilities (pixdex.encoders.zeroshot)
            "logit_scale": encoder.logit_scale,
            "logit_bias": encoder.logit_bias,
        },
    }
    atomic_write(meta_path, json.dumps(meta, indent=1, default=str))
    log.info("exported the text tower of %s to %s", identity.get("model"), weights_path)
    return weights_path


class TextQueryEncoder:
    """Numpy text encoder: tokenizer + :class:`NumpyTextTower`; ``encode_texts`` is L2-normalised."""

    def __init__(
        self,
        tower,
        tokenizer,
        dim: int,
        identity: dict,
        logit_scale: Optional[float] = None,
        logit_bias: Optional[float] = None,
    ):
        self.tower = tower
        self.tokenizer = tokenizer
        self.dim = dim
        self.identity = identity
        self.kind = tower.kind
        self.logit_scale = logit_scale  # None: exported by a pixdex that did not record it
        self.logit_bias = logit_bias

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        ids = np.asarray(self.tokenizer(list(texts)), dtype=np.int64)
        return self.tower.encode_ids(ids)


def _read_meta(store_dir: Path) -> Optional[dict]:
    try:
        meta = json.loads((store_dir / TEXT_TOWER_META).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == TEXT_TOWER_FORMAT else None


def text_tower_problem(store_dir: Path, identity: Optional[dict] = None) -> Optional[str]:
    """Why the store's exported text tower cannot serve ``identity`` (missing, another model's,
    truncated or damaged), or None when it looks whole. Cheap (no tokenizer, no numpy tower): the
    metadata and the weights' header, every tensor within the file; the index command runs it."""
    try:
        _load(Path(store_dir), identity, build=False)
    except _Unusable as e:
        return str(e)
    return None


class _Unusable(Exception):
    pass


def _load(store_dir: Path, identity: Optional[dict], build: bool = True) -> Optional[TextQueryEncoder]:
    meta = _read_meta(store_dir)
    if meta is None:
        raise _Unusable(f"no exported text tower in {store_dir} ({TEXT_TOWER_META} missing or unreadable)")
    if identity is not None and not same_model(meta.get("identity"), identity):
        raise _Unusable("the store's exported text tower belongs to another model")
    weights = store_dir / TEXT_TOWER_FILE
    if not weights.exists():
        raise _Unusable(f"{weights} is missing")
    from pixdex.encoders.config import ModelConfig
    from pixdex.encoders.numpy_text import from_safetensors, read_safetensors
    from pixdex.encoders.tokenizer import get_tokenizer

    try:
        if not build:
            read_safetensors(weights)
            if "logit_scale" not in meta["tower"]:  # an older export: zero-shot tags need the temperature
                raise _Unusable("the store's exported text tower predates the recorded temperature")
            return None
        t = meta["tower"]
        tower = from_safetensors(weights, kind=t["kind"], heads=t["heads"], act=t["act"], ln_eps=t["ln_eps"])
        config = ModelConfig.from_dict(meta["config"])
        tokenizer = get_tokenizer(config, model_dir=store_dir)  # SigLIP: the exported spiece.model
        return TextQueryEncoder(
            tower,
            tokenizer,
            int(t["dim"]),
            meta.get("identity") or {},
            t.get("logit_scale"),
            t.get("logit_bias"),
        )
    except PixdexError as e:
        raise _Unusable(str(e)) from e
    except (KeyError, TypeError, ValueError, OSError) as e:  # a damaged text_tower.json or weights
        raise _Unusable(f"the store's exported text tower is damaged ({type(e).__name__}: {e})") from e


def load_text_encoder(store_dir: Path, identity: Optional[dict] = None) -> Optional[TextQueryEncoder]:
    """The store's exported text tower, or None when absent, outdated, exported for another model, or
    damaged (truncated weights...): search then exports it again from the model."""
    try:
        return _load(Path(store_dir), identity)
    except _Unusable as e:
        log.info("%s", e)
        return None


def open_text_encoder(store_dir: Path, identity: dict, checkpoint: Optional[str] = None, need_logits=False):
    """The store's numpy text tower for ``identity``, exported once through torch when the store lacks it
    (or, with ``need_logits``, when its export predates the recorded temperature). Falls back to the torch
    encoder itself when the store cannot be written."""
    enc = load_text_encoder(store_dir, identity or None)
    if enc is not None and (enc.logit_scale is not None or not need_logits):
        return enc
    spec = (identity or {}).get("model")
    if not spec:
        raise PixdexError(
            f"the store at {store_dir} is not bound to a model yet; run: "
            f"{pixdex_command('index', 'FOLDER', store_dir=store_dir)}"
        )
    log.warning("the store has no usable exported text tower for %s; loading it with torch (once)", spec)
    from pixdex.encoders.encoder import load_encoder

    torch_enc = load_encoder(spec, checkpoint=checkpoint, device="cpu", towers=("text",))
    try:
        export_text_tower(torch_enc, store_dir)
        enc = load_text_encoder(store_dir, identity or None)
    except (OSError, PixdexError) as e:
        log.warning("cannot export the text tower into the store: %s", e)
        enc = None
    return enc if enc is not None else torch_enc

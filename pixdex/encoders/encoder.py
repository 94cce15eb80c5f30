"""``load_encoder(spec)``: a ready-to-use image/text encoder (model + preprocessing + tokenizer).

Weights come from, in this order: ``checkpoint`` (a file), a trained model directory's
``model.safetensors``, the bundled ``pixdex-demo`` weights, or the pretrained tag (``name:tag``, or the
registry's default tag for the name) through the Hugging Face cache. Random initialisation happens only
for the tiny test configs (``tiny-vit``, ``tiny-rn``) or when asked for explicitly with
``checkpoint="random"`` / ``random_init=True``; it is seeded, so the same config always gives the same
weights (and the same identity).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from pixdex.encoders.config import ModelConfig
from pixdex.errors import PixdexError
from pixdex.fsutil import atomic_write

log = logging.getLogger(__name__)

RANDOM = "random"
RANDOM_SEED = 0
TOWERS = ("image", "text")


# ----------------------------------------------------------------------------- spec resolution


@dataclass(frozen=True)
class ResolvedSpec:
    config: ModelConfig
    spec: str  # canonical, loadable again: registry name[:tag] or absolute directory
    weights: Optional[Path]  # None: random init
    checkpoint: Optional[str]  # the explicit --checkpoint (absolute), if any
    model_dir: Optional[Path]  # where a tokenizer model may sit beside the weights


def _config_from_json(path: Path) -> ModelConfig:
    try:
        d = json.loads(path.read_text())
        if isinstance(d, dict) and d.get("model_type") == "siglip":  # a transformers SigLIP directory
            from pixdex.encoders.siglip_configs import config_from_hf

            return config_from_hf(d, name=path.parent.name)
        return ModelConfig.from_dict(d)
    except OSError as e:
        raise PixdexError(f"cannot read model config {path}: {e.strerror or e}") from e
    except (ValueError, TypeError) as e:
        raise PixdexError(f"bad model config {path}: {e}") from e


def resolve_spec(
    spec: Union[str, Path], checkpoint: Optional[Union[str, Path]] = None, random_init: bool = False
) -> ResolvedSpec:
    """Work out the config and the weights file of a model spec (may download pretrained weights)."""
    from pixdex.encoders import registry

    if checkpoint is not None and str(checkpoint) == RANDOM:
        random_init, checkpoint = True, None
    ckpt = Path(checkpoint).expanduser().resolve() if checkpoint is not None else None
    if ckpt is not None and not ckpt.is_file():
        raise PixdexError(f"checkpoint not found: {checkpoint}")
    name, tag = registry.parse_spec(str(spec))
    if registry.is_model_dir(name):
        d = Path(name).expanduser().resolve()
        cfg_path = d / "config.json"
        if not cfg_path.is_file():
            raise PixdexError(f"{d} is not a model directory (no config.json)")
        config = _config_from_json(cfg_path)
        weights = ckpt or (None if random_init else d / "model.safetensors")
        if weights is not None and not weights.is_file():
            raise PixdexError(f"model directory {d} has no model.safetensors (pass --checkpoint)")
        return ResolvedSpec(config, str(d), weights, str(ckpt) if ckpt else None, d)
    if "/" in name or os.sep in name:
        raise PixdexError(f"model directory not found: {name}")
    config = registry.get_config(name)
    name = config.name
    if name == registry.DEMO_MODEL:
        demo_json = registry.demo_weights_path().with_suffix(".json")
        if demo_json.is_file():
            config = _config_from_json(demo_json)
    canonical = f"{name}:{tag}" if tag else name
    if tag and not random_init:
        from pixdex.encoders.pretrained import apply_pretrained_cfg, pretrained_cfg, resolve_pretrained

        if ckpt is not None:  # the tag still decides activation and preprocessing
            config = apply_pretrained_cfg(config, pretrained_cfg(config, tag))
            return ResolvedSpec(config, canonical, ckpt, str(ckpt), ckpt.parent)
        config, weights = resolve_pretrained(config, tag)
        return ResolvedSpec(config, canonical, weights, None, weights.parent)
    if ckpt is not None:
        return ResolvedSpec(config, canonical, ckpt, str(ckpt), ckpt.parent)
    if random_init or name in registry.RANDOM_INIT_OK:
        return ResolvedSpec(config, canonical, None, None, None)
    if name == registry.DEMO_MODEL:
        path = registry.demo_weights_path()
        if not path.is_file():
            raise PixdexError(
                f"the bundled demo weights are missing ({path}); train them with `pixdex train` "
                "or pass --checkpoint"
            )
        return ResolvedSpec(config, canonical, path, None, path.parent)
    default = registry.DEFAULT_TAGS.get(name)
    if default:
        from pixdex.encoders.pretrained import resolve_pretrained

        config, weights = resolve_pretrained(config, default)
        return ResolvedSpec(config, f"{name}:{default}", weights, None, weights.parent)
    raise PixdexError(
        f"model {name} has no default weights: give a pretrained tag ({name}:TAG, see "
        "`pixdex models`) or a weights file with --checkpoint"
    )


# ----------------------------------------------------------------------------- hashing


_HASH_LOCK = threading.Lock()
_HASHES: dict[tuple[str, int, int], str] = {}


def _hash_cache_file() -> Optional[Path]:
    env = os.environ.get("PIXDEX_CACHE_DIR")
    if env:
        return Path(env).expanduser() / "sha256.json"
    try:
        from platformdirs import user_cache_dir
    except ModuleNotFoundError:
        return None
    return Path(user_cache_dir("pixdex", appauthor=False)) / "sha256.json"


def file_sha256(path: Union[str, Path]) -> str:
    """SHA-256 of a file, cached by (path, size, mtime) in memory and in the user cache dir."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _HASH_LOCK:
        if key in _HASHES:
            return _HASHES[key]
    disk_key = f"{key[0]}|{key[1]}|{key[2]}"
    cache_file = _hash_cache_file()
    disk: dict[str, str] = {}
    if cache_file is not None:
        try:
            disk = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            disk = {}
        if isinstance(disk, dict) and isinstance(disk.get(disk_key), str):
            with _HASH_LOCK:
                _HASHES[key] = disk[disk_key]
            return disk[disk_key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    with _HASH_LOCK:
        _HASHES[key] = digest
    if cache_file is not None:
        try:
            disk = disk if isinstance(disk, dict) else {}
            disk = {k: v for k, v in disk.items() if not k.startswith(key[0] + "|")}
            disk[disk_key] = digest
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(cache_file, json.dumps(disk), durable=False)  # a cache: never torn
        except OSError as e:
            log.debug("cannot write the hash cache %s: %s", cache_file, e)
    return digest


# ----------------------------------------------------------------------------- encoder


def resolve_device(device: str = "auto") -> str:
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PixdexError(f"device {device!r} requested but CUDA is not available")
    if device != "cpu" and not device.startswith(("cuda", "mps")):
        raise PixdexError(f"unknown device {device!r} (auto, cpu or cuda)")
    return device


class Encoder:
    """A loaded model with its preprocessing and tokenizer; outputs are L2-normalised float32 numpy."""

    def __init__(self, model, resolved: ResolvedSpec, device: str, towers: tuple[str, ...]):
        from pixdex.encoders.preprocess import Preprocessor

        self.model = model
        self.config = resolved.config
        self.name = resolved.spec
        self.dim = resolved.config.embed_dim
        self.image_size = resolved.config.image_size
        self.device = device
        self.towers = towers
        self.weights_path = resolved.weights
        self.checkpoint = resolved.checkpoint
        self.model_dir = resolved.model_dir
        self.preprocess = Preprocessor(resolved.config.preprocess)
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from pixdex.encoders.tokenizer import get_tokenizer

            self._tokenizer = get_tokenizer(self.config, self.model_dir)
        return self._tokenizer

    def _need(self, tower: str) -> None:
        if tower not in self.towers:
            raise PixdexError(f"this encoder of {self.name} was loaded without its {tower} tower")

    def encode_images(self, batch) -> np.ndarray:
        """``(N, 3, S, S)`` preprocessed images (numpy or torch) -> ``(N, dim)``."""
        import torch
        import torch.nn.functional as F

        self._need("image")
        x = (
            torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            if isinstance(batch, np.ndarray)
            else batch
        )
        s = self.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, s, s):
            raise PixdexError(f"{self.name} expects images of shape (N, 3, {s}, {s}), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            feats = self.model.encode_image(x.to(self.device, torch.float32, non_blocking=True))
            feats = F.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        self._need("text")
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids = torch.from_numpy(self.tokenizer(texts))
        with torch.inference_mode():
            feats = self.model.encode_text(ids.to(self.device))
            feats = F.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy()

    def checkpoint_sha256(self) -> str:
        if self.weights_path is None:
            return f"random-init-seed{RANDOM_SEED}"
        return file_sha256(self.weights_path)

    def identity(self) -> dict:
        """What a store is bound to: model spec, weights hash, dim, preprocessing."""
        return {
            "model": self.name,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256(),
            "dim": self.dim,
            "preprocess": self.preprocess.to_dict(),
        }

    def text_state_dict(self) -> dict:
        """The text tower's tensors (OpenAI/open_clip names for CLIP) for exporting it."""
        self._need("text")
        return self.model.text_state_dict()


def _build(resolved: ResolvedSpec, towers: tuple[str, ...]):
    import torch

    from pixdex.encoders.build import build_model

    config = resolved.config
    if resolved.weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = build_model(config)
        _keep(model, towers)
        return model
    from pixdex.encoders.checkpoint import load_checkpoint

    with torch.device("meta"):  # no time spent on random init; the checkpoint's tensors are assigned
        model = build_model(config)
    saved = set(model.state_dict())
    if any(name not in saved for name, _ in model.named_buffers()):
        # non-persistent buffers are not in checkpoints: they need a real (CPU) build
        model = build_model(config)
    _keep(model, towers)
    load_checkpoint(model, resolved.weights, config)
    return model


def _keep(model, towers: tuple[str, ...]) -> None:
    if set(towers) == set(TOWERS):
        return
    if hasattr(model, "keep_towers"):
        model.keep_towers(towers)
    else:
        log.warning("%s cannot drop towers; keeping both", type(model).__name__)


def load_encoder(
    spec: Union[str, Path],
    checkpoint: Optional[Union[str, Path]] = None,
    device: str = "auto",
    towers: Iterable[str] = TOWERS,
    random_init: bool = False,
) -> Encoder:
    """Load a model spec into an :class:`Encoder` (see the module doc for where weights come from)."""
    towers = tuple(dict.fromkeys(towers))
    bad = [t for t in towers if t not in TOWERS]
    if not towers or bad:
        raise PixdexError(f"towers must be a subset of {TOWERS}, got {towers}")
    resolved = resolve_spec(spec, checkpoint, random_init)
    dev = resolve_device(device)
    model = _build(resolved, towers)
    model = model.to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    log.info("loaded %s (%s) on %s", resolved.spec, resolved.weights or "random init", dev)
    return Encoder(model, resolved, dev, towers)


def embed_one(
    model: str, checkpoint=None, text: Optional[str] = None, image=None, device: str = "auto"
) -> dict:
    """One embedding for ``pixdex embed``: ``{"model", "dim", "embedding"}``."""
    if (text is None) == (image is None):
        raise PixdexError("give exactly one of text or image")
    if image is not None:
        from pixdex.images import DecodeError, decode, draft_side, read_file

        path = os.path.expanduser(os.fspath(image))
        try:  # decoded as the indexer decodes it; a missing or unreadable file fails before any weights load
            data = read_file(path)
            enc = load_encoder(model, checkpoint=checkpoint, device=device, towers=("image",))
            img = decode(data, draft_side(enc.preprocess), name=path)[0]
        except DecodeError as e:
            raise PixdexError(f"cannot decode image {image}: {e}") from e
        vec = enc.encode_images(enc.preprocess(img)[None])[0]
    else:
        enc = load_encoder(model, checkpoint=checkpoint, device=device, towers=("text",))
        vec = enc.encode_texts([text])[0]
    return {"model": enc.name, "dim": int(vec.shape[0]), "embedding": [float(v) for v in vec]}

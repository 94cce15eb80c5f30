"""``load_encoder(spec)``: a ready-to-use image/text encoder (model + preprocessing + tokenizer).

Which config and weights a spec means is :func:`pixdex.encoders.spec.resolve_spec`'s job; the weights
file's hash (part of the identity a store is bound to) comes from :mod:`pixdex.encoders.checksum`.
Random initialisation (no weights file) is seeded, so the same config always gives the same weights (and
the same identity).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np

from pixdex.encoders.checksum import file_sha256
from pixdex.encoders.device_input import autocast_dtype
from pixdex.encoders.spec import ResolvedSpec, resolve_spec
from pixdex.errors import PixdexError
from pixdex.storage.contract import RANDOM_INIT_PREFIX

log = logging.getLogger(__name__)

RANDOM_SEED = 0
TOWERS = ("image", "text")


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
        self._input = None  # DeviceInput, made on first use
        # reduced precision on the device (bfloat16 on CUDA); None: float32. Set to None for exact float32.
        self.autocast_dtype = autocast_dtype(device)

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
        """Preprocessed images -> ``(N, dim)``: float32 ``(N, 3, S, S)`` normalised as
        :class:`~pixdex.encoders.preprocess.Preprocessor` does, or uint8 ``(N, S, S, 3)`` resized pixels
        (:meth:`~pixdex.encoders.preprocess.Preprocessor.pixels`, normalised here on the device);
        numpy or torch. Runs under :attr:`autocast_dtype` when set (CUDA: bfloat16)."""
        import torch
        import torch.nn.functional as F

        from pixdex.encoders.device_input import DeviceInput

        self._need("image")
        if self._input is None:
            pre = self.config.preprocess
            self._input = DeviceInput(self.device, pre.mean, pre.std, self.image_size)
        shape = tuple(batch.shape)
        uint8 = str(batch.dtype).endswith("uint8")
        if not self._input.check(shape, uint8):
            s = self.image_size
            want = f"(N, {s}, {s}, 3) uint8" if uint8 else f"(N, 3, {s}, {s})"
            raise PixdexError(f"{self.name} expects images of shape {want}, got {shape}")
        if shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            x = self._input.to_model(batch)
            with self._autocast():
                feats = self.model.encode_image(x)
            feats = F.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy()

    def _autocast(self):
        import contextlib

        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=self.autocast_dtype)

    def batch_size(self) -> int:
        """The image batch size for this encoder's device (:func:`device_input.auto_batch_size`)."""
        from pixdex.encoders.device_input import auto_batch_size

        return auto_batch_size(self.config, self.device)

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

    @property
    def kind(self) -> str:
        """``clip`` (softmax over classes) or ``siglip`` (sigmoid per label): see :mod:`.zeroshot`."""
        return self.config.text.kind

    @property
    def logit_scale(self) -> float:
        """The model's learned log inverse temperature (its cosines are multiplied by ``exp`` of it)."""
        return float(self.model.logit_scale.detach().float().cpu())

    @property
    def logit_bias(self) -> Optional[float]:
        b = getattr(self.model, "logit_bias", None)
        return None if b is None else float(b.detach().float().cpu())

    def checkpoint_sha256(self) -> str:
        if self.weights_path is None:
            return f"{RANDOM_INIT_PREFIX}-seed{RANDOM_SEED}"
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
    model: str,
    checkpoint=None,
    text: Optional[str] = None,
    image=None,
    device: str = "auto",
    backend: Optional[str] = None,
) -> dict:
    """One embedding for ``pixdex embed``: ``{"model", "dim", "embedding"}``; float32 torch unless a
    ``backend`` (:mod:`pixdex.encoders.backends`) is named."""
    if (text is None) == (image is None):
        raise PixdexError("give exactly one of text or image")
    if backend is not None:
        from pixdex.encoders.backends import apply_backend, check_backend

        check_backend(backend)

    def load(towers):
        enc = load_encoder(model, checkpoint=checkpoint, device=device, towers=towers)
        if backend is not None:
            apply_backend(enc, backend)
        return enc

    if image is not None:
        from pixdex.images import DecodeError, decode, draft_side, read_file

        path = os.path.expanduser(os.fspath(image))
        try:  # decoded as the indexer decodes it; a missing or unreadable file fails before any weights load
            data = read_file(path)
            enc = load(("image",))
            img = decode(data, draft_side(enc.preprocess), name=path)[0]
        except DecodeError as e:
            raise PixdexError(f"cannot decode image {image}: {e}") from e
        vec = enc.encode_images(enc.preprocess(img)[None])[0]
    else:
        enc = load(("text",))
        vec = enc.encode_texts([text])[0]
    return {"model": enc.name, "dim": int(vec.shape[0]), "embedding": [float(v) for v in vec]}

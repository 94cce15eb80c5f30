"""Pretrained weights: ``name:tag`` through open_clip's pretrained registry to a Hugging Face Hub file.

Files land in (and are read from) the Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``). The cache is
checked first without any network access; a download is attempted only when the file is not cached and
``HF_HUB_OFFLINE`` is not set. Every failure is one PixdexError that names the model, the file it needs
and ``--checkpoint``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import os
import sys
import types
from functools import lru_cache
from pathlib import Path
from typing import Optional

from pixdex.encoders.config import ModelConfig
from pixdex.errors import PixdexError

log = logging.getLogger(__name__)

SAFE_WEIGHTS = "open_clip_model.safetensors"
TORCH_WEIGHTS = "open_clip_pytorch_model.bin"


@lru_cache(maxsize=1)
def _registry():
    """open_clip's ``pretrained`` module, or None when open_clip is not installed.

    Importing the ``open_clip`` package pulls in torchvision, timm and its model code (seconds); the
    pretrained table needs none of it, so the module is loaded on its own under a private package name
    (its relative imports are only ``constants`` and ``version``). Falls back to the normal import.
    """
    if "open_clip" in sys.modules:
        import open_clip.pretrained

        return open_clip.pretrained
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        return None
    private = "_pixdex_open_clip"
    try:
        pkg = types.ModuleType(private)
        pkg.__path__ = list(spec.submodule_search_locations or [])
        sys.modules.setdefault(private, pkg)
        return importlib.import_module(f"{private}.pretrained")
    except ImportError as e:  # a layout this loader does not know: the ordinary way
        log.debug("loading open_clip.pretrained alone failed (%s); importing open_clip", e)
        import open_clip.pretrained

        return open_clip.pretrained


def _open_clip_name(config: ModelConfig) -> str:
    return config.open_clip_name or config.name


def pretrained_cfg(config: ModelConfig, tag: str) -> dict:
    """open_clip's pretrained entry for (model, tag); {} when unknown or open_clip is missing."""
    reg = _registry()
    return dict(reg.get_pretrained_cfg(_open_clip_name(config), tag) or {}) if reg else {}


def pretrained_tags(config: ModelConfig) -> list[str]:
    reg = _registry()
    return list(reg.list_pretrained_tags_by_model(_open_clip_name(config))) if reg else []


def hf_location(pcfg: dict) -> Optional[tuple[str, list[str]]]:
    """(repo_id, candidate file names, safetensors first) of a pretrained entry, or None."""
    hub = pcfg.get("hf_hub") or ""
    if not hub:
        return None
    repo_id, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
    if not filename:
        return repo_id, [SAFE_WEIGHTS, TORCH_WEIGHTS]
    names = [filename]
    if filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    return repo_id, names


def apply_pretrained_cfg(config: ModelConfig, pcfg: dict) -> ModelConfig:
    """The config adjusted to what a pretrained entry says: QuickGELU, mean/std, resize mode."""
    if pcfg.get("quick_gelu"):
        config = config.replace(
            vision=dataclasses.replace(config.vision, act="quick_gelu"),
            text=dataclasses.replace(config.text, act="quick_gelu"),
        )
    pre = {}
    for key in ("mean", "std", "interpolation", "resize_mode"):
        if pcfg.get(key) is not None:
            pre[key] = tuple(pcfg[key]) if key in ("mean", "std") else pcfg[key]
    if pre:
        config = config.replace(preprocess=dataclasses.replace(config.preprocess, **pre))
    return config


def _offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants
    except ModuleNotFoundError:
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def cached_file(repo_id: str, names: list[str]) -> Optional[Path]:
    """The first of ``names`` already in the HF cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ModuleNotFoundError:
        return None
    for name in names:
        hit = try_to_load_from_cache(repo_id, name)
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit)
    return None


def cached_tags(config: ModelConfig, tags: Optional[list[str]] = None) -> list[str]:
    """Pretrained tags of ``config`` whose weights are already in the HF cache (no network)."""
    out = []
    for tag in tags if tags is not None else pretrained_tags(config):
        loc = hf_location(pretrained_cfg(config, tag))
        if loc and cached_file(*loc):
            out.append(tag)
    return out


def _missing(config: ModelConfig, tag: str, what: str, why: str) -> PixdexError:
    return PixdexError(
        f"no weights for {config.name}:{tag}: {why}; it needs {what} "
        f"(connect to the internet once, or pass a weights file with --checkpoint)"
    )


def resolve_pretrained(config: ModelConfig, tag: str) -> tuple[ModelConfig, Path]:
    """(config adjusted for the tag, local weights file) for ``config.name:tag``; downloads if needed."""
    pcfg = pretrained_cfg(config, tag)
    if not pcfg:
        tags = pretrained_tags(config)
        raise PixdexError(
            f"unknown pretrained tag {tag!r} for {config.name}; "
            f"known tags: {', '.join(tags) if tags else 'none'}"
        )
    config = apply_pretrained_cfg(config, pcfg)
    loc = hf_location(pcfg)
    if loc is None:
        raise PixdexError(
            f"{config.name}:{tag} has no Hugging Face Hub location; "
            "download its weights yourself and pass them with --checkpoint"
        )
    repo_id, names = loc
    what = f"{repo_id}/{names[-1]}" if len(names) == 1 else f"{repo_id}/{names[0]} (or {names[-1]})"
    hit = cached_file(repo_id, names)
    if hit is not None:
        return config, hit
    if _offline():
        raise _missing(config, tag, what, "not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError
    except ModuleNotFoundError:
        raise _missing(config, tag, what, "huggingface_hub is not installed") from None
    try:
        from huggingface_hub.errors import HTTPError as NetworkError  # httpx's base error
    except ImportError:
        NetworkError = OSError
    unreachable = "not in the Hugging Face cache and the Hub is unreachable"
    # One metadata request per candidate, without retries: picks the file the repo has, and fails fast
    # when offline (hf_hub_download alone retries a dead network with back-off for ~20 s).
    chosen = None
    for name in names:
        try:
            get_hf_file_metadata(hf_hub_url(repo_id, name))
        except EntryNotFoundError:
            continue
        except HfHubHTTPError as e:
            raise _missing(config, tag, what, f"the Hub answered {_first_line(e)}") from e
        except (NetworkError, OSError) as e:
            raise _missing(config, tag, what, f"{unreachable} ({_first_line(e)})") from e
        chosen = name
        break
    if chosen is None:
        raise _missing(config, tag, what, f"the Hub repo {repo_id} has none of {', '.join(names)}")
    try:
        path = hf_hub_download(repo_id=repo_id, filename=chosen)
    except HfHubHTTPError as e:
        raise _missing(config, tag, what, f"download failed ({_first_line(e)})") from e
    except (NetworkError, OSError) as e:
        raise _missing(config, tag, what, f"download failed ({_first_line(e)})") from e
    log.info("weights of %s:%s: %s", config.name, tag, path)
    return config, Path(path)


def _first_line(e) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__

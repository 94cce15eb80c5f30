"""``resolve_spec(spec, checkpoint)``: which config and which weights file a model spec means.

A spec is a registry name (``ViT-B-32``), a name with a pretrained tag (``ViT-B-32:openai``), or a model
directory (``config.json`` + ``model.safetensors``, as ``pixdex train`` writes it, or a transformers SigLIP
directory). Weights come from, in this order: ``checkpoint`` (a file), a model directory's
``model.safetensors``, the bundled ``pixdex-demo`` weights, or the pretrained tag (``name:tag``, or the
registry's default tag for the name) through the Hugging Face cache. No weights (random initialisation)
only for the tiny test configs (``tiny-vit``, ``tiny-rn``) or when asked for explicitly with
``checkpoint="random"`` / ``random_init=True``.

No torch import: a spec is resolved (and a bad one rejected) before any model is loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from pixdex.encoders.config import ModelConfig
from pixdex.errors import PixdexError

RANDOM = "random"


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

"""What a training run writes: the model (``model.safetensors`` + ``config.json``), its metrics, and the
resume state (``resume.pt``: model, loss, optimizer, scheduler, grad scaler, RNG, step; read back with
``torch.load(weights_only=True)``). Every file is written with :func:`pixdex.fsutil.atomic_write`, so a
run killed at any moment leaves the previous complete version behind.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from pixdex.errors import PixdexError
from pixdex.fsutil import atomic_write

log = logging.getLogger(__name__)

RESUME_FILE = "resume.pt"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
STATE_VERSION = 1


def write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=1) + "\n")


def write_model(out: Path, model, config, dtype=None) -> Path:
    """``model.safetensors`` (the model's own state-dict keys) and ``config.json`` into ``out``.

    ``dtype`` (e.g. ``torch.float16``) stores floating tensors in that type; loading casts back.
    """
    from safetensors.torch import save_file

    sd = {}
    for k, v in model.state_dict().items():
        t = v.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        sd[k] = t.contiguous().clone()
    path = out / MODEL_FILE
    meta = {"format": "pt", "producer": "pixdex train", "model": config.name}
    atomic_write(path, lambda tmp: save_file(sd, str(tmp), metadata=meta))
    write_json(out / CONFIG_FILE, config.to_dict())
    return path


def save_resume(out: Path, state: dict) -> None:
    import torch

    atomic_write(out / RESUME_FILE, lambda tmp: torch.save({"version": STATE_VERSION, **state}, str(tmp)))


def load_resume(out: Path) -> Optional[dict]:
    """The saved resume state, or None when there is none."""
    import pickle

    import torch

    path = out / RESUME_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        raise PixdexError(
            f"cannot read the resume state {path} ({str(e).splitlines()[0] if str(e) else e}); "
            "delete it to start over"
        ) from e
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise PixdexError(
            f"{path} is not a pixdex resume state of version {STATE_VERSION}; delete it to start over"
        )
    return state


def check_out_dir(out: Path) -> None:
    """Refuse to write a model over files that no resumable pixdex run put there."""
    if out.exists() and not out.is_dir():
        raise PixdexError(f"--out {out} exists and is not a folder")
    if not out.exists():
        return
    ours = (out / RESUME_FILE).is_file()
    if not ours and ((out / MODEL_FILE).exists() or (out / CONFIG_FILE).exists()):
        raise PixdexError(
            f"--out {out} already holds a model that this run did not write; "
            "choose another folder (nothing was changed)"
        )

"""Checkpoint reading and strict loading.

Formats, detected from the file (not only its name):

- safetensors (preferred; memory-mapped, only the tensors a model keeps);
- torch zip / legacy state dicts (``.bin``, ``.pt``, ``.pth``) via ``torch.load(weights_only=True)``, with
  nested ``state_dict`` / ``model`` entries and ``module.`` prefixes unwrapped
  (:mod:`pixdex.encoders.state_dict_layout`);
- OpenAI's original ``.pt`` TorchScript archives. These are not plain state dicts: their ``data.pkl``
  pickles ``__torch__.*`` module objects whose attributes are the tensors. ``torch.jit.load`` would
  compile and run the archive's TorchScript code, and ``torch.load(weights_only=True)`` refuses the
  ``__torch__`` globals, so a small restricted unpickler reads them instead: it resolves only the tensor
  rebuild function, storage types and ``OrderedDict``; every ``__torch__.*`` class becomes an inert
  attribute bag, storages come straight from the archive's ``data/`` entries, and nothing else can be
  constructed or called.

Torch files (state dicts and TorchScript archives alike) are converted once to a safetensors copy in the
user cache dir (:mod:`pixdex.encoders.ptcache`), which later loads memory-map.

Key mapping: wrapper prefixes go; open_clip's extra ``input_resolution`` / ``context_length`` /
``vocab_size`` keys are dropped; foreign SigLIP layouts (Hugging Face ``vision_model.`` / ``text_model.``
or open_clip's timm ``visual.trunk.``, as :func:`pixdex.encoders.state_dict_layout.detect_layout` tells)
go through ``pixdex.encoders.siglip_keys.convert_state_dict``.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from pixdex.encoders.state_dict_layout import (
    FOREIGN_LAYOUTS,
    detect_layout,
    strip_wrappers,
    unwrap_nested,
    wrapper_prefix,
)
from pixdex.errors import PixdexError

if TYPE_CHECKING:  # annotations only; torch is imported where tensors are made
    import torch

log = logging.getLogger(__name__)

_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
_LIST_LIMIT = 8


# ----------------------------------------------------------------------------- reading files


def _is_safetensors(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise PixdexError(f"cannot read checkpoint {path}: {e.strerror or e}") from e
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n < 100_000_000 and head[8:9] == b"{"


def _read_safetensors(path: Path, keep: Optional[Callable[[str], bool]]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys() if keep is None or keep(k)}
    except (SafetensorError, OSError, ValueError) as e:
        raise PixdexError(f"cannot read checkpoint {path}: {e}") from e


def _torchscript_prefix(zf: zipfile.ZipFile) -> Optional[str]:
    """The archive folder of a TorchScript zip (it has ``code/`` and ``constants.pkl``), else None."""
    names = zf.namelist()
    for n in names:
        if n.endswith("/data.pkl"):
            prefix = n[: -len("data.pkl")]
            if any(m.startswith(prefix + "code/") for m in names) or prefix + "constants.pkl" in names:
                return prefix
    return None


class _ScriptObject:
    """An inert stand-in for a pickled ``__torch__.*`` module: it only keeps its attributes."""

    def __init__(self, *args, **kwargs):
        self.state = {}

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {}


class _TorchScriptUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str, path: Path):
        import io

        super().__init__(io.BytesIO(data))
        self.zf, self.prefix, self.path = zf, prefix, path
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):
        import collections

        import torch

        if module.startswith("__torch__"):
            return type(name, (_ScriptObject,), {})
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, requires_grad, hooks: data
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name.endswith("Storage"):
            dtype = (
                getattr(torch, name[: -len("Storage")].lower(), None)
                if name != "UntypedStorage"
                else torch.uint8
            )
            alias = {
                "FloatStorage": torch.float32,
                "HalfStorage": torch.float16,
                "DoubleStorage": torch.float64,
                "BFloat16Storage": torch.bfloat16,
                "LongStorage": torch.int64,
                "IntStorage": torch.int32,
                "ShortStorage": torch.int16,
                "CharStorage": torch.int8,
                "ByteStorage": torch.uint8,
                "BoolStorage": torch.bool,
            }
            dtype = alias.get(name, dtype)
            if isinstance(dtype, torch.dtype):
                return dtype
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a TorchScript archive")

    def persistent_load(self, pid):
        import torch

        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        dtype, key = pid[1], str(pid[2])
        if key not in self.storages:
            raw = bytearray(self.zf.read(f"{self.prefix}data/{key}"))
            self.storages[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return self.storages[key]


def _rebuild_tensor(storage, offset, size, stride, *args):
    import torch

    if not size:
        return storage[offset].clone().reshape(())
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


def _flatten_script(obj, prefix: str, out: dict) -> None:
    import torch

    for name, value in obj.state.items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            _flatten_script(value, f"{prefix}{name}.", out)


def _read_torchscript(path: Path, zf: zipfile.ZipFile, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of a TorchScript archive. Its bytes are hostile until proven otherwise: whatever goes
    wrong (a refused global, an allowed one called with wrong arguments or not callable at all, a cycle,
    a broken zip member) is the one-line refusal, never a traceback."""
    try:
        root = _TorchScriptUnpickler(zf.read(prefix + "data.pkl"), zf, prefix, path).load()
        if not isinstance(root, _ScriptObject):
            raise PixdexError(f"cannot read TorchScript checkpoint {path}: no module at its root")
        out: dict[str, torch.Tensor] = {}
        _flatten_script(root, "", out)
        return out
    except PixdexError:
        raise
    except Exception as e:  # noqa: BLE001 - a crafted pickle can raise any type (TypeError, RecursionError...)
        raise PixdexError(f"cannot read TorchScript checkpoint {path}: {_first_line(e)}") from e


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:200] if s else type(e).__name__


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    import torch

    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                prefix = _torchscript_prefix(zf)
                if prefix is not None:
                    return _read_torchscript(path, zf, prefix)
        except (zipfile.BadZipFile, OSError) as e:
            raise PixdexError(f"cannot read checkpoint {path}: {_first_line(e)}") from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # noqa: BLE001 - torch.load fails on foreign bytes with many error types
        raise PixdexError(f"cannot read checkpoint {path}: {_first_line(e)}") from e
    return _unwrap(obj, path)


def _unwrap(obj, path) -> dict[str, torch.Tensor]:
    import torch

    obj = unwrap_nested(obj)
    if not isinstance(obj, Mapping):
        raise PixdexError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    out = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not out:
        raise PixdexError(f"checkpoint {path} holds no tensors")
    return out


def read_state_dict(
    path: Union[str, Path], keep: Optional[Callable[[str], bool]] = None
) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, whatever its format (see the module doc)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PixdexError(f"checkpoint not found: {path}")
    st = _as_safetensors(path)
    if st is None:
        return _read_torch(path)
    if st == path:
        return _read_safetensors(path, keep)
    try:
        return _read_safetensors(st, keep)
    except PixdexError as e:  # a damaged cached copy: the source is still there
        log.warning("%s; reading %s itself", e, path)
        return _read_torch(path)


def _as_safetensors(path: Path) -> Optional[Path]:
    """``path`` when it is a safetensors file, else its safetensors copy in the user cache dir (made on
    first use, :mod:`pixdex.encoders.ptcache`), else None (no cache)."""
    if _is_safetensors(path):
        return path
    from pixdex.encoders.ptcache import convert_once

    return convert_once(path, _read_torch)


# ----------------------------------------------------------------------------- key mapping


def map_state_dict(sd: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Checkpoint keys -> pixdex keys: wrapper prefixes stripped, open_clip's extra entries and attention
    mask buffers dropped, foreign SigLIP layouts converted."""
    sd = {
        k: v
        for k, v in strip_wrappers(sd).items()
        if k not in _EXTRA_KEYS and not k.endswith(".attn_mask") and k != "attn_mask"
    }
    if detect_layout(sd) in FOREIGN_LAYOUTS:
        from pixdex.encoders.siglip_keys import convert_state_dict

        sd = convert_state_dict(sd, config)
    return sd


# ----------------------------------------------------------------------------- strict loading


def _short(items: list[str]) -> str:
    if len(items) <= _LIST_LIMIT:
        return ", ".join(items)
    return ", ".join(items[:_LIST_LIMIT]) + f", ... ({len(items) - _LIST_LIMIT} more)"


def load_checkpoint(model, path_or_state_dict, config=None, name: Optional[str] = None) -> None:
    """Load weights into ``model`` strictly; one PixdexError lists every mismatch.

    Keys under ``model.dropped_key_prefixes`` (towers removed with ``keep_towers``) are skipped. Tensors
    take the model's dtypes. A model built on the ``meta`` device receives the tensors themselves.
    """
    dropped = tuple(getattr(model, "dropped_key_prefixes", ()) or ())
    label = name or (str(path_or_state_dict) if not isinstance(path_or_state_dict, Mapping) else "state dict")
    if isinstance(path_or_state_dict, Mapping):
        sd = dict(path_or_state_dict)
    else:
        # a lazy read skips dropped towers' tensors unless the file needs key conversion first
        sd = read_state_dict(path_or_state_dict, keep=_lazy_keep(path_or_state_dict, dropped))
    sd = map_state_dict(sd, config)
    if dropped:
        sd = {k: v for k, v in sd.items() if not k.startswith(dropped)}
    expected = model.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_short(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches (checkpoint vs model): {_short(mismatched)}")
        model_name = getattr(config, "name", None) or type(model).__name__
        raise PixdexError(f"checkpoint {label} does not fit model {model_name}: " + "; ".join(parts))
    assign = any(t.is_meta for t in expected.values())
    cast = {}
    for k, ref in expected.items():
        t = sd[k]
        if t.dtype != ref.dtype:
            t = t.to(ref.dtype)
        cast[k] = t.contiguous() if assign else t
    model.load_state_dict(cast, strict=True, assign=assign)


def _lazy_keep(path, dropped: tuple[str, ...]) -> Optional[Callable[[str], bool]]:
    """A key filter that skips the dropped towers' tensors while reading, or None to read everything.
    Only for safetensors files in pixdex's own key layout (foreign layouts are converted first)."""
    if not dropped:
        return None
    from safetensors import safe_open

    path = Path(path).expanduser()
    try:
        st = _as_safetensors(path)
        if st is None:
            return None
        with safe_open(str(st), framework="pt", device="cpu") as f:
            keys = list(f.keys())
    except (OSError, ValueError, PixdexError):
        return None
    except Exception as e:  # noqa: BLE001 - safetensors' own error type; read_state_dict reports it properly
        log.debug("cannot peek into %s: %s", path, e)
        return None
    if detect_layout(keys) in FOREIGN_LAYOUTS:
        return None
    n = len(wrapper_prefix(keys))
    return lambda k: not k[n:].startswith(dropped)

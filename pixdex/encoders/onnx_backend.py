"""ONNX Runtime as an encoder backend: the encoder's towers exported once per model (cached in the user
cache dir), run by ONNX Runtime on the CPU, in float32 or with ONNX Runtime's dynamic int8 quantiser.

Cache layout: ``<cache dir>/onnx/<model>-<key>/`` holds an :mod:`pixdex.encoders.onnx_export` folder
(``visual.onnx``, ``textual.onnx``, ``export.json``) plus ``visual.int8-weights.onnx``; ``key`` hashes the
encoder identity (model spec and weights checksum) and the ModelConfig, so new weights or a changed
config give a new folder, never a stale export. Files are written atomically: two processes exporting
the same model at once both write the same files.

In float32 (``onnx``) the ONNX towers replace the torch ones. With ``quantize`` (``onnx-int8``) only the
image tower moves: its int8 session goes through :class:`pixdex.encoders.int8.CheckedTower` (the same
first-batch check against float32 as pixdex's own int8 tower, whose checked images keep their float32
embeddings), and the text tower stays torch's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
from pathlib import Path
from typing import Optional

from pixdex.errors import PixdexError
from pixdex.fsutil import atomic_write

log = logging.getLogger(__name__)

INT8_FILE = "visual.int8-weights.onnx"
CACHE_SUBDIR = "onnx"
# Linear layers only: ONNX Runtime's ConvInteger is slower than its float Conv on CPU, and the patch
# embedding (ViT) or the whole trunk (ResNet) would pay for it. Products of two activations (attention's
# q @ k and p @ v) stay float32 too: quantising both sides per batch cost more than it saved (ViT-B-32-256,
# batch 16: 2186 ms with them, 1517 ms without, the same minimum cosine 0.99987).
QUANT_OPS = ("MatMul", "Gemm")


def available() -> bool:
    """Whether ONNX Runtime and the exporter's packages are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx", "onnxscript"))


def require() -> None:
    if not available():
        raise PixdexError(
            'the onnx backend needs onnxruntime, onnx and onnxscript: pip install "pixdex[onnx]"'
        )


def cache_key(encoder) -> str:
    ident = encoder.identity()
    blob = json.dumps(
        {
            "model": ident.get("model"),
            "checkpoint_sha256": ident.get("checkpoint_sha256"),
            "config": encoder.config.to_dict(),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def export_dir(encoder) -> Path:
    from pixdex.paths import default_cache_dir

    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(encoder.config.name)).name)[:60]
    return default_cache_dir() / CACHE_SUBDIR / f"{slug}-{cache_key(encoder)}"


def _cached_towers(folder: Path, identity: dict) -> set[str]:
    from pixdex.encoders.onnx_export import MANIFEST

    try:
        meta = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(meta, dict) or not isinstance(meta.get("identity"), dict) or meta.get("fp16_weights"):
        return set()
    # the same weights (by checksum) of the same model; the file they were read from may have moved
    if any(meta["identity"].get(k) != identity.get(k) for k in ("model", "checkpoint_sha256")):
        return set()
    towers = meta.get("towers") if isinstance(meta.get("towers"), dict) else {}
    return {t for t, d in towers.items() if isinstance(d, dict) and (folder / str(d.get("file"))).is_file()}


def cached_export(encoder, towers) -> Path:
    """The cache folder holding ``towers`` of the encoder, exported now when missing."""
    from pixdex.encoders.onnx_export import export_encoder

    require()
    folder = export_dir(encoder)
    missing = [t for t in towers if t not in _cached_towers(folder, encoder.identity())]
    if missing:
        log.warning(
            "exporting the %s tower(s) of %s to ONNX (once per model): %s",
            ",".join(missing),
            encoder.name,
            folder,
        )
        export_encoder(encoder, folder, towers=missing)
    return folder


def quantized(folder: Path) -> Path:
    """``visual.int8-weights.onnx``: ONNX Runtime's dynamic int8 quantisation of ``visual.onnx``'s
    products with weights (int8 weights per output channel, activations per batch), made once."""
    from pixdex.encoders.onnx_export import FILES

    src = folder / FILES["image"]
    dst = folder / INT8_FILE
    if dst.is_file() and dst.stat().st_mtime_ns >= src.stat().st_mtime_ns:
        return dst
    from onnxruntime.quantization import QuantType, quantize_dynamic

    log.info("quantising %s to int8", src)

    def write(tmp: Path) -> None:
        quantize_dynamic(
            str(src),
            str(tmp),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=list(QUANT_OPS),
            nodes_to_exclude=_activation_products(src),
        )

    atomic_write(dst, write, durable=False)
    return dst


def _activation_products(path: Path) -> list[str]:
    """The MatMul/Gemm nodes of the model at ``path`` with no constant input (weights are initialisers
    or Constant nodes' outputs)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    consts = {i.name for i in graph.initializer}
    consts |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in graph.node if n.op_type in QUANT_OPS and not any(i in consts for i in n.input)]


def session(path: Path, threads: Optional[int] = None):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (default: torch's thread count) that
    do not spin between runs (the decode threads need those cores)."""
    import onnxruntime as ort

    if threads is None:
        import torch

        threads = torch.get_num_threads()
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own error types: one line for the user
        raise PixdexError(f"ONNX Runtime cannot load {path}: {e}") from e


def _modules():
    import torch
    from torch import nn

    class OrtModule(nn.Module):
        """A tower as a torch module whose forward runs an ONNX Runtime session (CPU tensors in and out)."""

        def __init__(self, path: Path, input_name: str, dtype):
            super().__init__()
            self.path, self.sess, self.input_name, self.dtype = path, session(path), input_name, dtype

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = x.detach().to("cpu", self.dtype).contiguous().numpy()
            return torch.from_numpy(self.sess.run(None, {self.input_name: a})[0])

    return OrtModule


def use_onnx(encoder, quantize: bool = False) -> None:
    """Run ``encoder``'s towers on ONNX Runtime (image tower in int8 when ``quantize``)."""
    import torch

    from pixdex.encoders.int8 import MIN_COSINE, CheckedTower, is_quantized, remembered_check
    from pixdex.encoders.onnx_export import FILES, INPUTS

    if str(encoder.device) != "cpu":
        raise PixdexError(f"the onnx backend runs on the CPU, not {encoder.device}")
    model = encoder.model
    # int8 is for the image tower (indexing); the text tower then stays torch's, whose CLIP text tower
    # stops at the last EOT token of the batch, where the export runs the whole context
    towers = [t for t in encoder.towers if t == "image" or not quantize]
    towers = [t for t in towers if t != "image" or not is_quantized(model.visual)]
    folder = cached_export(encoder, towers)
    ort_module = _modules()
    key, known = remembered_check(encoder, "onnx-int8") if quantize else (None, None)
    if known is not None and known < MIN_COSINE:
        raise PixdexError(f"the onnx-int8 image tower of {encoder.name} failed its check before")
    if "image" in towers and quantize:
        tower = CheckedTower(model.visual, ort_module(quantized(folder), INPUTS["image"], torch.float32), key)
        tower.label = "onnx-int8"
        if known is not None:  # checked on an earlier run: the float32 probe is not paid again
            tower.checked, tower.min_cosine = True, known
        model.visual = tower
    elif "image" in towers:  # float32: the export's parity is tested; the torch tower is not needed
        model.visual = ort_module(folder / FILES["image"], INPUTS["image"], torch.float32)
    if "text" in towers:
        text = ort_module(folder / FILES["text"], INPUTS["text"], torch.int64)
        object.__setattr__(model, "text_features", text)  # TwoTowerModel.encode_text calls it
    log.info("%s: ONNX Runtime backend (%s) from %s", encoder.name, "int8" if quantize else "float32", folder)

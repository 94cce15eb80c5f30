"""ONNX export of an encoder's towers: ``visual.onnx``, ``textual.onnx`` and ``export.json``.

Layout of an export folder (what ``pixdex export-model`` writes and the ONNX backend caches)::

    visual.onnx     input  "image": float32 (batch, 3, S, S), preprocessed (resized, cropped, normalised)
                    output "image_embedding": float32 (batch, D), L2-normalised
    textual.onnx    input  "text": int64 (batch, context_length), token ids as the tokenizer pads them
                    output "text_embedding": float32 (batch, D), L2-normalised
    export.json     preprocessing, tokenizer, context length, embedding dim, the encoder identity and
                    the full ModelConfig (see :func:`manifest`)
    bpe_simple_vocab_16e6.txt.gz or spiece.model   the tokenizer's file

The batch dimension is dynamic. The towers are the model's own modules traced by ``torch.onnx.export``
(the dynamo exporter); the CLIP text tower runs on the whole context (``traceable_text_features``), which
gives the same features as pixdex's cut at the last EOT token because its mask is causal. ``fp16``
stores the weights in float16; inputs and outputs stay float32.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

from pixdex.errors import PixdexError
from pixdex.fsutil import atomic_write

log = logging.getLogger(__name__)

FORMAT = "pixdex-onnx/1"
MANIFEST = "export.json"
FILES = {"image": "visual.onnx", "text": "textual.onnx"}
INPUTS = {"image": "image", "text": "text"}
# not plain "embedding": the dynamo exporter names the text tower's aten.embedding node so, and a graph
# output of the same name makes an invalid model
OUTPUTS = {"image": "image_embedding", "text": "text_embedding"}
MIN_OPSET = 18  # the dynamo exporter's oldest
EXPORT_BATCH = 2  # the example batch traced (not 1: torch.export would specialise a batch of 1)


def _wrappers():
    """The export modules (defined lazily: torch is imported only when exporting)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class ImageTower(nn.Module):
        def __init__(self, model, fp16: bool):
            super().__init__()
            self.visual, self.fp16 = model.visual, fp16

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = image.half() if self.fp16 else image
            return F.normalize(self.visual(x).float(), dim=-1)

    class TextTower(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, text: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.model.traceable_text_features(text).float(), dim=-1)

    return ImageTower, TextTower


def tower_module(model, tower: str, fp16: bool = False):
    """The ``nn.Module`` exported for ``tower``: the model's tower with L2 normalisation."""
    image_cls, text_cls = _wrappers()
    return image_cls(model, fp16) if tower == "image" else text_cls(model)


def example_input(config, tower: str, batch: int = EXPORT_BATCH):
    import torch

    if tower == "image":
        s = config.image_size
        return torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(0))
    ids = torch.zeros(batch, config.text.context_length, dtype=torch.long)
    ids[:, 0], ids[:, 1] = 1, 2  # any ids in the vocabulary
    return ids


def export_tower(model, config, tower: str, path: Path, opset: Optional[int] = None, fp16=False) -> None:
    """Trace ``model``'s ``tower`` (``image`` / ``text``) to the ONNX file ``path`` (written atomically)."""
    import torch

    module = tower_module(model, tower, fp16).eval()
    name = INPUTS[tower]
    kwargs = {"opset_version": opset} if opset else {}
    quiet = logging.getLogger("onnxscript")  # its optimiser logs every op it does not fold
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing notes
        try:
            program = torch.onnx.export(
                module,
                (example_input(config, tower),),
                input_names=[name],
                output_names=[OUTPUTS[tower]],
                dynamic_shapes={name: {0: torch.export.Dim("batch", min=1)}},
                dynamo=True,
                verbose=False,
                **kwargs,
            )
        except Exception as e:  # the exporter raises many kinds; one line for the user
            raise PixdexError(f"cannot export the {tower} tower of {config.name} to ONNX: {e}") from e
        finally:
            quiet.setLevel(level)
    atomic_write(Path(path), lambda tmp: program.save(str(tmp)), durable=False)


def tokenizer_file(encoder) -> Optional[Path]:
    """The file the encoder's tokenizer reads (CLIP BPE merges or the SentencePiece model)."""
    if encoder.config.tokenizer.kind == "sentencepiece":
        try:
            f = getattr(encoder.tokenizer, "model_file", None)
        except PixdexError as e:  # not cached (and offline): the manifest names hf_repo instead
            log.warning("the export has no tokenizer file: %s", e)
            return None
        return Path(f) if f else None
    from pixdex.encoders.tokenizer import _bpe_path

    return _bpe_path()


def manifest(encoder, towers: Iterable[str], opset: int, fp16: bool, tok_file: Optional[Path]) -> dict:
    """``export.json``: everything a deployment needs besides the ONNX files."""
    config = encoder.config
    pre, tok = config.preprocess, config.tokenizer
    towers = tuple(towers)
    return {
        "format": FORMAT,
        "model": encoder.name,
        "family": config.family,
        "identity": encoder.identity(),
        "embed_dim": config.embed_dim,
        "normalized": True,
        "towers": {
            t: {
                "file": FILES[t],
                "input": INPUTS[t],
                "input_shape": ["batch", 3, pre.image_size, pre.image_size]
                if t == "image"
                else ["batch", config.text.context_length],
                "input_dtype": "float32" if t == "image" else "int64",
                "output": OUTPUTS[t],
                "output_shape": ["batch", config.embed_dim],
            }
            for t in towers
        },
        "preprocess": {
            "size": pre.image_size,
            "mean": list(pre.mean),
            "std": list(pre.std),
            "resize_mode": pre.resize_mode,
            "interpolation": pre.interpolation,
            "input_range": "RGB scaled to [0, 1], then (x - mean) / std, channels first",
        },
        "tokenizer": {
            "kind": tok.kind,
            "file": tok_file.name if tok_file else None,
            "hf_repo": tok.hf_repo,
            "context_length": tok.context_length,
            "lowercase": tok.lowercase,
            "clean": tok.clean,
            "pad_id": config.text.pad_id,
        },
        "context_length": config.text.context_length,
        "logit_scale": encoder.logit_scale,
        "logit_bias": encoder.logit_bias,
        "opset": opset,
        "fp16_weights": fp16,
        "config": config.to_dict(),
    }


def _opset_of(path: Path) -> int:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=0)


def check_options(towers: Iterable[str], opset: Optional[int] = None) -> tuple[str, ...]:
    """The towers to export, in order and once each; a PixdexError for unknown towers or an old opset."""
    towers = tuple(dict.fromkeys(t.strip() for t in towers if t.strip()))
    bad = [t for t in towers if t not in FILES]
    if not towers or bad:
        raise PixdexError(f"towers are image and/or text, got {','.join(towers) or 'none'}")
    if opset is not None and opset < MIN_OPSET:
        raise PixdexError(f"opset {opset}: the exporter needs opset {MIN_OPSET} or newer")
    return towers


def export_encoder(
    encoder,
    out_dir: Path,
    towers: Iterable[str] = ("image", "text"),
    opset: Optional[int] = None,
    fp16: bool = False,
) -> dict:
    """Write the encoder's ``towers`` and ``export.json`` into ``out_dir``; returns the manifest."""
    import torch

    towers = check_options(towers, opset)
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    model = encoder.model
    if fp16:
        import copy

        model = copy.deepcopy(model).half()
    model = model.to("cpu").eval()
    written = []
    with torch.no_grad():
        for t in towers:
            path = out_dir / FILES[t]
            log.info("exporting the %s tower of %s to %s", t, encoder.name, path)
            export_tower(model, encoder.config, t, path, opset=opset, fp16=fp16)
            written.append(path)
    tok_file = tokenizer_file(encoder) if "text" in towers else None
    if tok_file is not None:
        atomic_write(out_dir / tok_file.name, lambda tmp: shutil.copyfile(tok_file, tmp), durable=False)
    meta = manifest(encoder, towers, _opset_of(written[0]), fp16, tok_file)
    _keep_earlier_towers(meta, out_dir)
    atomic_write(out_dir / MANIFEST, json.dumps(meta, indent=1, default=str))
    return meta


def _keep_earlier_towers(meta: dict, out_dir: Path) -> None:
    """A tower exported earlier into the same folder from the same weights (``--towers image`` then
    ``--towers text``) stays listed in the new manifest."""
    try:
        old = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(old, dict) or not isinstance(old.get("towers"), dict):
        return
    if old.get("identity") != meta["identity"] or old.get("fp16_weights") != meta["fp16_weights"]:
        return
    for t, d in old["towers"].items():
        if t not in meta["towers"] and t in FILES and isinstance(d, dict) and (out_dir / FILES[t]).is_file():
            meta["towers"][t] = d
            if t == "text" and old.get("tokenizer", {}).get("file"):
                meta["tokenizer"] = old["tokenizer"]
    meta["towers"] = {t: meta["towers"][t] for t in FILES if t in meta["towers"]}
